"""One self-contained, offline HTML report of an extraction run (``--format html`` or ``--report FILE.html``).

The file holds everything: each document with its spans highlighted by type (hover: type, role or relation,
grounding), the items table (entities / relations / events / records), the graph (search, filter by type,
click a node for its mentions and aliases) and the merge log of entity resolution. No network, no CDN.

The graph is drawn as SVG by a few dozen lines of JavaScript in the file; node positions are computed here
(a seeded force-directed layout, numpy), so the same results give the same picture, nothing is vendored and
the file stays small. (A graph library such as cytoscape.js would add ~400 KB to every report for features
this view does not use.)
"""
from __future__ import annotations

import html
import json
from collections import Counter
from typing import Optional

from ie2instruction.tasks.items import Result

from .export import GraphModel

PALETTE = ["#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5", "#d9d9d9",
           "#bc80bd", "#ccebc5", "#ffed6f"]
KIND_COLOURS = {"Document": "#cccccc", "Event": "#f4a582", "Value": "#e0e0e0"}


def layout(model: GraphModel, size: float = 1000.0, iterations: int = 120) -> dict[str, tuple[float, float]]:
    """Fruchterman-Reingold positions in ``[0, size]²``, seeded (deterministic)."""
    import numpy as np

    ids = list(model.nodes)
    n = len(ids)
    if n == 0:
        return {}
    index = {k: i for i, k in enumerate(ids)}
    rng = np.random.default_rng(0)
    pos = rng.random((n, 2))
    edges = np.array([(index[e.source], index[e.target]) for e in model.edges.values()], dtype=int).reshape(-1, 2)
    k = 2.0 / np.sqrt(n)
    t = 0.1
    for _ in range(iterations if n <= 3000 else 30):
        delta = pos[:, None, :] - pos[None, :, :]
        dist = np.maximum(np.linalg.norm(delta, axis=-1), 1e-3)
        force = (k * k / dist ** 2)[:, :, None] * delta  # repulsion
        disp = force.sum(axis=1)
        if len(edges):
            d = pos[edges[:, 0]] - pos[edges[:, 1]]
            length = np.maximum(np.linalg.norm(d, axis=1), 1e-3)[:, None]
            pull = d * length / k
            np.add.at(disp, edges[:, 0], -pull)
            np.add.at(disp, edges[:, 1], pull)
        disp += (0.5 - pos) * 0.02  # gravity keeps components together
        length = np.maximum(np.linalg.norm(disp, axis=1), 1e-9)[:, None]
        pos += disp / length * np.minimum(length, t)
        t *= 0.97
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    pos = (pos - lo) / np.maximum(hi - lo, 1e-9) * (size - 80) + 40
    return {k: (round(float(x), 1), round(float(y), 1)) for k, (x, y) in zip(ids, pos)}


def _ranges(result: Result) -> list[dict]:
    """The grounded spans of a document, one per distinct ``(start, end)``, with what they are."""
    out: dict[tuple[int, int], dict] = {}
    for item in result.items:
        for role, span in item.spans():
            if span.start is None:
                continue
            r = out.setdefault((span.start, span.end), {"start": span.start, "end": span.end, "type": span.label,
                                                        "what": []})
            r["what"].append(f"{role}: {span.label or '-'} ({span.status})" if role != "entity"
                             else f"{span.label or 'entity'} ({span.status})")
    return sorted(out.values(), key=lambda r: (r["start"], -r["end"]))


def _highlight(text: str, ranges: list[dict], colour) -> str:
    """``text`` as HTML with each range a ``<mark data-span=i>`` (ranges that cross are cut into pieces with
    the same ``data-span``)."""
    bounds = sorted({0, len(text)} | {r["start"] for r in ranges} | {r["end"] for r in ranges})
    parts = []
    for a, b in zip(bounds, bounds[1:]):
        piece = html.escape(text[a:b])
        covering = [(i, r) for i, r in enumerate(ranges) if r["start"] <= a and b <= r["end"]]
        for i, r in reversed(covering):
            title = html.escape("; ".join(r["what"]), quote=True)
            piece = (f'<mark data-span="{i}" data-type="{html.escape(r["type"], quote=True)}" title="{title}" '
                     f'style="background:{colour(r["type"])}">{piece}</mark>')
        parts.append(piece)
    return "".join(parts)


