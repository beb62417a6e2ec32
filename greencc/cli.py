"""The ``greencc`` command line: compile, inspect, passes, targets, bench, report, repro.

User errors print one line (``greencc: error: ...``) and exit with the status documented
in ``greencc --help``; no traceback unless ``GREENCC_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import os
import re
import sys
import textwrap
import unicodedata
import warnings
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from inspect import getdoc
from typing import Any, TextIO

from greencc.errors import EXIT_CODES, GreenccError, SystemResourceError, UsageError

EPILOG = """\
examples:
  greencc compile model.onnx -t ort-cpu -O1 -o out/          # artifact + report.json in out/
  greencc compile model.onnx --pipeline "cleanup,fold-constants{max_size=1024}" -o out/
  greencc compile model.onnx -o out/ --dim batch=1 --dim seq=128 --measure
  greencc compile --config recipe.toml -o out/ --seed 1     # a recipe; flags override its fields
  greencc compile model.onnx --plugin my_passes.py --pipeline "cleanup,my-pass" -o out/
  greencc inspect model.onnx -t x86-avx512 --dim seq=128     # ops, params, MACs, energy
  greencc passes                                             # the pass catalogue
  greencc targets                                            # what runs here, and why not
  greencc bench out/ --repeats 100                           # latency of a compiled artifact
  greencc compile hf-llama/ -O2 -o llama-out/                # a Hugging Face directory (offline)
  greencc generate llama-out/ --prompt "Once upon" --max-new-tokens 32
  greencc bench llama-out/ --generate --batch 4              # prefill ms, decode tokens/s, peak RSS
  greencc report out/report.json                             # the ledger again
  greencc report out/ --html                                 # out/report.html: ledger, waterfall, plots
  greencc cost calibrate -t ort-cpu                          # fit ort-cpu's profile to this machine
  greencc cost validate -t ort-cpu                           # predicted vs measured, held-out models
  greencc repro greencc-repro-.../                           # replay a failing pipeline
  greencc search model.onnx -t ort-cpu --objective energy --budget cos=0.99 --time 20m -o search/
  greencc search --resume search/ --report                   # the stored front's report.html again
  greencc serve out/ --port 8000                             # HTTP inference, J/request, /metrics
  greencc serve fp32=a/ green=b/ --policy carbon --carbon-signal file:grid.txt --fidelity-floor 0.99
  greencc advise out/ --slo-ms 20 --html advice.html         # energy-optimal threads and batch

exit status:
""" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items()) + """
  (a missing or broken --config recipe or --plugin file is a usage error: 2)"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors use exit status 2
        raise UsageError(f"{message}", hint=f"see `{self.prog} --help`")


def _threads_arg(text: str) -> int:
    """``--threads``: an integer in [1, usable cores x 4]."""
    from greencc.config import check_threads

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid thread count {text!r}") from None
    return check_threads(value, "--threads")


