"""report.html in a real headless browser (Debian's chromium): the page loads with no console
errors, every image decodes, the tables sort, a run's provenance is one click away, and a
screenshot is not blank. Skipped, with the reason printed, where chromium is not installed."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from probe.artifacts import Artifacts, write_json
from probe.metrics.tables import write_table
from probe.report.summary import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: "
                                "apt-get install chromium); the HTML report is not browsed")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--allow-file-access-from-files"]

# Appended to a copy of the page: what the browser saw, written into the DOM for --dump-dom.
PROBE_SCRIPT = """
<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); });
var __error = console.error;
console.error = function () { window.__errors.push([].join.call(arguments, ' '));
                              __error.apply(console, arguments); };
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var th = document.querySelector('table.sortable th:nth-child(2)');
  th.click(); th.click();  // descending
  var column = Array.prototype.map.call(
    th.closest('table').tBodies[0].rows, function (r) { return r.cells[1].textContent; });
  var out = document.createElement('pre');
  out.id = 'verdict';
  out.textContent = JSON.stringify({images: images.length, decoded: decoded.length,
                                    errors: window.__errors, column: column,
                                    links: document.querySelectorAll('a[href^="#run-"]').length,
                                    provenance: document.querySelectorAll('details').length});
  document.body.appendChild(out);
});
</script>
"""


@pytest.fixture
def report(tmp_path):
    store = Artifacts.at(tmp_path / "art")
    df = pd.DataFrame({"run": ["r1", "r2", "r3"], "arch": ["dit-tiny/2"] * 3,
                       "n": [10, 1000, 100], "split": ["a"] * 3, "sigma": [float("nan")] * 3,
                       "metric": ["psnr_gap_mean"] * 3, "value": [9.0, 0.1, 3.0]})
    write_table(df, store.table("generalization"))
    rng = np.random.default_rng(0)
    store.figures_dir.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8)).save(store.figures_dir / "a.png")
    for run in ("r1", "r2", "r3"):
        write_json(store.run_dir(run) / "config.json", {"run_id": run, "train": {"n": 1}})
    build_report(store)
    return store.root / "report.html"


def browse(page, tmp_path):
    import json

    probe_page = tmp_path / "probe.html"
    # first in the body, so an error in any of the page's own scripts is seen
    probe_page.write_text(page.read_text().replace("<body>", "<body>" + PROBE_SCRIPT, 1))
    dom = subprocess.run([CHROMIUM, *FLAGS, "--virtual-time-budget=5000", "--dump-dom",
                          probe_page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    start = dom.stdout.index('<pre id="verdict">') + len('<pre id="verdict">')
    import html

    return json.loads(html.unescape(dom.stdout[start:dom.stdout.index("</pre>", start)]))


def test_the_page_loads_decodes_its_images_and_sorts(report, tmp_path):
    seen = browse(report, tmp_path)
    assert seen["errors"] == []
    assert seen["images"] == seen["decoded"] == 1
    assert seen["column"] == ["1000", "100", "10"]  # the n column, sorted descending
    assert seen["links"] == 3 and seen["provenance"] == 3  # every run a click away


def test_a_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "shot.png"
    result = subprocess.run([CHROMIUM, *FLAGS, "--window-size=1200,900",
                             f"--screenshot={shot}", report.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), np.float64)
    assert pixels.std() > 5  # text, a table and a figure on white
