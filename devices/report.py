"""`edge profile --report DIR`: one self-contained HTML page (inline CSS, SVG drawn by inline JS, no network).

The page carries the profile as JSON and draws from it: per-graph latency bars per device, the
time split per frame, and the size per bundle (recipe). Every projected number is marked as an
estimate and the assumptions are printed under the charts. `profile.json` is written beside it.
The directory is written to a temporary sibling and renamed into place, so a failed write leaves
no half report.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from edge.devices.roofline import LABEL
from edge.errors import EdgeError
from edge.outputs import check_dir_out, staged_dir

FILES = ("index.html", "profile.json")

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.estimate{background:#fff4d6;border:1px solid #e0b84c;padding:.4em .8em;border-radius:4px}
.note{color:#666;font-size:.9em}svg{display:block;margin:.5em 0}svg text{font:12px system-ui,sans-serif}
.legend span{display:inline-block;margin-right:1em}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
"""

# Draws every chart from the embedded JSON; each bar is an SVG <rect class="bar" data-chart=...>.
_JS = """
const P = JSON.parse(document.getElementById('profile-data').textContent);
const NS = 'http://www.w3.org/2000/svg';
const COLORS = ['#4e79a7','#f28e2b','#e15759','#76b7b2','#59a14f','#edc948','#b07aa1','#ff9da7','#9c755f'];
function el(tag, attrs, parent, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function fmt(v) { return v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(3); }
// rows: [{label, segments: [{name, value}]}]; one horizontal (stacked) bar per row
function barChart(container, chart, rows, unit, names) {
  const labelW = 320, width = 960, barH = 16, gap = 6, plotW = width - labelW - 90;
  const max = Math.max(1e-9, ...rows.map(r => r.segments.reduce((s, x) => s + x.value, 0)));
  const svg = el('svg', {width, height: rows.length * (barH + gap) + 10, 'data-chart': chart}, container);
  rows.forEach((r, i) => {
    const y = 5 + i * (barH + gap);
    el('text', {x: labelW - 6, y: y + barH - 4, 'text-anchor': 'end'}, svg, r.label);
    let x = labelW, total = 0;
    r.segments.forEach(s => {
      const w = Math.max(1, s.value / max * plotW);
      const c = COLORS[names.indexOf(s.name) % COLORS.length];
      const rect = el('rect', {x, y, width: w, height: barH, fill: c, class: 'bar', 'data-chart': chart}, svg);
      el('title', {}, rect, `${r.label} ${s.name}: ${fmt(s.value)} ${unit}`);
      x += w; total += s.value;
    });
    el('text', {x: x + 4, y: y + barH - 4}, svg, `${fmt(total)} ${unit}`);
  });
  if (names.length > 1) {
    const legend = document.createElement('div'); legend.className = 'legend';
    names.forEach((n, i) => {
      legend.innerHTML += `<span><i style="background:${COLORS[i % COLORS.length]}"></i>${n}</span>`;
    });
    container.appendChild(legend);
  }
}
const devices = Object.keys(P.devices);
for (const b of P.bundles) for (const [backend, r] of Object.entries(b.backends)) {
  const key = `${b.name} (${backend})`;
  const lat = document.getElementById(`latency-${b.name}-${backend}`);
  const rows = [];
  for (const [g, x] of Object.entries(r.graphs)) {
    const here = [{name: 'measured', value: x.in_loop_ms_per_call}];
    rows.push({label: `${g}: this machine (measured, in loop)`, segments: here});
    for (const d of devices) {
      rows.push({label: `${g}: ${d} (estimate)`, segments: [{name: 'estimate', value: r.projections[d].graph_ms[g]}]});
    }
  }
  barChart(lat, 'latency', rows, 'ms', ['measured', 'estimate']);
  const split = document.getElementById(`split-${b.name}-${backend}`);
  const parts = ['lm', 'depth', 'codec', 'host'];
  const measured = parts.map(p => ({name: p, value: r.run.per_frame_ms[p]}));
  const srows = [{label: 'this machine (measured)', segments: measured}];
  for (const d of devices) {
    const s = r.projections[d].per_frame_split_ms;
    srows.push({label: `${d} (estimate)`, segments: ['lm', 'depth', 'codec'].map(p => ({name: p, value: s[p]}))});
  }
  barChart(split, 'split', srows, 'ms/frame', parts);
}
const sizeRows = [];
for (const b of P.bundles) for (const [backend, r] of Object.entries(b.backends)) {
  const recipes = [...new Set(Object.values(b.recipes))].join('/');
  sizeRows.push({label: `${b.name} (${backend}, ${recipes})`,
                 segments: Object.entries(r.graphs).map(([g, x]) => ({name: g, value: x.file_bytes / 1e6}))});
}
const graphNames = Object.keys(Object.values(P.bundles[0].backends)[0].graphs);
barChart(document.getElementById('sizes'), 'size', sizeRows, 'MB', graphNames);
document.body.setAttribute('data-rendered', 'yes');
"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.1f}"


def _section(b: dict, backend: str, r: dict) -> str:
    graphs = _table(
        ["graph", "recipe", "file MB", "params MB", "alone: median ms", "p90 ms", "in loop ms/call", "calls/frame",
         "MFLOP/call", "MB/call", "efficiency"],
        [[g, x["recipe"], f"{x['file_bytes'] / 1e6:.2f}", f"{x['parameter_bytes'] / 1e6:.2f}",
          _ms(x["latency_ms"]["median"]), _ms(x["latency_ms"]["p90"]), _ms(x["in_loop_ms_per_call"]),
          f"{x['calls_per_frame']:g}",
          "-" if x["flops_per_call"] is None else f"{x['flops_per_call'] / 1e6:.2f}",
          f"{x['bytes_per_call'] / 1e6:.2f}", f"{x['efficiency']:.3f}"] for g, x in r["graphs"].items()])
    ops = _table(["graph", "op", "ms/call", "share", "per call"],
                 [[g, o["op"], _ms(o["ms"]), f"{o['share']:.0%}", o["count"]]
                  for g, x in r["graphs"].items() for o in x["op_profile"]["top_ops"][:5]])
    run = r["run"]
    split = ", ".join(f"{k} {v:.2f}" for k, v in run["per_frame_ms"].items())
    proj = _table(
        ["device (ESTIMATE)", "lm_step ms", "depth_step ms", "codec ms", "per frame ms", "RTF", "real time",
         "memory / RAM", "fits"],
        [[d, _ms(p["graph_ms"]["lm_step"]), _ms(p["graph_ms"]["depth_step"]), _ms(p["graph_ms"]["codec_decoder"]),
          _ms(p["per_frame_ms"]), f"{p['rtf']:.3f}", "yes" if p["real_time"] else "NO",
          f"{p['memory_share_of_ram']:.2%}", "yes" if p["fits_in_ram"] else "NO"]
         for d, p in r["projections"].items()])
    ident = f"{b['name']}-{backend}"
    return f"""