def _seed_arg(text: str) -> int:
    """``--seed``: an integer in [0, 2**32 - 1]."""
    from greencc.config import check_seed

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}") from None
    return check_seed(value, "--seed")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``greencc`` command."""
    parser = _Parser(
        prog="greencc",
        description="Energy-aware model compiler: trace, rewrite with passes, lower to a "
        "backend, and see what each pass bought in ms, mJ, bytes and fidelity.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from greencc import __version__

    parser.add_argument("--version", action="version", version=f"greencc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def carbon_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--grid-intensity", metavar="G|CODE",
                       help="grid carbon intensity: gCO2e/kWh, or a location looked up offline in CodeCarbon's "
                       "tables (pip install 'greencc[carbon]'): a country FRA or FR, a US state USA:california "
                       "or USA:CA, a Canadian province CAN:ontario (default 475, the IEA 2019 world average)")
        p.add_argument("--pue", type=float, metavar="P",
                       help="data-centre power usage effectiveness, >= 1 (default 1.0: the machine alone)")

    def dims_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                       help="bind a symbolic input dim for estimates and checks (repeatable), e.g. --dim seq=128")

    def plugin_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE",
                       help="load a plugin first: a .py file or a module that registers passes or targets "
                       "(repeatable); installed packages plug in through the greencc.passes and "
                       "greencc.targets entry points instead")

    c = sub.add_parser(
        "compile", help="optimize a model and lower it to a target",
        description="Optimize MODEL with a pipeline, verify every pass against ONNX Runtime, "
        "lower it to TARGET and write the artifact and report.json to OUTDIR (atomically: a "
        "failed compile leaves nothing behind). With --config RECIPE.toml the recipe describes "
        "the compile; MODEL, -t, -O*/--pipeline, --calib, --budget, --threads, --no-verify, "
        "--measure, --measure-window, --grid-intensity, --pue and --seed given on the command "
        "line replace the recipe's field, --target-option and --dim set single entries over the "
        "recipe's, and --plugin adds to its plugins.",
        epilog="example: greencc compile minilm.onnx -t ort-cpu -O1 -o out/ --dim seq=128",
    )
    c.add_argument("model", nargs="?",
                   help="an ONNX file or a Hugging Face model directory (default: the recipe's model)")
    c.add_argument("--config", metavar="RECIPE.toml",
                   help="a recipe: a TOML file of CompileConfig fields (see README); flags override it")
    c.add_argument("-t", "--target", help="target or tag (default ort-cpu; see `greencc targets`)")
    level = c.add_mutually_exclusive_group()
    for preset in ("O0", "O1", "O2", "O3"):
        level.add_argument(f"-{preset}", dest="pipeline", action="store_const", const=f"-{preset}",
                           help=f"preset pipeline -{preset}")
    level.add_argument("--pipeline", dest="pipeline", metavar="TEXT",
                       help='pipeline text, e.g. "cleanup,fold-constants{max_size=1024}"')
    c.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="artifact directory to write")
    c.add_argument("--calib", metavar="NPZ", help=".npz of arrays named after the model inputs (samples on axis 0), "
                   "and optionally 'labels' (one integer class id per sample) for --budget acc=")
    c.add_argument("--budget", metavar="SPEC",
                   help="fidelity budget for lossy passes: cos=0.99 (min cosine), abs=1e-3 (max abs error), "
                   "acc=0.01 (max accuracy drop; needs 'labels' in --calib), ppl=1.02 and agree=0.95 "
                   "(language models: max perplexity ratio, min greedy agreement)")
    c.add_argument("--threads", type=_threads_arg, help="intra-op threads of the compiled model")
    c.add_argument("--target-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the target, repeatable (e.g. -t tvm-llvm --target-option tune_budget_s=600; "
                   "`greencc targets` lists each target's options)")
    c.add_argument("--no-verify", action="store_true", default=None,
                   help="skip numerical verification after each pass")
    c.add_argument("--measure", action="store_true", default=None,
                   help="measure latency and energy per inference of the compiled model and of the original "
                   "(energy: RAPL or NVML where readable, else a labelled CPU-time estimate)")
    c.add_argument("--measure-window", type=float, metavar="S",
                   help="seconds of each energy window with --measure (default 1.0; shorter reads noisier)")
    carbon_options(c)
    c.add_argument("--print-ir-after", metavar="NAME|all|change", help="print the graph after these passes")
    c.add_argument("--dump-ir", metavar="DIR",
                   help="write the input model and the model after each pass as ONNX files in DIR "
                   "(00-input.onnx, 01-cleanup.onnx, ...), e.g. to open in Netron")
    c.add_argument("--profile", metavar="NAME|FILE.json",
                   help="hardware profile that prices the model: a built-in name (see `greencc targets`) or a "
                   "JSON file in the format of targets/profiles/*.json (docs/cost-model.md)")
    c.add_argument("--explain", metavar="PASS", action="append", default=[],
                   help="list each site PASS declined, with the node and the reason")
    c.add_argument("--repro-dir", metavar="DIR", default=None,
                   help="where a failing pass writes its reproducer (default: OUTDIR's parent)")
    c.add_argument("--report-json", metavar="PATH", help="also write the report JSON here")
    c.add_argument("--seed", type=_seed_arg, help="seed of random verification inputs (default 0)")
    c.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    dims_option(c)
    plugin_option(c)

    i = sub.add_parser("inspect", help="ops, parameters, MACs and estimated energy of a model",
                       epilog="example: greencc inspect minilm.onnx -t x86-avx512 --dim seq=128")
    i.add_argument("model", help="an ONNX file or a Hugging Face model directory")
    i.add_argument("-t", "--target", default="ort-cpu", help="target or tag whose profile prices the model")
    i.add_argument("--profile", metavar="NAME|FILE.json",
                   help="hardware profile: a built-in name or a JSON file (overrides the target's)")
    i.add_argument("--top", type=int, default=10, help="show the N costliest nodes")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    dims_option(i)
    plugin_option(i)

    p = sub.add_parser("passes", help="list the registered passes (the pass catalogue); NAME: one pass in full",
                       epilog="example: greencc passes quantize-int8")
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="a pass (or pipeline item, e.g. 'quantize-int8{fallback=sensitivity}'): its docstring "
                   "and each option's type, default and description")
    p.add_argument("--json", action="store_true")
    plugin_option(p)

    t = sub.add_parser("targets", help="list targets and tags with availability and the reason")
    t.add_argument("--json", action="store_true")
    plugin_option(t)

    b = sub.add_parser("bench", help="measure the latency of a compiled artifact directory",
                       epilog="example: greencc bench out/ --repeats 100 --threads 2")
    b.add_argument("artifact", help="a directory written by `greencc compile`")
    b.add_argument("--repeats", type=int, default=50)
    b.add_argument("--warmup", type=int, default=10)
    b.add_argument("--seed", type=_seed_arg, default=0)
    b.add_argument("--threads", type=_threads_arg,
                   help="intra-op threads to run with (default: the threads the artifact was compiled with)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--energy", action="store_true",
                   help="also measure energy per inference (RAPL/NVML where readable, else a labelled estimate)")
    b.add_argument("--generate", action="store_true",
                   help="for a decoder: time generation instead, printing prefill ms at --prompt-tokens, decode "
                   "tokens/s at --batch and peak memory (RSS, MB)")
    b.add_argument("--batch", type=int, default=1, help="with --generate: prompts per batch (default 1)")
    b.add_argument("--prompt-tokens", type=int, default=32, help="with --generate: prompt length (default 32)")
    b.add_argument("--new-tokens", type=int, default=32, help="with --generate: tokens decoded per run (default 32)")
    carbon_options(b)
    dims_option(b)
    plugin_option(b)

    g = sub.add_parser("generate", help="generate text (or token ids) with a compiled decoder artifact",
                       description="Generate a continuation of --prompt (encoded with the tokenizer the artifact "
                       "carries) or of the token ids given with --ids, greedily unless --temperature is above 0.",
                       epilog='example: greencc generate out/ --prompt "The cat" --max-new-tokens 32 --temperature 0.8')
    g.add_argument("artifact", help="a directory written by `greencc compile` from a decoder")
    source = g.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the prompt text (needs the artifact's tokenizer)")
    source.add_argument("--ids", metavar="ID,ID,...", help="the prompt as comma-separated token ids")
    g.add_argument("--max-new-tokens", type=int, default=32, help="most tokens to generate (default 32)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default); above 0 samples")
    g.add_argument("--top-k", type=int, help="sample among the K most likely tokens")
    g.add_argument("--top-p", type=float, help="sample within the smallest set of probability >= P")
    g.add_argument("--seed", type=_seed_arg, default=0, help="seed of the sampling (default 0)")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    plugin_option(g)

    r = sub.add_parser("report", help="print a report.json (or an artifact's) as the ledger table; --html: the page")
    r.add_argument("report", help="an artifact directory or a report.json")
    r.add_argument("--html", action="store_true",
                   help="write report.html beside report.json (self-contained: tables and plots) and print its path")
    r.add_argument("--open", action="store_true", help="with --html: also open the page in a web browser")

    rp = sub.add_parser(
        "repro", help="replay a reproducer directory written by a failing compile",
        description="Replay the pipeline of a failing compile as it ran: its input model, the passes "
        "up to the failing one, the target with its options, the calibration data, budget, dims, "
        "seed and the plugin files it used (copies kept in the directory).",
        epilog="exit status 5 when the failure reproduces, 0 when it no longer does")
    rp.add_argument("directory")
    plugin_option(rp)

    se = sub.add_parser(
        "search", help="search pipelines and options for the energy-latency-fidelity Pareto front (Ray)",
        description="Try compiles of MODEL (presets, pass options, threads, targets), screen them with the cost "
        "model, compile and verify them in parallel on Ray (a local Ray, or --ray-address), measure one per node "
        "at a time, and store every finished candidate in OUTDIR/search.db; rerunning over OUTDIR compiles "
        "nothing done before. Writes OUTDIR/report.html (the front, linked to each candidate's ledger).",
        epilog="example: greencc search minilm.onnx -t ort-cpu --objective energy --budget cos=0.99 --time 20m")
    se.add_argument("model", nargs="?", help="an ONNX file or a Hugging Face model directory")
    se.add_argument("-t", "--target", default="ort-cpu", help="target or tag of the default space (default ort-cpu)")
    se.add_argument("--objective", choices=("energy", "latency", "size"), default="energy",
                    help="what the search minimizes beside the fidelity loss (default energy)")
    se.add_argument("--budget", default="cos=0.99", metavar="SPEC", help="fidelity budget (default cos=0.99)")
    se.add_argument("--time", metavar="DURATION", help="stop after this long: 90s, 20m, 1h (default: no limit)")
    se.add_argument("--max-candidates", type=int, metavar="N", help="stop once N candidates finished")
    se.add_argument("--space", metavar="SPACE.toml", help="the search space (default: the model kind's)")
    se.add_argument("--strategy", choices=("tpe", "nsga2", "random", "grid"), default="tpe",
                    help="how candidates are picked (default tpe: multi-objective TPE)")
    se.add_argument("-o", "--output", metavar="OUTDIR", help="search directory (default greencc-search)")
    se.add_argument("--resume", metavar="DIR", help="continue the search stored in DIR (with --report: only report)")
    se.add_argument("--report", action="store_true", help="with --resume: write DIR's report.html and print the front")
    se.add_argument("--workers", type=int, help="parallel compiles (default: the cluster's CPUs)")
    se.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster instead of starting a local Ray")
    se.add_argument("--no-screen", action="store_true", help="compile every candidate (no cost-model screen)")
    se.add_argument("--no-measure", action="store_true", help="rank by estimates only (no latency/energy runs)")
    se.add_argument("--measure-window", type=float, default=1.0, metavar="S", help="energy window per candidate (s)")
    se.add_argument("--calib", metavar="NPZ", help="calibration .npz for every candidate")
    se.add_argument("--seed", type=_seed_arg, default=0)
    se.add_argument("-q", "--quiet", action="store_true", help="print only the front")
    dims_option(se)

    cost = sub.add_parser("cost", help="calibrate the cost model on this machine and validate it",
                          description="Calibrate a target's hardware profile with micro-benchmarks on this "
                          "machine, and validate its predictions on held-out models.")
    cost_sub = cost.add_subparsers(dest="cost_command", metavar="ACTION", parser_class=_Parser)
    cal = cost_sub.add_parser(
        "calibrate", help="fit the target's profile to this machine (under 3 minutes on 2 cores)",
        description="Run micro-benchmarks of every op class (MatMul/Gemm, batched MatMul, Conv, "
        "elementwise, reductions, Softmax, LayerNorm, int8, fused contrib ops) through the target, fit "
        "effective throughput, bandwidth and overheads, and save the calibrated profile under "
        "$GREENCC_CACHE_DIR (default ~/.cache/greencc)/profiles, where `-t TARGET` then uses it.",
        epilog="example: greencc cost calibrate -t ort-cpu --threads 2")
    cal.add_argument("-t", "--target", default="ort-cpu", help="target to calibrate (default ort-cpu)")
    cal.add_argument("--threads", type=_threads_arg, help="intra-op threads (default: the target's, all cores)")
    cal.add_argument("--min-time", type=float, default=0.2, metavar="S",
                     help="seconds each micro-benchmark is timed per round (default 0.2)")
    cal.add_argument("--rounds", type=int, default=2,
                     help="interleaved timing rounds; the least disturbed counts (default 2)")
    cal.add_argument("--json", action="store_true", help="print the fit record as JSON")
    cal.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    val = cost_sub.add_parser(
        "validate", help="predicted vs measured latency on held-out models",
        description="Compile a held-out suite (MiniLM, tiny BERT, the digits CNN fp32/int8, a GPT-2-style "
        "decoder and a ViT across pipelines and batch 1/8; none used for calibration), measure each, "
        "and report Spearman's rank "
        "correlation, median and 90th-percentile absolute error and the worst offenders.",
        epilog="example: HF_HUB_OFFLINE=1 greencc cost validate -t ort-cpu --write-benchmarks BENCHMARKS.md")
    val.add_argument("-t", "--target", default="ort-cpu", help="target to validate (default ort-cpu)")
    val.add_argument("--threads", type=_threads_arg, help="intra-op threads (default: the target's, all cores)")
    val.add_argument("--quick", action="store_true",
                     help="small models, and one -O2 batch-1 variant of the decoder and the ViT (no MiniLM)")
    val.add_argument("--min-time", type=float, default=1.0, metavar="S",
                     help="seconds each model is timed per round (default 1.0)")
    val.add_argument("--rounds", type=int, default=2,
                     help="interleaved timing rounds; the least disturbed counts (default 2)")
    val.add_argument("--write-benchmarks", metavar="PATH",
                     help="replace the 'Cost model validation (issue 5)' section of this Markdown file")
    val.add_argument("--json", metavar="PATH", help="write the full results as JSON here")
    val.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    _serve_parsers(sub, carbon_options, plugin_option)
    return parser


def _serve_parsers(sub: Any, carbon_options: Any, plugin_option: Any) -> None:
    """``greencc serve`` and ``greencc advise``."""
    sv = sub.add_parser(
        "serve", help="serve compiled artifacts over HTTP with per-request energy and carbon",
        description="Serve one or several compiled variants of a model (ARTIFACT is PATH or NAME=PATH): "
        "POST /v1/infer (and /v1/generate for decoders, streaming with \"stream\": true), micro-batched "
        "under --latency-target-ms; each response carries its latency, joules and gCO2e; GET /metrics "
        "(Prometheus), /healthz, /readyz, /v1/models, /v1/switches. A policy picks the variant each "
        "--policy-interval among those with fidelity >= --fidelity-floor (read from each artifact's report). "
        "SIGTERM or Ctrl-C drains: requests in flight complete. Needs the serve extra: "
        "pip install 'greencc[serve]'.",
        epilog="example: greencc serve fp32=out-O0/ green=out-green/ --policy carbon "
        "--carbon-signal table:FRA --carbon-threshold 300")
    sv.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help="an artifact directory, or NAME=DIRECTORY")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sv.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local: uvicorn in this process (default); ray: Ray Serve replicas (scales out)")
    sv.add_argument("--replicas", type=int, default=1, help="with --engine ray: replicas (default 1)")
    sv.add_argument("--threads", type=_threads_arg, help="intra-op threads of every variant")
    sv.add_argument("--policy", choices=("fixed", "carbon", "energy-budget", "power-cap"), default="fixed",
                    help="how the serving variant is picked (default fixed: --variant, else the first)")
    sv.add_argument("--variant", help="with --policy fixed: the variant to serve")
    sv.add_argument("--fidelity-floor", type=float, default=0.0, metavar="COS",
                    help="never serve a variant whose cosine fidelity (from its report) is below this")
    sv.add_argument("--carbon-signal", metavar="SIGNAL",
                    help="grid gCO2e/kWh read each interval: a number, file:PATH, http(s)://URL or "
                    "table:LOCATION (CodeCarbon's yearly table)")
    sv.add_argument("--carbon-threshold", type=float, default=300.0, metavar="G",
                    help="--policy carbon: the greenest variant at or above G gCO2e/kWh (default 300)")
    sv.add_argument("--energy-budget", type=float, metavar="J_PER_HOUR",
                    help="--policy energy-budget: joules per hour before switching to the greenest variant")
    sv.add_argument("--power-cap", type=float, metavar="W", help="--policy power-cap: watts")
    sv.add_argument("--policy-interval", type=float, default=0.25, metavar="S",
                    help="seconds between policy decisions (default 0.25)")
    sv.add_argument("--latency-target-ms", type=float, default=50.0, metavar="MS",
                    help="batches stay small enough to answer within this (default 50)")
    sv.add_argument("--max-wait-ms", type=float, metavar="MS",
                    help="longest a request waits for a batch to fill (default min(5, target/4))")
    sv.add_argument("--max-batch", type=int, default=16, help="most rows per batch (default 16)")
    sv.add_argument("--max-body-bytes", type=int, default=8 << 20, help="largest request body (default 8 MiB)")
    carbon_options(sv)
    plugin_option(sv)

    ad = sub.add_parser(
        "advise", help="energy per inference vs threads and batch size; the best within a latency target",
        description="Measure a compiled artifact's energy per inference and batch latency for each thread "
        "count and batch size, and recommend the least energy whose batch latency is within --slo-ms. "
        "Energy is measured (NVML/RAPL) where readable, else the labelled CPU-time estimate; CPU frequency "
        "and GPU power limit are named as not swept where the machine does not expose them.",
        epilog="example: greencc advise out/ --slo-ms 20 --html advice.html")
    ad.add_argument("artifact", help="a directory written by `greencc compile`")
    ad.add_argument("--slo-ms", type=float, required=True, metavar="MS", help="latency target per batch (ms)")
    ad.add_argument("--threads", metavar="N,N,...", help="thread counts to try (default 1 … cores)")
    ad.add_argument("--batch", metavar="N,N,...", default="1,2,4,8", help="batch sizes to try (default 1,2,4,8)")
    ad.add_argument("--window", type=float, default=0.5, metavar="S", help="energy window per point (default 0.5 s)")
    ad.add_argument("--html", metavar="PATH", help="write the artifact's report page with the curve here")
    ad.add_argument("--json", action="store_true", help="print the curve as JSON")
    plugin_option(ad)


def _parse_dims(items: Sequence[str]) -> dict[str, int]:
    dims: dict[str, int] = {}
    from greencc.config import check_dim

    for item in items:
        name, _, raw = item.partition("=")
        try:
            size = int(raw)
        except ValueError:
            raise UsageError(f"bad --dim '{item}'", hint="write it as NAME=SIZE, e.g. --dim seq=128") from None
        if not name.strip():
            raise UsageError(f"bad --dim '{item}'", hint="a dim needs a name and a positive size")
        dims[name.strip()] = check_dim(name.strip(), size, "--dim")
    return dims


def _parse_target_options(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as target options; a value reads as JSON (numbers, true/false,
    null, quoted strings) and otherwise as the plain string."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"bad --target-option '{item}'", hint="write it as KEY=VALUE, e.g. tune_budget_s=600")
        try:
            options[key.strip()] = json.loads(raw)
        except ValueError:
            options[key.strip()] = raw
    return options


def _status(message: str, quiet: bool = False):
    if quiet or not sys.stderr.isatty():
        return nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


def _printable(line: str) -> str:
    """``line`` with control, format and surrogate characters (terminal escape sequences, a
    newline inside a node name, bytes that were not UTF-8) written as Python escapes."""
    return "".join(
        ch if ch == "\t" or unicodedata.category(ch) not in _UNPRINTABLE else ascii(ch)[1:-1]
        for ch in line
    )


_UNPRINTABLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


class _PrintableStream(io.TextIOBase):
    """A text stream writing through :func:`_printable` to ``stream``: IR dumps print node
    and value names, which a model may fill with terminal escape sequences."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write("\n".join(_printable(line) for line in text.split("\n")))
        return len(text)


