"""The report in a real browser: headless Chromium renders it to a PNG that is not blank,
and the page logs nothing to the console (no script errors, nothing blocked).

Needs Debian's ``chromium`` (``scripts/install_browser.sh``). Skipped where it is absent,
except in CI (``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crosslayer.model import tiny_model
from crosslayer.report import write_report
from tests.test_report import make_run

pytestmark = pytest.mark.browser

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("chromium is missing in CI: run scripts/install_browser.sh")
    pytest.skip("chromium not installed (scripts/install_browser.sh)")


def render(page: Path, png: Path, tmp: Path, height: int = 2400) -> list[str]:
    """Screenshot ``page`` to ``png``; return the console messages the page logged."""
    proc = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={tmp / 'profile'}", f"--window-size=1200,{height}",
         f"--screenshot={png}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp)},
    )  # fmt: skip
    assert png.is_file(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def ink(png: Path) -> tuple[float, int]:
    """Share of non-white pixels, and the number of distinct colours."""
    import matplotlib.image

    img = np.asarray(matplotlib.image.imread(png))[..., :3]
    dark = float((img.min(axis=-1) < 0.95).mean())
    colours = len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    return dark, colours


# The report test's run plus a small depth sweep, so the emergence section (its heatmap,
# distributions and taxonomy) is rendered too; the sweep store adds a few seconds.
SWEEP = {"sweep": {"enabled": True, "tokens": 1500}}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chromium()  # skip / fail before the run is built
    lm: Any = tiny_model("gemma3", n_layers=3, d_model=32)
    return write_report(make_run(tmp_path_factory.mktemp("browser"), lm, **SWEEP), model=lm)


def test_report_renders_in_chromium_without_console_errors(report: Path, tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    console = render(report, png, tmp_path)
    assert console == []
    dark, colours = ink(png)
    assert dark > 0.05 and colours > 50  # text, tables and embedded plots are drawn


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """A page with a script error and a blank page are caught by the same checks."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>console.error('boom'); undefined_fn();</script>")
    assert any("boom" in line for line in render(bad, tmp_path / "bad.png", tmp_path, 600))
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    assert render(blank, tmp_path / "blank.png", tmp_path, 600) == []
    dark, colours = ink(tmp_path / "blank.png")
    assert dark < 0.01 and colours < 5


def test_dashboards_render_with_quantile_bands_and_suppressed_tokens(
    report: Path, tmp_path: Path
) -> None:
    """The dashboards, scrolled to in the browser: the new parts are on the page and drawn."""
    page = report.read_text()
    assert page.count('class="qgroup"') >= 4 and page.count('data-side="suppressed"') >= 1
    # the report's own head (styles) with its dashboards section alone: the screenshot shows them
    head = page[: page.index("<body>")]
    start = page.index('<section id="dashboards">')
    only = tmp_path / "dashboards.html"
    only.write_text(head + "<body>" + page[start : page.index("</section>", start)] + "</section>")
    png = tmp_path / "dashboards.png"
    console = render(only, png, tmp_path)
    assert console == []
    dark, colours = ink(png)
    assert dark > 0.05 and colours > 50


def test_compare_report_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    """Two runs side by side (the report's run and a copy of it) render without errors."""
    from crosslayer.runs_compare import compare_runs

    run = report.parent
    copy = shutil.copytree(run, tmp_path / "copy", ignore=shutil.ignore_patterns("*store*"))
    compare_runs([run, copy], tmp_path / "cmp")
    png = tmp_path / "compare.png"
    console = render(tmp_path / "cmp" / "compare.html", png, tmp_path)
    assert console == []
    dark, colours = ink(png)
    assert dark > 0.05 and colours > 50


@pytest.mark.parametrize(
    ("section", "tag"),
    [("decomposition", "div"), ("dashboards", "section"), ("emergence", "section")],
)
def test_each_new_section_renders_on_its_own(
    report: Path, tmp_path: Path, section: str, tag: str
) -> None:
    """The sections the cross-fitting issues added, each cut out with the report's styles and
    screenshotted: present, drawn, no console errors."""
    page = report.read_text()
    head = page[: page.index("<body>")]
    start = page.rindex(f"<{tag}", 0, page.index(f'id="{section}"'))
    end = page.index(f"</{tag}>", start) + len(f"</{tag}>")
    only = tmp_path / f"{section}.html"
    only.write_text(head + "<body>" + page[start:end])
    png = tmp_path / f"{section}.png"
    assert render(only, png, tmp_path) == []
    dark, colours = ink(png)
    assert dark > 0.02 and colours > 20


def test_emergence_section_shows_its_heatmap_and_taxonomy(report: Path, tmp_path: Path) -> None:
    """The sweep's emergence section: the heatmap is an embedded, non-empty PNG that draws
    (cut out alone and screenshotted), and the taxonomy's counts table is there."""
    import base64
    import re

    page = report.read_text()
    start = page.index('<section class="experiment" id="emergence"')
    sec = page[start : page.index("</section>", start) + len("</section>")]
    assert '<table class="taxonomy">' in sec and 'data-class="token-determined"' in sec
    fig = re.search(r'<figure data-name="emergence_heatmap">\s*<img src="data:image/png;'
                    r'base64,([^"]+)"', sec)  # fmt: skip
    assert fig, "no embedded emergence heatmap"
    png_bytes = base64.b64decode(fig.group(1))
    assert png_bytes[:8] == b"\x89PNG\r\n\x1a\n" and len(png_bytes) > 2000
    heat = tmp_path / "heatmap.png"
    heat.write_bytes(png_bytes)
    dark, colours = ink(heat)  # the image itself is drawn, not blank
    assert dark > 0.05 and colours > 20
    head = page[: page.index("<body>")]
    only = tmp_path / "emergence_only.html"
    only.write_text(head + "<body><main>" + sec + "</main>")
    png = tmp_path / "emergence_only.png"
    assert render(only, png, tmp_path) == []
    dark, colours = ink(png)
    assert dark > 0.05 and colours > 50