def _rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        for item in r.items:
            spans = list(item.spans())
            rows.append([str(r.id), type(item).__name__] + [f"{role}: {s.text}" for role, s in spans])
    return rows


def render_report(results: list[Result], model: GraphModel, resolution=None, title: Optional[str] = None) -> str:
    """The HTML report (see the module docstring)."""
    types = sorted({n.type for n in model.nodes.values() if n.type} |
                   {s.label for r in results for i in r.items for _, s in i.spans() if s.label})
    colours = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(types)}
    colour = lambda t: colours.get(t, "#eeeeee")  # noqa: E731
    pos = layout(model)
    degree = Counter()
    for e in model.edges.values():
        degree[e.source] += 1
        degree[e.target] += 1
    nodes = [{"id": n.id, "kind": n.kind, "name": n.name, "type": n.type, "aliases": n.props.get("aliases", []),
              "x": pos[n.id][0], "y": pos[n.id][1], "colour": colours.get(n.type, KIND_COLOURS.get(n.kind, "#999")),
              "degree": degree[n.id],
              "mentions": [[d, s.text, s.start, s.end, s.status] for d, s in model.mentions.get(n.id, [])]}
             for n in model.nodes.values()]
    edges = [{"s": e.source, "t": e.target, "type": e.type, "kind": e.kind} for e in model.edges.values()]
    merges = [m.as_dict() for m in resolution.merges] if resolution is not None else []
    data = {"nodes": nodes, "edges": edges, "types": types, "colours": colours}
    spans = 0
    docs_html = []
    for r in results:
        ranges = _ranges(r)
        spans += len(ranges)
        lost = [s for i in r.items for _, s in i.spans() if s.start is None]
        docs_html.append(
            f'<section class="doc" data-doc="{html.escape(str(r.id), quote=True)}"><h3>Document '
            f'{html.escape(str(r.id))} <small>({r.task}, {len(r.items)} items)</small></h3>'
            f'<p class="text">{_highlight(r.text, ranges, colour)}</p>'
            + (f'<p class="lost">Not found in the text: {html.escape(", ".join(s.text for s in lost))}</p>'
               if lost else "") + "</section>")
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in _rows(results))
    merge_rows = "".join(
        f"<tr><td>{html.escape(m['a'])}</td><td>{html.escape(m['b'])}</td><td>{html.escape(m['a_type'] or m['b_type'])}"
        f"</td><td>{m['stage']}</td><td>{m['rule']}</td><td>{html.escape(m['evidence'])}</td></tr>" for m in merges)
    legend = "".join(f'<label><input type="checkbox" class="typefilter" value="{html.escape(t, quote=True)}" checked>'
                     f'<span class="sw" style="background:{colours[t]}"></span>{html.escape(t)}</label>'
                     for t in types)
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/").replace("<!--", "<\\!--")
    return _PAGE.format(
        title=html.escape(title or f"InstructKGC report: {len(results)} documents"),
        summary=f"{len(results)} documents, {sum(len(r.items) for r in results)} items, {spans} highlighted spans, "
                f"{len(model.nodes)} graph nodes, {len(model.edges)} edges, {len(merges)} merges",
        spans=spans, docs="".join(docs_html), rows=rows, merges=merge_rows or '<tr><td colspan="6">no merges</td></tr>',
        legend=legend, data=payload, script=_SCRIPT)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>