def _out(text: str) -> None:
    sys.stdout.write("\n".join(_printable(line) for line in text.rstrip("\n").split("\n")) + "\n")


def cmd_compile(args: argparse.Namespace) -> int:
    """``greencc compile``."""
    from greencc.driver import compile as compile_model
    from greencc.pipeline.instruments import DumpIRInstrument, PrintIRInstrument
    from greencc.pipeline.progress import TerminalProgress

    output = os.path.abspath(args.output)
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"output {args.output} exists and is not a directory")
    if os.path.isdir(output) and os.listdir(output) and not os.path.exists(os.path.join(output, "greencc.json")):
        raise UsageError(
            f"output directory {args.output} is not empty and is not a greencc artifact",
            hint="choose a new or empty directory; greencc replaces only its own artifacts",
        )
    if args.report_json and os.path.isdir(args.report_json):
        raise UsageError(f"--report-json {args.report_json} is a directory",
                         hint="give a file name, e.g. --report-json report.json")
    config = _compile_config(args)
    inputs = [config.model, config.calibration, args.config, *config.plugins]
    if args.report_json and os.path.realpath(args.report_json) in {os.path.realpath(p) for p in inputs if p}:
        raise UsageError(f"--report-json {args.report_json} is an input of this compile",
                         hint="give a new file name, e.g. --report-json report.json")
    instruments: list[Any] = ([PrintIRInstrument(args.print_ir_after, stream=_PrintableStream(sys.stderr))]
                              if args.print_ir_after else [])
    if args.dump_ir:
        instruments.append(DumpIRInstrument(args.dump_ir))
    with TerminalProgress(enabled=not args.quiet and sys.stderr.isatty()) as progress:
        compiled = compile_model(
            config=config,
            instruments=instruments,
            reproducer_dir=args.repro_dir or os.path.dirname(output),
            output_dir=output,
            progress=progress,
        )
    report = compiled.report
    if args.report_json:
        report.to_json(args.report_json)
    if not args.quiet:
        _out(report.to_console())
        for name in args.explain:
            misses = [m for m in report.near_misses if m["pass"] == name]
            _out(f"--explain {name}: {len(misses)} site(s) declined")
            for miss in misses:
                _out(f"  {miss['node']}: {miss['reason']}")
        _out(f"wrote {output} (target {compiled.target}; report.json inside)")
    return 0


