"""Console rendering of a report: the per-pass ledger as a table, then the summary."""

from __future__ import annotations

import io
import shutil
import sys
import textwrap
from typing import TYPE_CHECKING

from rich import box
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
             "latency median (p10-p90) ms, energy mJ/inference by:", *(f"  {label}" for label in labels)]
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


# Width of the console when it is not a terminal (a log file, a pipe, a test).
DEFAULT_WIDTH = 140


def console_width() -> int:
    """Columns to render for: the terminal's width when stdout is one, else ``DEFAULT_WIDTH``."""
    if sys.stdout.isatty():
        return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    return DEFAULT_WIDTH


# Columns left out, in this order, until the ledger fits the width: the parameter count
# (MB says the size), the pass's wall time, then the MAC count.
DROP_ORDER = ("params", "wall ms", "GMAC")
# Columns whose cells may wrap onto several lines (with the narrowest they wrap to);
# numbers never wrap.
WRAPPING = {"pass": 12, "meas. ms": 15, "fidelity cos, |Δ|": 8}


def _row_note(report: Report, row: PassRow) -> str:
    """A row's note: a rollback, the pass's counters, or why it changed nothing."""
    if row.rolled_back:
        return f"ROLLED BACK: {row.rolled_back}"
    note = _notes(row.stats)
    if not row.modified and row.name != "(input)":
        return note or _unchanged_reason(report, row.name)
    return note


def _ledger_columns(report: Report) -> dict[str, list[str]]:
    """The ledger's columns, titled, each a list of cells (one per row)."""
    with_measured = any(row.measured for row in report.rows)
    columns: dict[str, list[str]] = {"#": [], "pass": [], "nodes": [], "params": [], "MB": [], "GMAC": [],
                                     "est ms": [], "Δ ms": [], "est mJ": [], "Δ mJ": []}
    if with_measured:
        columns |= {"meas. ms": [], _measured_energy_title(report): []}
    columns |= {"fidelity cos, |Δ|": [], "wall ms": []}
    for index, row in enumerate(report.rows):
        fidelity = ""
        if row.fidelity:
            fidelity = f"{row.fidelity['cosine_min']:.6f} {row.fidelity['max_abs_error']:.2g}"
        cells = [str(index), row.name, str(row.nodes), f"{row.parameters:,}", f"{row.model_bytes / 1e6:.2f}",
                 f"{row.total_macs / 1e9:.4f}", _num(row.est_latency_ms, ".3f"),
                 _signed(row.delta_latency_ms, ".3f"), _num(row.est_energy_mj, ".3f"),
                 _signed(row.delta_energy_mj, ".3f"), *(_measured_cells(row) if with_measured else []),
                 fidelity, f"{row.wall_ms:.1f}"]
        for column, cell in zip(columns.values(), cells, strict=True):
            column.append(cell)
    return columns


def _needed(columns: dict[str, list[str]]) -> int:
    """Columns of text a table of ``columns`` needs at the least: each column's widest
    unbreakable cell (or its wrapping minimum) plus a padding and a separator."""
    widths = [WRAPPING.get(title) or max(len(cell) for cell in [title, *cells]) for title, cells in columns.items()]
    return sum(widths) + 2 * len(widths) + 2  # the table's edges


def _fitting(columns: dict[str, list[str]], width: int) -> tuple[list[dict[str, list[str]]], list[str]]:
    """The tables to print for ``width``: ``columns`` less those of :data:`DROP_ORDER` that
    must go for it to fit, and when it still does not, the measured columns moved to a
    second table; with the titles left out."""
    dropped: list[str] = []
    for title in DROP_ORDER:
        if _needed(columns) <= width:
            break
        columns = {k: v for k, v in columns.items() if k != title}
        dropped.append(title)
    measured = [title for title in columns if title.startswith(("meas.", "cpu-est"))]
    if _needed(columns) <= width or not measured:
        return [columns], dropped
    first = {k: v for k, v in columns.items() if k not in measured}
    second = {k: v for k, v in columns.items() if k in ("#", "pass", *measured)}
    return [first, second], dropped


def _column_widths(columns: dict[str, list[str]], width: int) -> dict[str, int]:
    """Each column's width: numbers their widest cell; the wrapping columns share what is
    left of ``width``, each between its :data:`WRAPPING` minimum and its widest cell."""
    natural = {name: max(len(cell) for cell in [name, *cells]) for name, cells in columns.items()}
    widths = {name: w if name not in WRAPPING else WRAPPING[name] for name, w in natural.items()}
    spare = width - _needed(columns)
    growth = {name: natural[name] - WRAPPING[name] for name in columns if name in WRAPPING}
    wanted = sum(max(0, g) for g in growth.values())
    for name, grow in growth.items():
        if grow > 0:
            widths[name] += min(grow, spare * grow // wanted)
    return widths


def _table(title: str, columns: dict[str, list[str]], width: int) -> Table:
    """A ledger table of ``columns`` in ``width``; names and fidelity wrap, numbers never do."""
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    for name, column_width in _column_widths(columns, width).items():
        table.add_column(name, justify="left" if name in ("pass", "fidelity cos, |Δ|") else "right",
                         no_wrap=name not in WRAPPING, overflow="fold", width=column_width)
    for cells in zip(*columns.values(), strict=True):
        table.add_row(*cells)
    return table


def render_report(report: Report, width: int | None = None) -> str:
    """Plain text (no colour codes) of the ledger table and summary lines, no line wider
    than ``width`` columns (default: :func:`console_width`). Names and fidelity wrap
    rather than being cut, numbers never; where the table would not fit, the parameter
    count, wall time and MAC count are left out (and the ledger says so), then the
    measured columns move to a table of their own; each pass's notes are printed in full
    on their own lines under the table."""
    width = width or console_width()
    title = (f"greencc ledger — target {report.target or '-'}, "
             f"profile {report.profile['name'] if report.profile else '-'}, "
             f"{'dims ' + str(report.dims) if report.dims else 'static shapes'}")
    tables, dropped = _fitting(_ledger_columns(report), width)
    notes = [(index, row.name, _row_note(report, row)) for index, row in enumerate(report.rows)]
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    for line in _headline_lines(report):  # the report leads with its one energy headline
        console.print(line, markup=False)
    console.print(_table(title, tables[0], width))
    if len(tables) > 1:
        console.print(_table("measured on the target, per pass", tables[1], width))
    if dropped:
        console.print(f"({', '.join(dropped)} left out to fit {width} columns: report.json has them)", markup=False)
    if any(note for _, _, note in notes):
        console.print("notes (per pass; report.json has every counter):")
        for index, name, note in notes:
            if not note:
                continue
            text = textwrap.fill(f"{index} {name}: {note}", width - 1, initial_indent="  ",
                                 subsequent_indent="      ", break_on_hyphens=False)
            console.print(text, markup=False)
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


def _unchanged_reason(report: Report, row_name: str) -> str:
    """Why a pass changed nothing: the first site it declined and why, else "no change"."""
    name = row_name.split("{", 1)[0]
    declined = [miss for miss in report.near_misses if miss["pass"] == name]
    if not declined:
        return "no change"
    first = declined[0]
    more = f"; {len(declined) - 1} more site(s): --explain {name}" if len(declined) > 1 else ""
    return f"no change: {first['node']}: {first['reason']}{more}"


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
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary[:MAX_NOTES])
    hidden = items + max(0, len(summary) - MAX_NOTES)
    if hidden:
        text += f"{', ' if text else ''}+{hidden} more in report.json"
    return text

