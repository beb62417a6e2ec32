"""The HTML report: one self-contained page (no script, no network) with the energy
headline, the ledger, a per-pass energy and latency waterfall, fidelity per pass, the
costliest nodes and, when a search ran, its Pareto front. Plots are drawn by matplotlib
(the ``report`` extra, imported only here) as inline SVG; without it the page keeps its
tables and says how to get the plots.
"""

from __future__ import annotations

import html
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greencc.report.ledger import PassRow, Report

REPORT_HTML_NAME = "report.html"
_SAVED = "#2e7d32"
_SPENT = "#c62828"
_TOTAL = "#546e7a"

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1200px;color:#1b1b1b}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9em}.headline{background:#eef6ee;border-left:6px solid #2e7d32;padding:10px 16px}
.headline .figure{font-size:1.6em;font-weight:600}.warning{background:#fff4e5;border-left:6px solid #ef6c00;
padding:8px 16px;margin:8px 0}table{border-collapse:collapse;font-size:.85em;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f5f5f5}
td.text,th.text{text-align:left;overflow-wrap:anywhere}table{max-width:100%}.plots svg{max-width:100%;height:auto}.note{color:#555;font-size:.85em}
"""


def render_html(report: Report, advice: dict[str, Any] | None = None) -> str:
    """The report as one self-contained HTML page (text); ``advice`` (``Advice.to_dict()``
    from ``greencc advise``) adds the energy-vs-threads-and-batch curve."""
    plots = _plots(report)
    profile = report.profile["name"] if report.profile else "-"
    dims = ", ".join(f"{k}={v}" for k, v in report.dims.items()) or "static shapes"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>greencc report — {_e(report.model.get('source') or 'model')}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>greencc report</h1>",
        f'<p class="meta">model {_e(report.model.get("source") or "-")}; target {_e(report.target or "-")}, '
        f"profile {_e(profile)}; dims {_e(dims)}; pipeline <code>{_e(report.pipeline)}</code>; "
        f"greencc {_e(report.greencc_version)}, {_e(report.created)}</p>",
        _headline(report),
        *(f'<p class="warning">{_e(line)}</p>' for line in report.noise_warnings()),
        "<h2>Ledger</h2>", _ledger_table(report),
        "<h2>Energy and latency per pass</h2>", plots.get("waterfall", ""),
        "<h2>Fidelity per pass</h2>", plots.get("fidelity", "") or _fidelity_note(report),
        "<h2>Costliest nodes</h2>", plots.get("nodes", ""), _nodes_table(report),
    ]
    if report.search:
        parts += ["<h2>Search: Pareto front</h2>", plots.get("pareto", ""), _front_table(report.search)]
    if advice is not None:
        parts += ["<h2>Serving advice: energy per inference vs threads and batch</h2>", _advice_section(advice)]
    parts += ["<h2>Every energy figure</h2>", _figures_table(report)]
    if plots.get("missing"):
        parts.append(f'<p class="note">{_e(plots["missing"])}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_html(report: Report, path: str | os.PathLike, advice: dict[str, Any] | None = None) -> Path:
    """Write :func:`render_html` to ``path`` atomically; returns the path."""
    path = Path(path)
    text = render_html(report, advice)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(staging, 0o644)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


# -- sections --------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _headline(report: Report) -> str:
    headline = report.headline()
    if headline is None:
        return '<p class="headline">No energy figure: the target has no hardware profile and nothing was measured.</p>'
    ratio = f" ({headline['ratio']:.2f}×)" if headline.get("ratio") is not None else ""
    carbon = ""
    if headline.get("final_g_per_1k") is not None:
        carbon = (f"; {_num(headline['original_g_per_1k'], '.4g')} → {headline['final_g_per_1k']:.4g} "
                  "gCO2e per 1k inferences")
    return (f'<div class="headline"><div class="figure">{_num(headline["original_mj"], ".3f")} → '
            f'{headline["final_mj"]:.3f} mJ/inference{_e(ratio)}{_e(carbon)}</div>'
            f"<div>by {_e(headline['label'])}</div>"
            f"<div>validation: {_e(headline['validation_text'])}</div>"
            f"<div>why this figure: {_e(headline['why'])}</div></div>")


def _table(header: list[str], rows: list[list[str]], text_columns: set[int]) -> str:
    def cell(tag: str, i: int, value: str) -> str:
        css = ' class="text"' if i in text_columns else ""
        return f"<{tag}{css}>{_e(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ledger_table(report: Report) -> str:
    with_measured = any(row.measured for row in report.rows)
    header = ["pass", "nodes", "params", "MB", "GMAC", "est ms", "Δ ms", "est mJ", "Δ mJ"]
    if with_measured:
        energies = [r.measured["energy"] for r in report.rows if r.measured and r.measured.get("energy")]
        meter = energies and all(not e.get("method", "").startswith("estimate") for e in energies)
        header += ["meas. ms", "meas. mJ" if meter else "cpu-est mJ"]
    header += ["cos min", "max |Δ|", "wall ms", "notes"]
    rows = []
    for row in report.rows:
        cells = [row.name, str(row.nodes), f"{row.parameters:,}", f"{row.model_bytes / 1e6:.2f}",
                 f"{row.total_macs / 1e9:.4f}", _num(row.est_latency_ms, ".3f"), _num(row.delta_latency_ms, "+.3f"),
                 _num(row.est_energy_mj, ".3f"), _num(row.delta_energy_mj, "+.3f")]
        if with_measured:
            cells += [_num(row.measured_latency_ms, ".3f"), _num(row.measured_energy_mj, ".3f")]
        fidelity = row.fidelity or {}
        notes = (f"ROLLED BACK: {row.rolled_back}" if row.rolled_back else
                 ", ".join(f"{k}={v}" for k, v in row.stats.items() if v and " " not in k)
                 or ("no change" if not row.modified and row.name != "(input)" else ""))
        cells += [_num(fidelity.get("cosine_min"), ".6f"), _num(fidelity.get("max_abs_error"), ".2g"),
                  f"{row.wall_ms:.1f}", notes]
        rows.append(cells)
    label = f'<p class="note">est columns: {_e(report.energy_method)}</p>'
    return _table(header, rows, {0, len(header) - 1}) + label


def _nodes_table(report: Report) -> str:
    if not report.costliest_nodes:
        return '<p class="note">No per-node estimate (no hardware profile).</p>'
    rows = [[n["name"], n["op_type"], n.get("module") or "", f"{n['macs'] / 1e6:.3f}", f"{n['latency_ms']:.4f}",
             f"{n['energy_mj']:.4f}", f"{100 * n['share']:.1f}%", n.get("bound", "")]
            for n in report.costliest_nodes]
    return _table(["node", "op", "module", "MMAC", "est ms", "est mJ", "share", "bound"], rows, {0, 1, 2, 7})


def _figures_table(report: Report) -> str:
    rows = [[f["kind"], f["label"], _num(f["original_mj"], ".4f"), _num(f["final_mj"], ".4f"),
             _num(f.get("ratio"), ".3f"), _num(f["final_g_per_1k"], ".4g")]
            for f in report.energy_figures()]
    factors = f'<p class="note">carbon: {_e(report.factors().describe())}</p>'
    return _table(["kind", "method", "original mJ", "final mJ", "ratio", "final gCO2e / 1k"], rows, {0, 1}) + factors


def _advice_section(advice: dict[str, Any]) -> str:
    best = advice.get("best") or {}
    rows = [[str(p["threads"]), str(p["batch"]), f"{p['batch_ms']:.3f}", f"{p['inferences_per_s']:.1f}",
             f"{p['j_per_inference'] * 1e3:.4f}", "yes" if p["within_slo"] else "no",
             "best" if best and (p["threads"], p["batch"]) == (best["threads"], best["batch"]) else ""]
            for p in advice["points"]]
    table = _table(["threads", "batch", "batch ms", "inferences/s", "mJ/inference",
                    f"within {advice['slo_ms']:g} ms", ""], rows, {6})
    pick = (f"recommended: {best['threads']} threads, batches of {best['batch']}" if best
            else f"no setting meets {advice['slo_ms']:g} ms")
    knobs = "; ".join(f"{k}: {v}" for k, v in advice.get("knobs", {}).items())
    return (_advice_plot(advice) + table + f'<p class="note">{_e(pick)} — energy {_e(advice["label"])}</p>'
            + f'<p class="note">{_e(knobs)}</p>')


def _advice_plot(advice: dict[str, Any]) -> str:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        return ""

    def draw(figure: Any) -> None:
        """mJ/inference against batch size, one line per thread count; filled markers meet the
        latency target, hollow ones miss it."""
        ax = figure.subplots()
        for threads in sorted({p["threads"] for p in advice["points"]}):
            points = [p for p in advice["points"] if p["threads"] == threads]
            line = ax.plot([p["batch"] for p in points], [p["j_per_inference"] * 1e3 for p in points],
                           label=f"{threads} thread(s)")[0]
            ax.scatter([p["batch"] for p in points], [p["j_per_inference"] * 1e3 for p in points],
                       facecolors=[line.get_color() if p["within_slo"] else "none" for p in points],
                       edgecolors=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(f"mJ/inference ({'measured' if advice['measured'] else 'estimated'})")
        ax.legend()

    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "greencc"}):
        return _svg(Figure, draw)


def _front_table(search: dict[str, Any]) -> str:
    """The search's front points: label, pipeline, figures and a link to each one's ledger."""
    front = sorted((p for p in search.get("points", []) if p.get("on_front")),
                   key=lambda p: p.get("energy_mj") if p.get("energy_mj") is not None else float("inf"))
    if not front:
        return ""
    rows = []
    for p in front:
        ledger = f'<a href="{_e(p["ledger"])}">ledger</a>' if p.get("ledger") else "-"
        measured = "measured" if p.get("measured", True) else "estimated"
        rows.append(f'<tr><td class="text">{_e(p.get("label", ""))}</td><td class="text"><code>'
                    f'{_e(p.get("pipeline", ""))}</code></td><td>{_num(p.get("energy_mj"), ".4g")}</td>'
                    f'<td>{_num(p.get("latency_ms"), ".4g")} ({measured})</td>'
                    f'<td>{_num(p.get("fidelity"), ".6f")}</td><td class="text">{ledger}</td></tr>')
    head = ("<tr><th class=\"text\">point</th><th class=\"text\">pipeline</th><th>est mJ</th><th>ms</th>"
            "<th>fidelity (cos)</th><th class=\"text\">ledger</th></tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _fidelity_note(report: Report) -> str:
    return '<p class="note">No pass changed the outputs enough to be verified (or verification was off).</p>'


# -- plots -----------------------------------------------------------------------------
def _plots(report: Report) -> dict[str, str]:
    """Inline SVG plots by name; ``{"missing": why}`` when matplotlib is not installed."""
    try:
        import matplotlib
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figures
    except ImportError:
        return {"missing": "Plots need matplotlib: pip install 'greencc[report]'."}

    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "greencc"}):
        plots = {"waterfall": _svg(Figure, lambda fig: _waterfall(fig, report)),
                 "nodes": _svg(Figure, lambda fig: _costliest(fig, report)) if report.costliest_nodes else ""}
        if any(row.fidelity for row in report.rows):
            plots["fidelity"] = _svg(Figure, lambda fig: _fidelity(fig, report))
        if report.search and report.search.get("points"):
            plots["pareto"] = _svg(Figure, lambda fig: _pareto(fig, report.search or {}))
    return plots


def _svg(figure_class: Any, draw: Callable[[Any], None]) -> str:
    # Fixed margins: constrained layout would measure every tick label and double the time.
    figure = figure_class(figsize=(10, 3.6))
    figure.subplots_adjust(left=0.08, right=0.97, bottom=0.3, top=0.88, wspace=0.25)
    draw(figure)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return f'<div class="plots">{text[text.index("<svg"):]}</div>'


def _waterfall(figure: Any, report: Report) -> None:
    """Per-pass estimated energy (left) and latency (right) as waterfalls: the input's total,
    each pass's change (green saved, red spent), the final total."""
    axes = figure.subplots(1, 2)
    for ax, total_of, unit in ((axes[0], lambda r: r.est_energy_mj, "mJ/inference"),
                               (axes[1], lambda r: r.est_latency_ms, "ms")):
        _waterfall_axis(ax, report.rows, total_of)
        ax.set_ylabel(f"estimated {unit}")
    figure.suptitle(f"per-pass waterfall — {report.energy_method}", fontsize=8)


def _waterfall_axis(ax: Any, rows: list[PassRow], total_of: Callable[[PassRow], float | None]) -> None:
    values = [total_of(row) for row in rows]
    if not rows or any(v is None for v in values):
        ax.text(0.5, 0.5, "no estimate (no hardware profile)", ha="center", transform=ax.transAxes)
        return
    totals = [float(v) for v in values]  # type: ignore[arg-type]
    labels, bottoms, heights, colors = ["(input)"], [0.0], [totals[0]], [_TOTAL]
    for row, before, after in zip(rows[1:], totals, totals[1:], strict=False):
        labels.append(_pass_label(row.name))
        bottoms.append(min(before, after))
        heights.append(abs(after - before))
        colors.append(_SAVED if after < before else _SPENT)
    labels.append("final")
    bottoms.append(0.0)
    heights.append(totals[-1])
    colors.append(_TOTAL)
    positions = range(len(labels))
    ax.bar(positions, heights, bottom=bottoms, color=colors)
    ax.set_xticks(list(positions), labels, rotation=35, ha="right")


def _pass_label(name: str) -> str:
    """A pass's tick label: its name without options (the ledger above shows them), which
    would run off the plot."""
    return name.split("{", 1)[0]


def _shortened(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters in the middle, keeping its start and end."""
    return text if len(text) <= width else f"{text[: width // 2 - 1]}…{text[-(width - width // 2):]}"


def _fidelity(figure: Any, report: Report) -> None:
    """1 − cosine similarity (min over outputs) and max absolute error against the original,
    per pass that was verified."""
    verified = [row for row in report.rows if row.fidelity]
    names = [f"{i}. {_pass_label(row.name)}" for i, row in enumerate(verified, 1)]  # a pass may run twice
    cosine = [row.fidelity.get("cosine_min") for row in verified]  # type: ignore[union-attr]
    error = [row.fidelity.get("max_abs_error") for row in verified]  # type: ignore[union-attr]
    left, right = figure.subplots(1, 2)
    # 1 − cosine on a log axis: exact passes sit near 1e-12, lossy ones show how far they moved.
    left.bar(names, [max(1.0 - c, 1e-12) if c is not None else float("nan") for c in cosine], color=_TOTAL)
    left.set_yscale("log")
    left.set_ylabel("1 − cosine similarity (min)")
    right.bar(names, [e if e else 1e-12 for e in error], color=_SPENT)
    right.set_yscale("log")
    right.set_ylabel("max |Δ| vs original")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=35)


def _costliest(figure: Any, report: Report) -> None:
    """The final model's costliest nodes by estimated energy (horizontal bars)."""
    nodes = list(reversed(report.costliest_nodes))
    figure.subplots_adjust(left=0.45)  # room for the node names
    ax = figure.subplots()
    ax.barh([f"{_shortened(n['name'], 30)} ({n['op_type']})" for n in nodes], [n["energy_mj"] for n in nodes],
            color=_TOTAL)
    ax.set_xlabel("estimated mJ/inference")


def _pareto(figure: Any, search: dict[str, Any]) -> None:
    """A search's candidates: energy (left) and latency (right) against fidelity (1 − cos,
    log scale); the front's points circled and labelled."""
    points = search["points"]
    axes = figure.subplots(1, 2)
    loss = [max(1.0 - p["fidelity"], 1e-9) if p.get("fidelity") is not None else float("nan") for p in points]
    for ax, key, label in ((axes[0], "energy_mj", search.get("energy_label", "energy (mJ/inference)")),
                           (axes[1], "latency_ms", "latency (ms)")):
        values = [p[key] if p.get(key) is not None else float("nan") for p in points]
        ax.scatter(loss, values, color=_TOTAL, s=14)
        front = [(x, y, p) for x, y, p in zip(loss, values, points, strict=True) if p.get("on_front")]
        ax.scatter([x for x, _, _ in front], [y for _, y, _ in front], facecolors="none", edgecolors=_SAVED, s=60)
        for x, y, p in front:
            ax.annotate(p.get("label", ""), (x, y), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("fidelity loss, 1 − cosine (log)")
        ax.set_ylabel(label)