def _compile_config(args: argparse.Namespace) -> Any:
    """The compile's :class:`~greencc.config.CompileConfig`: the recipe (or the defaults)
    with the fields given on the command line replaced."""
    import dataclasses

    from greencc.config import CompileConfig

    recipe = CompileConfig.from_toml(args.config) if args.config else CompileConfig()
    changes: dict[str, Any] = {
        field: value for field, value in (
            ("target", args.target), ("pipeline", args.pipeline), ("budget", args.budget),
            ("threads", args.threads), ("seed", args.seed), ("measure", args.measure),
            ("energy_window_s", args.measure_window), ("grid_intensity", args.grid_intensity),
            ("pue", args.pue),
        ) if value is not None
    }
    if args.model is not None:
        changes.update(model=os.path.abspath(args.model), model_sha256=None)
    elif recipe.model is None:
        raise UsageError("no model to compile", hint="give MODEL, or a --config recipe that names one")
    if args.calib is not None:
        changes.update(calibration=os.path.abspath(args.calib), calibration_sha256=None)
    if args.no_verify:
        changes["verify"] = False
    if args.target_option or args.profile:
        changes["target_options"] = {**recipe.target_options, **_parse_target_options(args.target_option)}
    if args.profile:
        changes["target_options"]["profile"] = _profile_entry(args.profile)
    if args.dim:
        changes["dims"] = {**recipe.dims, **_parse_dims(args.dim)}
    if args.plugin:
        changes["plugins"] = (*recipe.plugins, *(_plugin_entry(p) for p in args.plugin))
    return dataclasses.replace(recipe, **changes)


