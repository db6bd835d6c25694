"""The inline CSS and JavaScript of `report.html` (see `utils.report.html`): plain strings, no external resource.

The script reads the rows from the page's `<script type="application/json" id="report-data">` block
(`{"columns": [[name, "num"|"bool"|"str"], ...], "rows": [[value per column], ...], "gallery_limit": int}`,
missing values as null, infinities as "inf"/"-inf") and reorders / hides the server-rendered table rows and
gallery cards, which are in the same order as `rows`: row i is `<tr data-i=i>` and card i is `<a data-i=i>`.
"""

from __future__ import annotations

# Category badge colours (text, background), by position in the category list; "none" is always grey.
BADGE_COLOURS: tuple[tuple[str, str], ...] = (
    ("#a3211a", "#fde7e5"), ("#8a4b00", "#fff0d4"), ("#5b2a91", "#efe6fa"),
    ("#1f4fa3", "#e3ecfb"), ("#0b6e4f", "#dcf4ea"), ("#6b5d00", "#f8f3cf"),
)
NONE_COLOUR: tuple[str, str] = ("#4a5260", "#eceff3")

CSS = """
:root { --fg: #1d2330; --muted: #5d6677; --bg: #f5f6f8; --card: #fff; --line: #dde1e8; --accent: #2b59c3; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); background: var(--bg); }
header.top { background: var(--card); border-bottom: 1px solid var(--line); padding: 16px 28px 10px; }
header.top h1 { font-size: 22px; margin: 0 0 6px; }
header.top nav a { margin-right: 16px; color: var(--accent); text-decoration: none; }
header.top nav a:hover { text-decoration: underline; }
main { padding: 0 28px 48px; max-width: 1680px; margin: 0 auto; }
section { margin-top: 26px; }
h2 { font-size: 17px; margin: 0 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h2 small, .muted { color: var(--muted); font-weight: normal; }
.summary { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 8px; margin: 0; }
.summary div { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 7px 10px; }
.summary dt { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
.summary dd { margin: 2px 0 0; font-weight: 600; overflow-wrap: anywhere; }
.notes { color: var(--muted); margin: 10px 0 0; padding-left: 18px; }
.controls { position: sticky; top: 0; z-index: 5; background: var(--bg); display: flex; flex-wrap: wrap;
            gap: 6px 16px; align-items: center; padding: 8px 0; border-bottom: 1px solid var(--line); }
.controls label { color: var(--muted); }
.controls select, .controls button { font: inherit; padding: 3px 6px; border: 1px solid #c3c9d3; border-radius: 4px;
                                     background: #fff; color: var(--fg); }
.controls button { cursor: pointer; }
.controls select { max-width: 18em; }
#counter { font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(148px, 1fr)); gap: 10px; margin-top: 10px; }
.card { display: flex; flex-direction: column; align-items: center; gap: 3px; padding: 8px 6px 8px;
        background: var(--card); border: 1px solid var(--line); border-radius: 7px; color: inherit;
        text-decoration: none; text-align: center; }
.card:hover { border-color: var(--accent); box-shadow: 0 1px 4px rgba(0, 0, 0, .08); }
.thumb { width: 96px; height: 96px; background: #111 center / contain no-repeat; image-rendering: pixelated;
         border-radius: 3px; flex: none; }
.thumb.missing { background: repeating-linear-gradient(45deg, #ddd 0 6px, #eee 6px 12px); }
.mini { width: 30px; height: 30px; border-radius: 2px; }
.card .meta { font-size: 12px; color: var(--muted); }
.card .meta b { color: var(--fg); }
.labels { font-size: 13px; overflow-wrap: anywhere; overflow: hidden; display: -webkit-box; -webkit-box-orient: vertical;
          -webkit-line-clamp: 3; }
.labels .sugg { font-weight: 600; }
.badge { display: inline-block; color: #4a5260; background: #eceff3; font-size: 11px; line-height: 1.3;
         padding: 1px 7px; border-radius: 9px;
         white-space: nowrap; }
.tablewrap { max-height: 78vh; overflow: auto; border: 1px solid var(--line); border-radius: 6px;
             background: var(--card); margin-top: 10px; }
table { border-collapse: separate; border-spacing: 0; width: 100%; font-variant-numeric: tabular-nums; }
thead th { position: sticky; top: 0; z-index: 2; background: #eef1f6; border-bottom: 1px solid var(--line);
           padding: 0; text-align: left; vertical-align: bottom; }
thead th button { all: unset; box-sizing: border-box; cursor: pointer; display: flex; align-items: flex-end;
                  width: 100%; padding: 6px 4px 6px 8px; font-weight: 600; }
thead th.num button { justify-content: flex-end; }
thead th button:focus-visible { outline: 2px solid var(--accent); outline-offset: -2px; }
thead th .arrow { flex: none; width: 1em; text-align: center; color: var(--accent); }
thead th.plain { padding: 6px 8px; }
td { padding: 3px 8px; border-bottom: 1px solid #edf0f4; white-space: nowrap; vertical-align: middle; }
th.num, td.num { text-align: right; }
td.str { max-width: 28em; overflow: hidden; text-overflow: ellipsis; }
tbody tr:hover { background: #f3f6fc; }
tbody tr:target { background: #fff4cc; }
.empty { padding: 14px; color: var(--muted); }
.pairs { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 10px; }
.pair { background: var(--card); border: 1px solid var(--line); border-radius: 7px; padding: 8px; }
.pair .two { display: flex; gap: 10px; justify-content: center; }
.pair figure { margin: 0; text-align: center; font-size: 12px; }
.pair figcaption { margin-top: 3px; overflow-wrap: anywhere; max-width: 110px; }
.pair .dist { text-align: center; color: var(--muted); font-size: 12px; margin-top: 4px; }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 14px; }
.figs figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 7px; padding: 10px; }
.figs img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
.figs figcaption { color: var(--muted); font-size: 12px; margin-top: 6px; text-align: center; }
.note { color: var(--muted); font-style: italic; }
"""