<h2>{html.escape(b['name'])} ({backend})</h2>
<p class="note">{html.escape(b['bundle'])}; preset {html.escape(b['preset'])}; {r['threads']} threads</p>
<p>Run on this machine (measured): {run['frames']} frames, {run['audio_seconds']:.2f} s of audio,
first audio {run['first_audio_ms']:.1f} ms, RTF {run['rtf']:.3f}; per frame (ms): {split};
peak resident memory {r['peak_rss_bytes'] / 1e6:.0f} MB ({html.escape(r['peak_rss_scope'])}).</p>
<h3>Per graph (measured here: each call timed alone after warm-up, and inside the loop)</h3>
{graphs}
<h3>Per-graph latency: this machine (measured) vs devices (estimate)</h3><div id="latency-{ident}"></div>
<h3>Time per frame: this machine (measured) vs devices (estimate)</h3><div id="split-{ident}"></div>
<h3>Projection per device</h3><p class="estimate">{html.escape(LABEL)}</p>{proj}
<h3>Top operators ({html.escape(next(iter(r['graphs'].values()))['op_profile']['source'])})</h3>{ops}
"""


def render_html(profile: dict) -> str:
    data = json.dumps(profile, default=float).replace("</", "<\\/")
    sections = "".join(_section(b, be, r) for b in profile["bundles"] for be, r in b["backends"].items())
    m = profile["machine"]
    assumptions = "".join(f"<li>{html.escape(a)}</li>" for a in profile["estimate"]["assumptions"])
    devices = _table(["device", "title", "bandwidth GB/s", "peak FP32 GFLOP/s (derived)", "RAM GB"],
                     [[n, d["title"], d["memory_bandwidth_gbs"], d["peak_fp32_gflops"], d["ram_gb"]]
                      for n, d in profile["devices"].items()])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edge profile</title><style>{_CSS}</style></head>
<body>
<h1>edge profile</h1>
<p>edge {html.escape(profile['edge_version'])}. This machine: {m['threads']} threads,
{m['bandwidth']['read_gbs']} GB/s read bandwidth, {m['compute']['gflops']} GFLOP/s FP32 matmul (measured).</p>
<h2>Size per bundle and recipe</h2><div id="sizes"></div>
{sections}
<h2>Estimates: what the projections assume</h2>
<p class="estimate">{html.escape(profile['estimate']['label'])}</p><ul>{assumptions}</ul>
<h2>Devices</h2>{devices}
<p class="note">Sources for every device fact: <code>edge devices NAME</code>.</p>
<script type="application/json" id="profile-data">{data}</script>
<script>{_JS}</script>
</body></html>
"""


def _is_report(path: Path) -> bool:
    return all(p.name in FILES for p in path.iterdir())


def check_report_dir(out: Path) -> None:
    """Refuse, before any slow work, a --report directory that cannot be written or is not ours to replace (an
    earlier report is replaced: see `edge.outputs`)."""
    check_dir_out(out, force=True, ours=_is_report, what="an edge profile report", flag="--report")


def write_report(profile: dict, out: Path) -> Path:
    """Write `index.html` + `profile.json` into `out` atomically (temporary sibling, then rename)."""
    check_report_dir(out)
    try:
        with staged_dir(out) as tmp:
            (tmp / "index.html").write_text(render_html(profile))
            (tmp / "profile.json").write_text(json.dumps(profile, indent=2, default=float) + "\n")
    except OSError as e:
        raise EdgeError(f"cannot write the report to '{out}' ({e.strerror})") from None
    return out / "index.html"