def _profile_entry(profile: str) -> str:
    """A ``--profile`` value as a config records it: a JSON file by absolute path (checked
    now, so a bad file fails before any work), a built-in profile by name."""
    if not profile.endswith(".json"):
        return profile
    from greencc.cost.profile import HardwareProfile

    HardwareProfile.from_json(profile)
    return os.path.abspath(profile)


def _plugin_entry(plugin: str) -> str:
    """A ``--plugin`` value as a config records it: files by absolute path."""
    from greencc.config import is_plugin_file

    return os.path.abspath(plugin) if is_plugin_file(plugin) else plugin


def cmd_inspect(args: argparse.Namespace) -> int:
    """``greencc inspect``."""
    from greencc.driver import inspect
    from greencc.report.unpriced import unpriced_lines

    with _status("loading and estimating"):
        info = inspect(args.model, args.target, profile=args.profile, dims=_parse_dims(args.dim), top=args.top)
    if args.json:
        _out(json.dumps(info, indent=2, default=str))
        return 0
    lines = [
        f"model    {info['source']}",
        f"inputs   {', '.join(info['inputs'])}",
        f"outputs  {', '.join(info['outputs'])}",
        f"nodes    {info['nodes']}   parameters {info['parameters']:,}   weights {info['weight_bytes'] / 1e6:.2f} MB",
        "ops      " + ", ".join(f"{op}×{n}" for op, n in info["ops"].items()),
    ]
    cost = info.get("cost")
    if cost:
        macs = ", ".join(f"{d} {m / 1e9:.4f} G" for d, m in cost["macs_by_dtype"].items()) or "0"
        lines += [
            f"dims     {info['dims']}",
            f"MACs     {macs}",
            f"estimate {cost['latency_ms']:.3f} ms, {cost['energy_mj']:.3f} mJ/inference on "
            f"profile {cost['profile']} ({'calibrated' if cost.get('calibrated') else 'uncalibrated: an estimate, not a measurement'})",
        ]
        if cost.get("unknown_ops"):
            lines.append(f"no cost model for: {', '.join(cost['unknown_ops'])} (counted as 0)")
        lines += unpriced_lines(cost.get("unpriced_nodes") or [], info["nodes"])
        lines.append("costliest nodes (energy):")
        for node in info.get("top_nodes", []):
            where = f"  [{node['module']}]" if node.get("module") else ""
            lines.append(f"  {node['energy_mj']:.4f} mJ  {node['macs'] / 1e6:9.2f} MMAC  {node['op_type']:<20} {node['name']}{where}")
    for part in info.get("partitions", []):
        lines.append(f"target   {part['target']}: {part['nodes']} nodes {part['reason']}".rstrip())
    _out("\n".join(lines))
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    """``greencc passes``."""
    from greencc.pipeline.base import get_pass_class, pass_summary, registered_passes
    from greencc.pipeline.text import PRESETS

    passes = registered_passes()
    if args.name:
        name = args.name.split("{", 1)[0].strip()
        passes = {name: get_pass_class(name)}
    if args.json:
        _out(json.dumps({
            name: {
                "summary": pass_summary(cls), "lossy": cls.lossy,
                "options": {k: {"type": s.describe_type(), "default": s.default,
                                "description": option_description(cls, k)} for k, s in cls.option_specs.items()},
            } for name, cls in passes.items()
        }, indent=2, default=str))
        return 0
    if args.name:
        _out(_describe_pass(name, passes[name]))
        return 0
    for name, cls in passes.items():
        options = ", ".join(f"{k}={s.default}" for k, s in cls.option_specs.items())
        kind = "lossy" if cls.lossy else "exact"
        _out(f"{name:<18} {kind:<6} {pass_summary(cls)}" + (f"  {{{options}}}" if options else ""))
    _out("\npresets: " + "; ".join(f"{k} = {v or '(no passes)'}" for k, v in PRESETS.items()))
    return 0


def option_description(cls: type, option: str) -> str:
    """What a pass's docstring says about ``option``: the sentences that name it as
    ``option`` or ``option=...`` (a pass documents its options in its docstring)."""
    paragraphs = (getdoc(cls) or "").split("\n\n")
    prose = " ".join(" ".join(p.split()) for p in paragraphs if "->" not in p)
    sentences = re.split(r"(?<=[.;])\s+(?=[A-Z`(])", prose)
    mentions = [s for s in sentences if f"``{option}``" in s or f"``{option}=" in s]
    if not mentions:  # named only in the rewrite listing, e.g. "Rewrites (mode=dynamic, ...):"
        lines = (getdoc(cls) or "").splitlines()
        mentions = [line.strip() for line in lines if re.search(rf"\b{re.escape(option)}=|``{re.escape(option)}``", line)]
    return " ".join(mentions[:2]) or "(the pass's docstring does not describe it)"


def _describe_pass(name: str, cls: type) -> str:
    """``greencc passes NAME``: the docstring, then each option's type, default and description."""
    kind = "lossy: verified against the fidelity budget" if cls.lossy else "exact: verified within float tolerance"
    lines = [f"{name} ({kind})", "", getdoc(cls) or "(no docstring)", ""]
    if not cls.option_specs:
        lines.append("options: none")
    else:
        lines.append("options (pipeline text: name{option=value,...}):")
        for option, spec in cls.option_specs.items():
            lines.append(f"  {option}: {spec.describe_type()} = {spec.default!r}")
            lines += textwrap.wrap(option_description(cls, option), 96, initial_indent="      ",
                                   subsequent_indent="      ")
    lines.append("  steps: int = 1  (every pass: repeat up to N times while it changes the model)")
    return "\n".join(lines)