JS = r"""
(() => {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const cols = data.columns, rows = data.rows, LIMIT = data.gallery_limit;
  const col = (name) => cols.findIndex((c) => c[0] === name);
  const G = col("given_class"), S = col("suggested_class"), C = col("category");
  const tbody = document.querySelector("#suspects tbody");
  const trs = [], cards = [];
  for (const tr of tbody.querySelectorAll("tr[data-i]")) trs[+tr.dataset.i] = tr;
  const gallery = document.getElementById("gallery-cards");
  for (const c of gallery.querySelectorAll(".card[data-i]")) cards[+c.dataset.i] = c;
  const $ = (id) => document.getElementById(id);
  const classSel = $("f-class"), modeSel = $("f-mode"), catSel = $("f-cat");
  const heads = Array.from(document.querySelectorAll("#suspects thead th[data-c]"));
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
  const initial = Math.max(0, col("rank"));
  let sortCol = initial, sortDir = 1, showAll = false;

  const value = (i, c) => {
    const v = rows[i][c];
    if (v === "inf") return Infinity;
    if (v === "-inf") return -Infinity;
    return v;
  };
  const missing = (v) => v === null || v === undefined || (typeof v === "number" && Number.isNaN(v));

  function compare(a, b) {
    const x = value(a, sortCol), y = value(b, sortCol);
    const mx = missing(x), my = missing(y);
    if (mx || my) return mx && my ? a - b : (mx ? 1 : -1);  // missing values last, in both directions
    const c = cols[sortCol][1] === "str" ? collator.compare(String(x), String(y)) : (x > y) - (x < y);
    return c !== 0 ? c * sortDir : a - b;
  }

  function matches(i) {
    const r = rows[i], cls = classSel.value, cat = catSel.value;
    if (cls !== "") {
      const g = r[G] === cls, s = r[S] === cls, mode = modeSel.value;
      if (!(mode === "given" ? g : mode === "suggested" ? s : g || s)) return false;
    }
    return cat === "" || r[C] === cat;
  }

  let order = rows.map((_, i) => i), orderKey = `${sortCol}:${sortDir}`;  // the page comes in rank order

  function apply() {
    const key = `${sortCol}:${sortDir}`, moved = key !== orderKey;  // a filter alone moves no node
    if (moved) { order = rows.map((_, i) => i).sort(compare); orderKey = key; }
    const tf = document.createDocumentFragment(), gf = document.createDocumentFragment();
    let shown = 0, inGallery = 0;
    for (const i of order) {
      const ok = matches(i);
      trs[i].hidden = !ok;
      if (moved) tf.appendChild(trs[i]);
      const card = cards[i];
      if (card) {
        const vis = ok && (showAll || inGallery < LIMIT);
        card.hidden = !vis;
        if (vis) inGallery++;
        if (moved) gf.appendChild(card);
      }
      if (ok) shown++;
    }
    if (moved) { tbody.appendChild(tf); gallery.appendChild(gf); }
    $("counter").textContent = `showing ${shown} of ${rows.length}`;
    $("table-empty").hidden = shown > 0;
    $("gallery-empty").hidden = shown > 0;
    $("gallery-count").textContent = inGallery < shown ? `first ${inGallery} of ${shown}` : `${shown}`;
    const more = $("gallery-more");
    more.hidden = shown <= LIMIT;
    more.textContent = showAll ? `show first ${LIMIT} only` : `show all ${shown} in the gallery`;
    const arrow = sortDir > 0 ? "\u25B2" : "\u25BC";
    for (const th of heads) {
      const on = +th.dataset.c === sortCol;
      th.setAttribute("aria-sort", on ? (sortDir > 0 ? "ascending" : "descending") : "none");
      th.querySelector(".arrow").textContent = on ? arrow : "";
    }
    $("sort-state").textContent = `sorted by ${cols[sortCol][0]} ${sortDir > 0 ? "ascending" : "descending"}`;
  }

  for (const th of heads) {
    th.querySelector("button").addEventListener("click", () => {
      const c = +th.dataset.c;
      sortDir = c === sortCol ? -sortDir : 1;
      sortCol = c;
      apply();
    });
  }
  for (const sel of [classSel, modeSel, catSel]) sel.addEventListener("change", apply);
  $("gallery-more").addEventListener("click", () => { showAll = !showAll; apply(); });
  $("f-reset").addEventListener("click", () => {
    classSel.value = ""; modeSel.value = "either"; catSel.value = "";
    sortCol = initial; sortDir = 1; showAll = false;
    apply();
  });
  apply();
  document.documentElement.dataset.ready = "1";
})();
"""
