"""Open a rendered report in real headless Chromium (Debian's package, driven by Playwright).

Checks: loads with no console errors and no network requests, every plot is present and
non-empty, one summary row per variant, a spec containing ``<script>`` shows as text, the page
fits a narrow window; a screenshot is saved as a test artefact (in the test's tmp folder, or
under ``$CAPROBE_TEST_ARTIFACTS`` when set). Skipped only when no chromium is installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_report_support import make_run

from caprobe.reporting import render_report

pytestmark = pytest.mark.browser

EVIL = '<script>alert("pwned")</script>'
VARIANTS = ("none", "se", "ca", EVIL)

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str | None:
    env = os.environ.get("CAPROBE_CHROMIUM")
    if env and Path(env).exists():
        return env
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = make_run(tmp_path_factory.mktemp("browser") / "run", variants=VARIANTS,
                    seeds=(0, 1))
    return render_report(root)


def test_report_in_headless_chromium(report, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium); browser test skipped")
    from playwright.sync_api import sync_playwright  # test dependency: playwright

    artefacts = Path(os.environ.get("CAPROBE_TEST_ARTIFACTS") or tmp_path)
    artefacts.mkdir(parents=True, exist_ok=True)
    url = report.resolve().as_uri()
    errors: list[str] = []
    requests: list[str] = []
    dialogs: list[str] = []
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=exe, headless=True, args=FLAGS,
            viewport={"width": 1200, "height": 900})
        try:
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

            def route(r):
                requests.append(r.request.url)
                (r.continue_() if r.request.url == url else r.abort())

            page.route("**/*", route)
            page.goto(url, wait_until="load")

            assert errors == []
            assert [u for u in requests if u != url] == []
            assert dialogs == []
            assert page.evaluate("document.scripts.length") == 0

            # one summary row per variant; the <script> spec is shown as text
            labels = page.locator("table.summary tbody tr td.label").all_inner_texts()
            assert [t.strip() for t in labels] == list(VARIANTS)

            # every plot present and non-empty
            figures = page.locator("figure.plot-figure")
            assert figures.count() == 5
            for i in range(figures.count()):
                fig = figures.nth(i)
                name = fig.get_attribute("data-plot")
                svg = fig.locator("svg")
                assert svg.count() == 1, f"plot {name} is missing"
                box = svg.bounding_box()
                assert box and box["width"] > 100 and box["height"] > 50, name
                assert svg.locator("path, use, image, rect").count() > 5, f"{name} is empty"
            maps = page.locator("figure.maps svg")
            assert maps.count() == len(VARIANTS) - 1
            for i in range(maps.count()):
                assert maps.nth(i).locator("image").count() > 0
            page.screenshot(path=str(artefacts / "report.png"), full_page=True)

            # narrow window: the page itself does not scroll sideways (tables scroll inside)
            page.set_viewport_size({"width": 380, "height": 800})
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 1
            page.screenshot(path=str(artefacts / "report-narrow.png"), full_page=False)
            # printable: the print stylesheet applies and Chromium prints the page to PDF
            page.emulate_media(media="print")
            assert page.locator("nav.toc").is_hidden()
            page.set_viewport_size({"width": 1200, "height": 900})
            pdf = page.pdf(path=str(artefacts / "report.pdf"), format="A4")
            assert pdf[:4] == b"%PDF" and len(pdf) > 20_000
        finally:
            ctx.close()
    assert (artefacts / "report.png").stat().st_size > 10_000