def cmd_targets(args: argparse.Namespace) -> int:
    """``greencc targets``."""
    from greencc.target import registered_targets
    from greencc.target.registry import registered_tags

    rows: list[dict[str, Any]] = []
    for name, cls in registered_targets().items():
        try:
            availability = cls().available()
            ok, reason = availability.ok, availability.reason
        except Exception as exc:  # a broken plugin must not hide the others
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        rows.append({"name": name, "available": ok, "reason": reason,
                     "description": getattr(cls, "description", ""),
                     "options": {k: v for k, v in getattr(cls, "default_options", {}).items()}})
    if args.json:
        _out(json.dumps({"targets": rows, "tags": {k: list(v) for k, v in registered_tags().items()}}, indent=2))
        return 0
    for row in rows:
        state = "available" if row["available"] else f"unavailable: {row['reason']}"
        _out(f"{row['name']:<16} {state:<28} {row['description']}")
        if row["options"]:
            _out(f"{'':<16} options: " + ", ".join(f"{k}={v!r}" for k, v in row["options"].items()))
    _out("\ntags (target + hardware profile):")
    for tag, (target, profile) in registered_tags().items():
        _out(f"  {tag:<20} -> {target} with profile {profile}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``greencc bench``."""
    from greencc.measure.carbon import CarbonFactors, carbon_per_inference
    from greencc.measure.latency import describe_shapes
    from greencc.target import CompiledModel
    from greencc.verify.feeds import random_feeds

    if (args.grid_intensity is not None or args.pue is not None) and not args.energy:
        raise UsageError("--grid-intensity and --pue price an energy figure, and none is measured",
                         hint="add --energy")
    factors = CarbonFactors.of(args.grid_intensity, args.pue)
    compiled = CompiledModel.load(args.artifact)
    if args.threads is not None:
        compiled = compiled.with_options(threads=args.threads)
    if args.generate:
        if args.energy:
            raise UsageError("--energy measures one inference; --generate times generation",
                             hint="run them separately")
        return _bench_generation(compiled, args)
    feeds = random_feeds(compiled.model, seed=args.seed, dims={**compiled.dims, **_parse_dims(args.dim)})
    stats = compiled.benchmark(feeds, warmup=args.warmup, repeats=args.repeats)
    energy = carbon = None
    if args.energy:
        from greencc.measure.energy import best_meter, measure_energy

        arrays = compiled.check_feeds(feeds)
        device = "cpu" if "cpu" in compiled.target else "any"
        energy = measure_energy(lambda: compiled.run(arrays), meter=best_meter(device).meter)
        carbon = carbon_per_inference(energy.j_per_inference, energy.method, factors)
    if args.json:
        extra = {"energy": energy.to_dict(), "carbon": carbon.to_dict()} if energy and carbon else {}
        _out(json.dumps({**stats.to_dict(), **extra}, indent=2))
    else:
        _out(f"{args.artifact}: median {stats.median_ms:.3f} ms (p10 {stats.p10_ms:.3f}, p90 {stats.p90_ms:.3f}; "
             f"{stats.repeats} runs after {stats.warmup} warm-up, {stats.threads} threads) "
             f"at {describe_shapes(stats.shapes or {})}")
        if energy is not None and carbon is not None:
            _out(f"energy: {energy}")
            _out(f"carbon: {carbon.g_per_1k_inferences:.4g} gCO2e per 1k inferences [{energy.label}]; "
                 f"{factors.describe()}")
    return 0


def _bench_generation(compiled: Any, args: argparse.Namespace) -> int:
    """``greencc bench --generate``."""
    result = compiled.benchmark_generation(
        batch=args.batch, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
        runs=args.repeats, warmup=min(args.warmup, 2),
    )
    if args.json:
        _out(json.dumps({**result.to_dict(), "threads": compiled.options.get("threads")}, indent=2))
        return 0
    _out(f"{args.artifact}: {result.runs} runs after warm-up, {compiled.options.get('threads')} threads")
    _out(f"prefill  {result.prefill_ms:.3f} ms (IQR {result.prefill_ms_spread:.3f}) for a {result.prompt_tokens}-token "
         f"prompt, batch {result.batch}")
    _out(f"decode   {result.decode_tokens_per_s:.1f} tokens/s (IQR {result.decode_tokens_per_s_spread:.1f}) at batch "
         f"{result.batch}, {result.new_tokens} new tokens")
    if result.peak_rss_mb is not None:
        _out(f"memory   peak RSS {result.peak_rss_mb:.1f} MB")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``greencc generate``."""
    from greencc.target import CompiledModel

    compiled = CompiledModel.load(args.artifact)
    tokenizer = None
    if args.prompt is not None:
        tokenizer = compiled.tokenizer()
        ids = tokenizer(args.prompt, add_special_tokens=True)["input_ids"]
        if not ids:
            raise UsageError("the prompt encodes to no tokens", hint="give a longer --prompt")
    else:
        try:
            ids = [int(token) for token in args.ids.split(",") if token.strip()]
        except ValueError:
            raise UsageError(f"--ids {args.ids!r} is not a comma-separated list of integers",
                             hint="e.g. --ids 1,15,27") from None
        if not ids:
            raise UsageError("--ids names no token", hint="e.g. --ids 1,15,27")
    result = compiled.generate(
        [ids], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed,
    )
    new = [int(t) for t in result.new_tokens[0]]
    text = tokenizer.decode(new, skip_special_tokens=True) if tokenizer is not None else None
    if args.json:
        _out(json.dumps({
            "prompt_ids": ids, "new_ids": new, "text": text, "prefill_ms": result.prefill_ms,
            "decode_tokens_per_s": result.decode_tokens_per_s,
        }, indent=2))
        return 0
    _out(args.prompt + text if text is not None else ",".join(str(t) for t in new))
    sys.stderr.write(f"[{len(new)} tokens; prefill {result.prefill_ms:.2f} ms for {len(ids)} prompt tokens, "
                     f"decode {result.decode_tokens_per_s:.1f} tokens/s]\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``greencc report``."""
    from pathlib import Path

    from greencc.report.html import REPORT_HTML_NAME, write_html
    from greencc.report.ledger import Report

    source = Path(args.report)
    artifact = source.is_dir()
    if artifact:
        source = source / "report.json"
    report = Report.from_json(source)
    if not args.html:
        _out(report.to_console())
        return 0
    page = source.with_name(REPORT_HTML_NAME)
    if artifact and page.is_file():  # saved with the artifact (and hashed in its manifest)
        _out(f"{page}")
    else:
        if artifact:  # an older artifact: a file added inside would make it fail to load
            page = source.parent.with_name(f"{source.parent.name}.{REPORT_HTML_NAME}")
        _out(f"wrote {write_html(report, page)}")
    if args.open:
        import webbrowser

        webbrowser.open(page.absolute().as_uri())
    return 0


def cmd_repro(args: argparse.Namespace) -> int:
    """``greencc repro``."""
    from greencc.driver import replay

    model = replay(args.directory)
    _out(f"the pipeline ran without failing ({len(model.graph)} nodes): the bug no longer reproduces")
    return 0


def _progress(quiet: bool):
    """A rich progress bar on stderr (a no-op when quiet or not a terminal) and its callback."""
    if quiet or not sys.stderr.isatty():
        return nullcontext(), None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task("starting", total=None)

    def update(name: str, done: int, total: int) -> None:
        bar.update(task, description=name[:34], completed=done, total=total)

    return bar, update


def cmd_cost(args: argparse.Namespace) -> int:
    """``greencc cost calibrate`` and ``greencc cost validate``."""
    if args.cost_command == "calibrate":
        return _cost_calibrate(args)
    if args.cost_command == "validate":
        return _cost_validate(args)
    raise UsageError("greencc cost needs an action", hint="greencc cost calibrate | greencc cost validate")


def _cost_calibrate(args: argparse.Namespace) -> int:
    from greencc.calibration import calibrate

    if args.min_time is not None and args.min_time <= 0:
        raise UsageError(f"--min-time {args.min_time} must be positive")
    bar, update = _progress(args.quiet)
    with bar:
        calibration = calibrate(args.target, threads=args.threads, min_time_s=args.min_time,
                                rounds=args.rounds, progress=update)
    path = calibration.save()
    if args.json:
        _out(json.dumps({k: v for k, v in calibration.record().items()}, indent=2, default=str))
        return 0
    if args.quiet:
        return 0
    fit = calibration.fit
    kernel = fit["kernel_model"]
    peaks = ", ".join(f"{d} {v / 1e9:.1f} GMAC/s" for d, v in kernel["peak_macs_per_s"].items())
    levels = ", ".join(f"{lv.name} {lv.bandwidth_bytes_per_s / 1e9:.1f} GB/s"
                       for lv in calibration.profile.memory_levels)
    lines = [
        f"calibrated {calibration.target} with {calibration.threads} thread(s) on {calibration.machine['cpu']}: "
        f"{len(fit['benchmarks'])} micro-benchmarks",
        f"  throughput (MatMul): {peaks}",
        f"  bandwidth: {levels}",
        f"  overhead: {kernel['run_overhead_s'] * 1e6:.2f} us per inference, "
        f"{kernel['op_overhead_s'] * 1e6:.2f} us per kernel, {kernel['light_overhead_s'] * 1e6:.2f} us per view",
        f"  fit error: median {fit['median_abs_pct']:.1f}%, p90 {fit['p90_abs_pct']:.1f}%, max {fit['max_abs_pct']:.1f}%; "
        f"spread between the {fit.get('rounds', 1)} timing rounds: median {fit.get('round_spread_pct', 0):.1f}%",
    ]
    worst = sorted(fit["benchmarks"], key=lambda b: abs(b["error_pct"]), reverse=True)[:3]
    lines.append("  worst fits: " + ", ".join(f"{b['name']} ({b['error_pct']:+.0f}%)" for b in worst))
    load = fit.get("background_load", {})
    if load.get("noisy"):
        lines.append(f"  WARNING: other processes used {load['other_cores']:.2f} cores (steal "
                     f"{load['steal_cores']:.2f}) while it ran: timings are unreliable; calibrate again on a quiet machine")
    lines.append(f"wrote {path} (and its .calibration.json); `-t {calibration.target}` uses it from now on "
                 f"with {calibration.threads} thread(s)")
    _out("\n".join(lines))
    return 0


def _cost_validate(args: argparse.Namespace) -> int:
    from greencc.calibration.validate import default_suite, validate, write_section

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bar, update = _progress(args.quiet)
    with bar:
        report = validate(args.target, threads=args.threads, cases=default_suite(quick=args.quick),
                          min_time_s=args.min_time, rounds=args.rounds, progress=update)
    threads = f" --threads {args.threads}" if args.threads else ""
    quick = " --quick" if args.quick else ""
    report.commands = [f"greencc cost calibrate -t {report.target}{threads}",
                       f"HF_HUB_OFFLINE=1 greencc cost validate -t {report.target}{threads}{quick}"
                       + (f" --write-benchmarks {args.write_benchmarks}" if args.write_benchmarks else "")]
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    if args.write_benchmarks:
        write_section(args.write_benchmarks, report.to_markdown())
    saved = report.save()  # the compile report's energy headline quotes these errors
    if not args.quiet:
        _out(report.to_markdown())
        _out(f"wrote the scores to {', '.join(map(str, saved))}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``greencc serve``."""
    try:
        from greencc.serve.engines import run_local, run_ray
    except ImportError as exc:
        raise UsageError(f"serving needs the serve extra ({exc.name} is missing)",
                         hint="pip install 'greencc[serve]'") from None
    from greencc.serve.payload import Limits
    from greencc.serve.service import Service, ServiceOptions
    from greencc.serve.variants import load_variants

    options = ServiceOptions(
        latency_target_ms=args.latency_target_ms, max_wait_ms=args.max_wait_ms, max_batch=args.max_batch,
        policy=args.policy, variant=args.variant, fidelity_floor=args.fidelity_floor,
        carbon_signal=args.carbon_signal, carbon_threshold=args.carbon_threshold,
        energy_budget_j_per_hour=args.energy_budget, power_cap_w=args.power_cap, interval_s=args.policy_interval,
        limits=Limits(max_body_bytes=args.max_body_bytes), grid_intensity=args.grid_intensity, pue=args.pue,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("greencc serve: %(message)s"))
    serve_log = logging.getLogger("greencc.serve")
    serve_log.addHandler(handler)
    serve_log.setLevel(logging.INFO)
    if args.engine == "ray":
        run_ray(args.artifacts, options, threads=args.threads, host=args.host, port=args.port,
                replicas=args.replicas)
        return 0
    service = Service(load_variants(args.artifacts, args.threads), options)
    described = service.describe()
    serve_log.info("variants: %s; policy %s; energy %s", ", ".join(
        f"{v['name']} (fidelity {v['fidelity']:.6f}, {v['energy_mj']} mJ)" for v in described["variants"]),
        described["policy"], described["energy"])
    for excluded in described["excluded"]:
        serve_log.info("below the fidelity floor, never served: %s", excluded)
    serve_log.info("listening on http://%s:%d (POST /v1/infer, GET /metrics)", args.host, args.port)
    run_local(service, args.host, args.port)
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r} must be comma-separated integers", hint=f"e.g. {flag} 1,2,4") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag} {text!r} must list positive integers", hint=f"e.g. {flag} 1,2,4")
    return values


