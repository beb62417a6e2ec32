"""Console rendering of a report: the per-pass ledger as a table, then the summary."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from greencc.report.unpriced import unpriced_lines

if TYPE_CHECKING:
    from greencc.report.ledger import PassRow, Report


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _signed(value: float | None, fmt: str) -> str:
    if value is None:
        return ""
    if abs(value) < 1e-12:
        return "0"
    return format(value, "+" + fmt)


def _energy_line(figure: dict) -> str:
    before, after = figure["original_mj"], figure["final_mj"]
    ratio = f" ({figure['ratio']:.2f}×)" if figure.get("ratio") is not None else ""
    carbon = (f"{_num(figure['original_g_per_1k'], '.4g')} -> {_num(figure['final_g_per_1k'], '.4g')} "
              "gCO2e per 1k inferences")
    label = figure["label"]
    if not label.startswith(figure["kind"]):
        label = f"{figure['kind']}: {label}"
    window = ""
    if figure.get("window_s"):
        windows = [w for w in figure["window_s"] if w is not None]
        idle = [p for p in figure.get("idle_power_w", []) if p is not None]
        if windows:
            window = f"; windows {', '.join(f'{w:.1f}' for w in windows)} s"
        if idle:
            window += f", idle {', '.join(f'{p:.2f}' for p in idle)} W"
    return (f"{_num(before, '.3f')} -> {_num(after, '.3f')} mJ{ratio}; {carbon} "
            f"[{label}{window}]")


# Short tags of energy methods for the per-pass column; the full label is printed below.
_METHOD_TAGS = {"estimate:cpu-time×tdp": "est", "rapl": "rapl", "nvml": "nvml"}


def _measured_cells(row: PassRow) -> list[str]:
    """The per-pass measured latency and energy cells: ``"=" `` marks a reused figure."""
    measured = row.measured or {}
    if "error" in measured:
        return ["n/a", "n/a"]
    latency, energy = measured.get("latency"), measured.get("energy")
    if not latency or not energy:
        return ["", ""]
    same = "=" if "same_as" in measured else ""
    tag = _METHOD_TAGS.get(energy.get("method", ""), energy.get("method", "?"))
    return [f"{same}{latency['median_ms']:.3f} ({latency['p10_ms']:.3f}-{latency['p90_ms']:.3f})",
            f"{same}{energy['mj_per_inference']:.3f} {tag}"]


def _measured_footer(report: Report) -> list[str]:
    """Lines explaining the measured columns: the meter's label and the reused-row marker."""
    measured = [row.measured for row in report.rows if row.measured]
    if not measured:
        return []
    labels = list(dict.fromkeys(m["energy"]["label"] for m in measured if m.get("energy")))
    lines = [f"meas. columns: the model after each pass lowered to {report.target or 'the target'} and run; "
             "latency median (p10-p90) ms, energy mJ/inference — " + "; ".join(labels)]
    if any("same_as" in m for m in measured):
        lines.append("  '=' : the pass changed nothing, so the figure above it is reused (not measured again)")
    for row in report.rows:
        if row.measured and "error" in row.measured:
            lines.append(f"  {row.name}: {row.measured['error']}")
    return lines


def _measured_energy_title(report: Report) -> str:
    """``meas. mJ`` only when every per-pass energy figure was read from a meter; CPU time ×
    per-core power is an estimate and its column says so."""
    energies = [row.measured["energy"] for row in report.rows if row.measured and row.measured.get("energy")]
    measured = all(e.get("measured", True) and not e.get("method", "").startswith("estimate") for e in energies)
    return "meas. mJ" if energies and measured else "cpu-est mJ"


def _headline_lines(report: Report) -> list[str]:
    """The energy headline (the best-validated figure, with its label and validation error)
    and the noise warnings that qualify any measurement."""
    headline = report.headline()
    lines = []
    if headline is not None:
        ratio = f" ({headline['ratio']:.2f}×)" if headline.get("ratio") is not None else ""
        grams = ""
        if headline.get("final_g_per_1k") is not None:
            grams = (f"; {_num(headline['original_g_per_1k'], '.4g')} -> {headline['final_g_per_1k']:.4g} "
                     "gCO2e per 1k inferences")
        lines += [f"ENERGY: {_num(headline['original_mj'], '.3f')} -> {headline['final_mj']:.3f} mJ/inference"
                  f"{ratio}{grams}",
                  f"  by {headline['label']}",
                  f"  validation: {headline['validation_text']}",
                  f"  why this figure: {headline['why']}"]
    return lines + report.noise_warnings()


