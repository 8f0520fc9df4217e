"""`report.html`: one self-contained page a person would rather look at than report.md.

Everything is inside the file (figures as base64 PNG data URIs, tables as HTML, a few lines of
inline script to sort a table by a clicked column), so it opens in any browser from disk with no
server and survives being mailed around. Each summary row names its runs; a run's name opens
its provenance (the config.json it was trained from, its checkpoint and data hashes), so where a
number came from is one click away.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from probe import artifacts
from probe.artifacts import Artifacts

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222 }
h1, h2 { font-weight: 600 } table { border-collapse: collapse; margin: 0.5em 0 1.5em }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap }
td.runs { white-space: normal; font-size: 11px; text-align: left; min-width: 420px }
.wrap { overflow-x: auto }
th { background: #f3f3f3; cursor: pointer } td:first-child, th:first-child { text-align: left }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0 1em } figure { margin: 0 }
figcaption { color: #555; font-size: 12px } details { margin: 0.2em 0 } pre { font-size: 11px;
background: #f7f7f7; padding: 0.5em; overflow-x: auto } .headline li { margin: 0.3em 0 }
"""

SORT = """
document.querySelectorAll('table.sortable th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var up = th.dataset.order !== 'up'; th.dataset.order = up ? 'up' : 'down';
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value || a.cells[column].textContent;
      var y = b.cells[column].dataset.value || b.cells[column].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return up ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _cell(value) -> str:
    if isinstance(value, float):
        return f'<td data-value="{value!r}">{value:.4g}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _runs_cell(value) -> str:
    """A `runs` cell: each run id a link to its provenance block below."""
    links = " ".join(f'<a href="#run-{html.escape(r)}">{html.escape(r)}</a>'
                     for r in str(value).split() if r)
    return f'<td class="runs">{links}</td>'


def table_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    runs = list(df.columns).index("runs") if "runs" in df.columns else -1
    rows = "".join("<tr>" + "".join(_runs_cell(v) if i == runs else _cell(v)
                                    for i, v in enumerate(row)) + "</tr>"
                   for row in df.itertuples(index=False))
    return (f'<div class="wrap"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def figure_html(path: Path, root: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    name = html.escape(str(path.relative_to(root)))
    return (f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
            f"<figcaption>{name}</figcaption></figure>")


def provenance_html(store: Artifacts, run_ids) -> str:
    """One collapsible block per run: its config.json as written."""
    blocks = []
    for run_id in sorted(run_ids):
        path = store.run_dir(run_id) / artifacts.RUN_CONFIG
        if not path.is_file():
            continue
        text = html.escape(json.dumps(artifacts.read_json(path), indent=1, sort_keys=True))
        blocks.append(f'<details id="run-{html.escape(run_id)}"><summary>{html.escape(run_id)}'
                      f"</summary><pre>{text}</pre></details>")
    return "".join(blocks)


def write_html(store: Artifacts, headline: list[str], sections: list[tuple[str, pd.DataFrame]],
               figures: list[Path], run_ids) -> Path:
    """report.html from the summary's parts; returns its path."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>probe report</title>",
             f"<style>{STYLE}</style></head><body><h1>probe report</h1>"]
    if headline:
        items = "".join(f"<li>{html.escape(line.lstrip('- '))}</li>" for line in headline)
        parts.append(f'<ul class="headline">{items}</ul>')
    for title, table in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>{table_html(table)}")
    if figures:
        parts.append("<h2>figures</h2>")
        parts += [figure_html(p, store.root) for p in figures]
    provenance = provenance_html(store, run_ids)
    if provenance:
        parts.append(f"<h2>runs (provenance)</h2>{provenance}")
    parts.append(f"<script>{SORT}</script></body></html>")
    return artifacts.write_text(store.root / artifacts.REPORT_HTML, "".join(parts))