def cmd_advise(args: argparse.Namespace) -> int:
    """``greencc advise``."""
    from greencc.serve.advise import advise
    from greencc.target import CompiledModel

    compiled = CompiledModel.load(args.artifact)
    threads = _int_list(args.threads, "--threads") if args.threads else None
    advice = advise(compiled, args.slo_ms, threads=threads, batches=tuple(_int_list(args.batch, "--batch")),
                    window_s=args.window)
    _out(json.dumps(advice.to_dict(), indent=2) if args.json else advice.to_text())
    if args.html:
        from greencc.report.html import write_html

        if compiled.report is None:
            raise UsageError(f"{args.artifact} holds no report to add the curve to", hint="compile it again")
        _out(f"wrote {write_html(compiled.report, args.html, advice.to_dict())}")
    return 0


def _duration_s(text: str) -> float:
    """``--time``: seconds from ``90``, ``90s``, ``20m`` or ``1h``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text or "")
    if match is None:
        raise UsageError(f"bad --time {text!r}", hint="write a duration such as 90s, 20m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def cmd_search(args: argparse.Namespace) -> int:
    """``greencc search``: run (or resume) a search, or report a stored one."""
    from greencc.search import load_result, search

    if args.report and not args.resume:
        raise UsageError("--report reads a stored search", hint="give its directory: --resume DIR --report")
    if args.resume and args.report:
        result = load_result(args.resume)
    else:
        directory = args.resume or args.output or "greencc-search"
        model = args.model
        if model is None and args.resume:
            from greencc.search.store import CandidateStore

            with CandidateStore(directory) as store:
                model = store.meta().get("model")
        if model is None:
            raise UsageError("greencc search needs a model", hint="greencc search MODEL.onnx ... (or --resume DIR)")
        say = None if args.quiet else (lambda line: sys.stderr.write(_printable(line) + "\n"))
        result = search(
            model, args.target, objective=args.objective, budget=args.budget,
            time_s=_duration_s(args.time) if args.time else None, max_candidates=args.max_candidates,
            space=args.space, directory=directory, strategy=args.strategy, workers=args.workers,
            ray_address=args.ray_address, dims=_parse_dims(args.dim), calibration=args.calib, seed=args.seed,
            measure=not args.no_measure, energy_window_s=args.measure_window, screen=not args.no_screen,
            progress=say,
        )
    _out(result.table())
    stats = result.stats
    if stats:
        _out(f"{stats['asked']} asked, {stats['screened']} screened out, {stats['duplicates']} already done, "
             f"{stats['compile_tasks']} compiled ({stats['broke_budget']} broke the budget, {stats['failed']} failed), "
             f"{stats['measured']} measured, in {stats['elapsed_s']:.0f} s on {stats['workers']} worker(s)")
    _out(f"report: {result.report}" if result.report else "no candidate was built: no report")
    if stats.get("interrupted"):
        sys.stderr.write("greencc: interrupted: the store is consistent; --resume continues it\n")
        return 130
    return 0


COMMANDS = {
    "search": cmd_search,
    "compile": cmd_compile, "inspect": cmd_inspect, "passes": cmd_passes, "targets": cmd_targets,
    "bench": cmd_bench, "generate": cmd_generate, "report": cmd_report, "repro": cmd_repro, "cost": cmd_cost,
    "serve": cmd_serve, "advise": cmd_advise,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status. Warnings (greencc's log and Python warnings)
    are printed after the command's output or its one error line, never before it."""
    notes: list[str] = []
    with _deferred_warnings(notes):
        status = _run(argv)
    for note in notes:
        sys.stderr.write(f"greencc: warning: {_printable(note)}\n")
    return status


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        if args.command != "compile":  # compile loads its plugins from its config
            from greencc.pipeline.plugins import load_plugins

            load_plugins(getattr(args, "plugin", []))
        return COMMANDS[args.command](args)
    except GreenccError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        sys.stderr.write("greencc: interrupted\n")
        return 130
    except (OSError, MemoryError) as exc:
        if os.environ.get("GREENCC_DEBUG"):
            raise
        return _fail(system_error(exc))
    except Exception as exc:  # a bug in greencc, not the user's fault
        if os.environ.get("GREENCC_DEBUG"):
            raise
        sys.stderr.write(
            f"greencc: internal error: {_printable(f'{type(exc).__name__}: {exc}')}\n"
            "  this is a bug; re-run with GREENCC_DEBUG=1 for the traceback and report it\n"
        )
        return 1


