"""report.html: written beside report.json in every saved artifact, self-contained (no
script, no link, no fetch), with the headline, the ledger, the waterfall, fidelity, the
costliest nodes and a search's Pareto front; ``greencc report DIR --html``; and rendered by
a real headless Chromium without console errors, with a screenshot."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

import greencc as gc
from greencc.cli import main
from greencc.report.html import render_html, write_html
from greencc.report.ledger import Report
from tests import models
from tests.report.browser import Browser, chromium


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENCC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny BERT compiled -O2 (cleanup and fusions: a waterfall with steps) and saved."""
    out = tmp_path_factory.mktemp("html") / "bert-O2"
    gc.compile(models.tiny_bert_model(), "ort-cpu", "-O2", dims={"batch": 1, "seq": 16}, output_dir=out)
    return out


def _external_references(page: str) -> list[str]:
    """Anything that would make the browser fetch: scripts, links, src/href URLs, CSS url()."""
    found = re.findall(r"<script|<link|<iframe|<img|\bsrc=|@import|url\((?!#)", page, flags=re.IGNORECASE)
    found += [h for h in re.findall(r'href="([^"]*)"', page) if not h.startswith("#")]
    return found


def test_every_saved_artifact_holds_a_self_contained_report_html(artifact: Path) -> None:
    page = (artifact / "report.html").read_text(encoding="utf-8")
    report = Report.from_json(artifact / "report.json")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert _external_references(page) == []
    for row in report.rows:
        assert f"<td class=\"text\">{row.name}</td>" in page
    headline = report.headline()
    assert f"{headline['final_mj']:.3f} mJ/inference" in page
    for section in ("Ledger", "Energy and latency per pass", "Fidelity per pass", "Costliest nodes"):
        assert f"<h2>{section}</h2>" in page
    assert page.count("<svg") == 3  # waterfall, fidelity, costliest nodes: drawn by matplotlib
    assert "Pareto" not in page  # no search ran
    assert report.costliest_nodes and report.costliest_nodes[0]["name"] in page
    # report.html is part of the artifact: hashed, and the artifact still loads.
    assert gc.CompiledModel.load(artifact).report is not None


def test_a_search_adds_its_pareto_front(artifact: Path) -> None:
    report = Report.from_json(artifact / "report.json")
    report.search = {"energy_label": "estimated mJ/inference", "points": [
        {"label": "-O1", "latency_ms": 2.0, "energy_mj": 3.0, "fidelity": 1.0, "on_front": True},
        {"label": "int8", "latency_ms": 1.0, "energy_mj": 1.5, "fidelity": 0.99, "on_front": True},
        {"label": "bad", "latency_ms": 2.5, "energy_mj": 3.5, "fidelity": 0.98, "on_front": False},
    ]}
    page = render_html(report)
    assert "<h2>Search: Pareto front</h2>" in page and page.count("<svg") == 4


def test_cli_report_html(artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(artifact), "--html"]) == 0
    assert capsys.readouterr().out.strip() == str(artifact / "report.html")  # the artifact's own page
    copy = tmp_path / "copy" / "report.json"
    copy.parent.mkdir()
    shutil.copyfile(artifact / "report.json", copy)
    assert main(["report", str(copy), "--html"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {copy.parent / 'report.html'}"
    assert (copy.parent / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.fixture(scope="module")
def browser() -> Browser:
    binary, why = chromium()
    if binary is None:
        pytest.skip(f"no headless browser: {why}")
    started = Browser(binary)
    yield started
    started.close()


def test_the_browser_check_catches_a_console_error(browser: Browser, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>console.error('broken page');"
                      "undefinedFunction();</script></body></html>")
    browser.events.clear()
    browser.open(broken.as_uri())
    errors = browser.console_errors()
    assert any("broken page" in e for e in errors) and any("undefinedFunction" in e or "Uncaught" in e
                                                           for e in errors)


def test_report_html_renders_in_chromium_without_console_errors(browser: Browser, artifact: Path,
                                                                tmp_path: Path) -> None:
    browser.events.clear()
    browser.open((artifact / "report.html").as_uri())
    assert browser.console_errors() == []
    shot = browser.screenshot(tmp_path / "report.png")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 50_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 1000 and height > 1500  # the whole page: headline, ledger and every plot
    if os.environ.get("GREENCC_SCREENSHOT_DIR"):  # to look at it
        shutil.copyfile(shot, Path(os.environ["GREENCC_SCREENSHOT_DIR"]) / "report.png")


def test_write_html_is_atomic_and_replaces(tmp_path: Path, artifact: Path) -> None:
    report = Report.from_json(artifact / "report.json")
    target = tmp_path / "r" / "report.html"
    target.parent.mkdir()
    target.write_text("old")
    write_html(report, target)
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]