def render_report(report: Report, width: int = 140) -> str:
    """Plain text (no colour codes) of the ledger table and summary lines."""
    table = Table(title=f"greencc ledger — target {report.target or '-'}, "
                  f"profile {report.profile['name'] if report.profile else '-'}, "
                  f"{'dims ' + str(report.dims) if report.dims else 'static shapes'}")
    with_measured = any(row.measured for row in report.rows)
    columns = [
        ("pass", "left"), ("nodes", "right"), ("params", "right"), ("MB", "right"),
        ("GMAC", "right"), ("est ms", "right"), ("Δ ms", "right"), ("est mJ", "right"),
        ("Δ mJ", "right"),
    ]
    if with_measured:
        columns += [("meas. ms", "right"), (_measured_energy_title(report), "right")]
        width = max(width, 170)
    columns += [("fidelity", "left"), ("wall ms", "right"), ("notes", "left")]
    for column, justify in columns:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in report.rows:
        fidelity = ""
        if row.fidelity:
            fidelity = f"cos {row.fidelity['cosine_min']:.6f} |Δ| {row.fidelity['max_abs_error']:.2g}"
        notes = _notes(row.stats)
        if row.rolled_back:
            notes = f"ROLLED BACK: {row.rolled_back}"
        elif not row.modified and row.name != "(input)":
            notes = notes or "no change"
        measured_cells = _measured_cells(row) if with_measured else []
        table.add_row(
            row.name, str(row.nodes), f"{row.parameters:,}", f"{row.model_bytes / 1e6:.2f}",
            f"{row.total_macs / 1e9:.4f}", _num(row.est_latency_ms, ".3f"),
            _signed(row.delta_latency_ms, ".3f"), _num(row.est_energy_mj, ".3f"),
            _signed(row.delta_energy_mj, ".3f"), *measured_cells, fidelity, f"{row.wall_ms:.1f}", notes,
        )
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    for line in _headline_lines(report):  # the report leads with its one energy headline
        console.print(line, markup=False)
    console.print(table)
    for line in _measured_footer(report):
        console.print(line, markup=False)
    for key, label in (("input", "input model"), ("final", "final model")):
        lines = unpriced_lines(report.unpriced_nodes.get(key) or [], report.rows[0 if key == "input" else -1].nodes)
        for line in lines[:1]:
            console.print(f"{label} {line}", markup=False)
        for line in lines[1:]:
            console.print(line, markup=False)
    summary = report.summary()
    if summary:
        nodes = summary["nodes"]
        energy = summary["est_energy_mj"]
        line = f"nodes {nodes[0]} -> {nodes[1]}"
        if energy[0] is not None:
            line += f"; est. energy {energy[0]:.3f} -> {energy[1]:.3f} mJ/inference"
        console.print(line)
    # Labels hold brackets ("[rapl: ...]"): print them as plain text, not rich markup.
    console.print(f"energy figures: {report.energy_method}", markup=False)
    if report.measured:
        m = report.measured
        line = (
            f"measured on this machine: median {m['median_ms']:.3f} ms "
            f"(p10 {m['p10_ms']:.3f}, p90 {m['p90_ms']:.3f}; {m['repeats']} runs, {m['threads']} threads)"
        )
        base = (report.baseline_measured or {}).get("latency")
        if base:
            line += f"; original model {base['median_ms']:.3f} ms"
        console.print(line)
    if report.simulated:
        console.print(_simulated_line(report.simulated), markup=False)
    figures = report.energy_figures()
    if figures:
        console.print(f"detail: every energy and carbon figure per inference, original -> final; "
                      f"{report.factors().describe()}:", markup=False)
        for figure in figures:
            console.print("  " + _energy_line(figure), markup=False)
    per_token = report.per_token_figures()
    if per_token is not None:
        console.print(_per_token_line(per_token), markup=False)
    return buffer.getvalue()


def _per_token_line(figure: dict) -> str:
    """The decoder's energy per generated token and carbon per 1k tokens, original -> final."""
    return (f"per generated token (decode step: seq 1 after {figure['context']} tokens, batch {figure['batch']}): "
            f"{figure['original_j_per_token']:.4g} -> {figure['final_j_per_token']:.4g} J/token; "
            f"{figure['original_g_per_1k_tokens']:.4g} -> {figure['final_g_per_1k_tokens']:.4g} gCO2e per 1k tokens "
            f"[{figure['label']}]")


def _simulated_line(sim: dict) -> str:
    """The simulator's figures of the last run, and what the host ran instead."""
    levels = ", ".join(f"{level} {count / 1e6:.3f}" for level, count in sim.get("bytes_by_level", {}).items())
    line = (f"simulated ({sim.get('profile', '?')}, {sim.get('array', '?')} array): {sim.get('cycles', 0):,} cycles = "
            f"{sim.get('simulated_ms', 0.0):.4f} ms, {sim.get('macs', 0) / 1e9:.4f} GMAC, "
            f"{sim.get('energy_mj', 0.0):.4f} mJ; MB moved: {levels}")
    host = sim.get("host") or {}
    if host:
        line += f"\n  host CPU ran {len(host)} node(s) the accelerator does not (report.json lists why)"
    return line


# Per-item stats (a key with a space: "rank03 <layer> cos_loss", "head 2.5 score") are
# listed in report.json; the console counts them so a row stays readable.
MAX_NOTES = 8


def _notes(stats: dict) -> str:
    """A pass row's notes: its summary counters (at most MAX_NOTES), then how many
    per-item entries and further counters only report.json lists."""
    summary = [(k, v) for k, v in stats.items() if v and " " not in k]
    items = sum(1 for k, v in stats.items() if v and " " in k)
    text = ", ".join(f"{k}={v}" for k, v in summary[:MAX_NOTES])
    hidden = items + max(0, len(summary) - MAX_NOTES)
    if hidden:
        text += f"{', ' if text else ''}+{hidden} more in report.json"
    return text