def _fail(exc: GreenccError) -> int:
    text = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    sys.stderr.write(f"greencc: error: {_printable(' '.join(text.splitlines()))}\n")
    if os.environ.get("GREENCC_DEBUG"):
        raise exc
    return exc.exit_code


_ERRNO_HINTS = {
    errno.EACCES: "check the permissions of the path, or choose another",
    errno.EPERM: "check the permissions of the path, or choose another",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.ENOSPC: "the disk is full: free some space or write somewhere else",
    errno.EDQUOT: "the disk quota is exhausted: free some space or write somewhere else",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
}


def system_error(exc: OSError | MemoryError) -> SystemResourceError:
    """An ``OSError`` or ``MemoryError`` as the user error it is (exit status 8)."""
    if isinstance(exc, MemoryError):
        return SystemResourceError("out of memory", hint="a smaller model, smaller --dim sizes or less calibration data")
    where = f": {exc.filename}" if exc.filename else ""
    return SystemResourceError(f"{exc.strerror or exc}{where}",
                               hint=_ERRNO_HINTS.get(exc.errno or 0, "check the path and the file system"))


class _HeldRecords(logging.Handler):
    """Keeps greencc's warnings until the command ends; other libraries' log lines are
    dropped (they are noise on a command line, and would land before the error line)."""

    def __init__(self, notes: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "greencc" or record.name.startswith("greencc."):
            self.notes.append(record.getMessage())


@contextmanager
def _deferred_warnings(notes: list[str]):
    """Collect log warnings and Python warnings in ``notes`` while the command runs."""
    root = logging.getLogger()
    handler = _HeldRecords(notes)
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            yield
    finally:
        root.removeHandler(handler)
        notes.extend(str(w.message) for w in caught if issubclass(w.category, UserWarning))


if __name__ == "__main__":
    sys.exit(main())