body{{font:14px/1.5 system-ui,sans-serif;margin:0;color:#222}}
header{{padding:8px 16px;background:#f5f5f5;border-bottom:1px solid #ddd}}
main{{display:grid;grid-template-columns:minmax(300px,1fr) minmax(400px,1.2fr);gap:12px;padding:12px}}
mark{{padding:0 1px;border-radius:2px;color:inherit}} .doc{{border-bottom:1px solid #eee}} .lost{{color:#a00}}
#graph{{width:100%;height:640px;border:1px solid #ddd;background:#fff}}
.sw{{display:inline-block;width:10px;height:10px;margin:0 3px}}
#panel{{min-height:60px;border:1px solid #ddd;padding:6px;margin-top:6px}}
table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ddd;padding:2px 4px;vertical-align:top}} .dim{{opacity:.12}} .hidden{{display:none}}
text{{font-size:10px;pointer-events:none}} .node circle{{stroke:#333;stroke-width:.5px;cursor:pointer}}
</style></head><body>
<header><h2 style="margin:4px 0">{title}</h2><div id="summary">{summary}</div></header>
<main><div><h2>Documents</h2>{docs}</div>
<div><h2>Graph</h2><input id="search" placeholder="search names and aliases" size="30">
<span id="legend">{legend}</span>
<svg id="graph" viewBox="0 0 1000 1000" xmlns="http://www.w3.org/2000/svg"></svg>
<div id="panel">Click a node to see its mentions and aliases.</div>
<div id="status" data-highlights="{spans}"></div></div></main>
<section style="padding:12px"><h2>Items</h2><table id="items">{rows}</table>
<h2>Merge log</h2><table id="merges">
<tr><th>name</th><th>merged into</th><th>type</th><th>stage</th><th>rule</th><th>evidence</th></tr>
{merges}</table></section>
<script type="application/json" id="data">{data}</script>
<script>{script}</script></body></html>
"""

_SCRIPT = r"""
(function(){
const data = JSON.parse(document.getElementById('data').textContent);
const svg = document.getElementById('graph'), NS = 'http://www.w3.org/2000/svg';
const byId = {}; data.nodes.forEach(n => byId[n.id] = n);
const el = (tag, attrs) => { const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]); return e; };
const edgeLayer = el('g', {'class': 'edges'}), nodeLayer = el('g', {'class': 'nodes'});
svg.appendChild(edgeLayer); svg.appendChild(nodeLayer);
data.edges.forEach(e => { const a = byId[e.s], b = byId[e.t];
  const line = el('line', {x1: a.x, y1: a.y, x2: b.x, y2: b.y, stroke: e.kind === 'mentions' ? '#ddd' : '#777',
    'stroke-width': e.kind === 'mentions' ? .5 : 1.2, 'data-s': e.s, 'data-t': e.t});
  const t = el('title', {}); t.textContent = e.type; line.appendChild(t); edgeLayer.appendChild(line); });
data.nodes.forEach(n => {
  const g = el('g', {'class': 'node', 'data-id': n.id, 'data-type': n.type, 'data-kind': n.kind});
  g.appendChild(el('circle', {cx: n.x, cy: n.y, r: Math.min(4 + Math.sqrt(n.degree) * 2, 16), fill: n.colour}));
  const label = el('text', {x: n.x + 6, y: n.y + 3}); label.textContent = n.name; g.appendChild(label);
  g.addEventListener('click', () => show(n)); nodeLayer.appendChild(g); n.el = g; });
function esc(s) { const d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
function show(n) {
  const mentions = n.mentions.map(m => '<li>document ' + esc(m[0]) + ': "' + esc(m[1]) + '"' +
    (m[2] === null ? ' (not in the text)' : ' [' + m[2] + ', ' + m[3] + '), ' + m[4]) + '</li>').join('');
  document.getElementById('panel').innerHTML = '<b>' + esc(n.name) + '</b> (' + esc(n.kind) +
    (n.type ? ', ' + esc(n.type) : '') + ')' +
    (n.aliases.length ? '<br>aliases: ' + n.aliases.map(esc).join(', ') : '') +
    (mentions ? '<ul>' + mentions + '</ul>' : '');
  document.querySelectorAll('mark').forEach(m => m.style.outline = '');
}
function apply() {
  const q = document.getElementById('search').value.toLowerCase();
  const shown = new Set([...document.querySelectorAll('.typefilter')].filter(c => c.checked).map(c => c.value));
  data.nodes.forEach(n => {
    const hide = n.type && !shown.has(n.type);
    const hit = !q || n.name.toLowerCase().includes(q) || n.aliases.some(a => a.toLowerCase().includes(q));
    n.el.classList.toggle('hidden', hide); n.el.classList.toggle('dim', !hit); });
  edgeLayer.querySelectorAll('line').forEach(l => { const a = byId[l.dataset.s], b = byId[l.dataset.t];
    l.classList.toggle('hidden', a.el.classList.contains('hidden') || b.el.classList.contains('hidden')); });
}
document.getElementById('search').addEventListener('input', apply);
document.querySelectorAll('.typefilter').forEach(c => c.addEventListener('change', apply));
const status = document.getElementById('status');
status.dataset.nodes = nodeLayer.querySelectorAll('g.node').length;
status.dataset.marks = new Set([...document.querySelectorAll('mark[data-span]')].map(
  m => m.closest('.doc').dataset.doc + '#' + m.dataset.span)).size;
status.textContent = status.dataset.nodes + ' nodes drawn';
})();
"""
