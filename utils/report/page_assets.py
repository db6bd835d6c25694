"""The inline CSS and JavaScript of `report.html` (see `utils.report.html`): plain strings, no external resource.

The script reads the page's `<script type="application/json" id="report-data">` block: `{"columns": [[name,
"num"|"bool"|"str"], ...], "rows": [[value per column], ...]` (missing values null, infinities "inf"/"-inf"),
`"items": [[index, file, given class, suggested class, suggested prob, category], ...]` (one per row),
`"classes": [...], "run": {"name", "identity", "file"}, "bulk_category": str, "gallery_limit": int}`, and reorders /
hides the server-rendered table rows and gallery cards, which are in the same order as `rows`: row i is
`<tr data-i=i>`, card i is `<div class="card" data-i=i>`, and both hold a decision bar `<div class="dec" data-i=i>`.
Decisions live in a Map {sample index -> {d: keep|relabel|remove, label}}, mirrored to localStorage under
`memreport:<run identity>` as `{"version": 1, "run", "identity", "decisions": {index: {"decision", "label"}}}`.
"""

from __future__ import annotations

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
.banner { background: #fff3cd; color: #5c3c00; border-bottom: 2px solid #e0a800; padding: 10px 28px; font-weight: 600; }
html:not([data-ready]) .js-only, html:not([data-ready]) .dec { display: none; }
.controls { position: sticky; top: 0; z-index: 5; background: var(--bg); padding: 6px 0;
            border-bottom: 1px solid var(--line); }
.controls .bar { display: flex; flex-wrap: wrap; gap: 6px 16px; align-items: center; padding: 2px 0; }
.controls label { color: var(--muted); }
.controls select, .controls button, .controls input { font: inherit; padding: 3px 6px; border: 1px solid #c3c9d3;
                                                      border-radius: 4px; background: #fff; color: var(--fg); }
.controls button { cursor: pointer; }
.controls button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
.controls select { max-width: 18em; }
.controls input[type=number] { width: 5em; }
#counter, #dec-msg { font-weight: 600; }
.help { margin: 2px 0 0; font-size: 12px; color: var(--muted); }
kbd { font: 11px ui-monospace, monospace; border: 1px solid #c3c9d3; border-bottom-width: 2px; border-radius: 3px;
      padding: 0 4px; background: #fff; color: var(--fg); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(172px, 1fr)); gap: 10px; margin-top: 10px; }
.card { display: flex; flex-direction: column; align-items: center; gap: 3px; padding: 8px 6px 8px;
        background: var(--card); border: 1px solid var(--line); border-radius: 7px; text-align: center;
        scroll-margin: 170px 0 16px; }
.card, .tablewrap, #pairs, #figures { content-visibility: auto; contain-intrinsic-size: auto 330px; }  /* offscreen: no layout */
.tablewrap { contain-intrinsic-size: auto 70vh; }
.card > a { display: flex; flex-direction: column; align-items: center; gap: 3px; color: inherit; text-decoration: none; }
.card > a > span { display: block; }
.card:hover { border-color: var(--accent); box-shadow: 0 1px 4px rgba(0, 0, 0, .08); }
.card:focus, tbody tr:focus { outline: none; }
.card.cur { outline: 3px solid #f0a800; outline-offset: 3px; }
tbody tr.cur > td { background: #fff0c2; }
.card.d-keep { box-shadow: 0 0 0 3px #0b8a5f; }
.card.d-relabel { box-shadow: 0 0 0 3px #2b59c3; }
.card.d-remove { box-shadow: 0 0 0 3px #c0262d; opacity: .8; }
tr.d-keep > td:first-child { box-shadow: inset 5px 0 0 #0b8a5f; }
tr.d-relabel > td:first-child { box-shadow: inset 5px 0 0 #2b59c3; }
tr.d-remove > td:first-child { box-shadow: inset 5px 0 0 #c0262d; }
.dec { display: flex; flex-wrap: wrap; justify-content: center; gap: 3px; font-size: 12px; max-width: 176px; }
td .dec { max-width: none; flex-wrap: nowrap; justify-content: flex-start; }
.dec button, .dec select { font: inherit; padding: 1px 5px; border: 1px solid #c3c9d3; border-radius: 4px;
                           background: #fff; color: var(--fg); cursor: pointer; }
.dec select { max-width: 10em; }
.dec button[aria-pressed=true][data-d=keep] { background: #0b8a5f; border-color: #0b8a5f; color: #fff; }
.dec button[aria-pressed=true][data-d=relabel] { background: #2b59c3; border-color: #2b59c3; color: #fff; }
.dec button[aria-pressed=true][data-d=remove] { background: #c0262d; border-color: #c0262d; color: #fff; }
.dec .dstate { flex-basis: 100%; min-height: 1.3em; font-weight: 600; overflow-wrap: anywhere; }
td .dec .dstate { flex-basis: auto; min-width: 6em; max-width: 18em; overflow: hidden; text-overflow: ellipsis;
                  white-space: nowrap; }
.d-keep .dstate { color: #0b8a5f; } .d-relabel .dstate { color: #2b59c3; } .d-remove .dstate { color: #c0262d; }
.spark { width: 120px; height: 36px; flex: none; display: block; }
.spark.mini { width: 90px; height: 27px; }
.sprite { position: absolute; width: 0; height: 0; overflow: hidden; }
.key-g { color: #2b59c3; } .key-o { color: #c25b00; } .key-f { color: #0b8a5f; } .key-x { color: #d4161b; }
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
tbody tr { scroll-margin: 44px 0 8px; }
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
  for (const el of [...trs, ...cards]) if (el) el.tabIndex = -1;  // focusable by the j / k keys
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

  // ------------------------------------------------------------------ decisions (keep / relabel / remove)
  const items = data.items, CLASSES = data.classes, RUN = data.run, BULK = data.bulk_category;
  const KEY = "memreport:" + (RUN.identity || RUN.name || document.title);
  const KINDS = ["keep", "relabel", "remove"];
  const decided = new Map();  // sample index -> {d: "keep" | "relabel" | "remove", label: class name or null}
  const byIndex = new Map(items.map((it, i) => [it[0], i]));
  const bars = [];  // row position -> its decision bars (card and table row)
  for (const el of document.querySelectorAll(".dec[data-i]")) (bars[+el.dataset.i] ||= []).push(el);
  let foreign = {};  // stored decisions of samples not on this page: kept as they were
  let store = null;
  try {
    store = window.localStorage;
    store.setItem(KEY + ":probe", "1");
    store.removeItem(KEY + ":probe");
  } catch (e) {
    store = null;
    $("dec-store").textContent = "decisions are NOT saved (this browser blocks localStorage here): export before closing";
  }
  const msg = (t) => { $("dec-msg").textContent = t; };

  function save() {
    if (!store) return;
    const out = { ...foreign };
    for (const [k, v] of decided) out[k] = { decision: v.d, label: v.label };
    try {
      store.setItem(KEY, JSON.stringify({ version: 1, run: RUN.name, identity: RUN.identity, decisions: out }));
    } catch (e) {
      $("dec-store").textContent = `decisions could not be saved (${e.name}): export before closing`;
    }
  }

  function load() {
    if (!store) return;
    let saved = null;
    try { saved = JSON.parse(store.getItem(KEY) || "null"); } catch (e) { saved = null; }
    const ds = saved && typeof saved.decisions === "object" && saved.decisions ? saved.decisions : {};
    for (const [k, v] of Object.entries(ds)) {
      const i = byIndex.get(+k);
      if (i === undefined) { foreign[k] = v; continue; }
      if (!v || !KINDS.includes(v.decision) || (v.decision === "relabel" && !CLASSES.includes(v.label))) continue;
      decided.set(+k, { d: v.decision, label: v.decision === "relabel" ? v.label : null });
    }
  }

  function fill(sel) {  // the full class list, built when a select is first used (1000 classes x 400 selects is big)
    if (sel.dataset.full) return;
    const cur = sel.value;
    sel.replaceChildren(...CLASSES.map((c) => new Option(c, c)));
    sel.value = cur;
    sel.dataset.full = "1";
  }

  const suggestion = (i) => (items[i][3] === null ? items[i][2] : items[i][3]);

  function paint(i) {
    const v = decided.get(items[i][0]), d = v ? v.d : "";
    for (const el of [cards[i], trs[i]]) {
      if (!el) continue;
      for (const k of KINDS) el.classList.toggle("d-" + k, d === k);
    }
    for (const bar of bars[i] || []) {
      for (const b of bar.querySelectorAll("button[data-d]")) b.setAttribute("aria-pressed", String(b.dataset.d === d));
      const sel = bar.querySelector("select"), want = d === "relabel" ? v.label : suggestion(i);
      if (sel.value !== want) {  // the chosen class, else back to the suggestion
        if (!Array.from(sel.options).some((o) => o.value === want)) fill(sel);
        sel.value = want;
      }
      const out = bar.querySelector(".dstate");
      out.textContent = out.title = d === "relabel" ? `relabel \u2192 ${v.label}` : d;
    }
  }

  function count() {
    const n = { keep: 0, relabel: 0, remove: 0 };
    for (const v of decided.values()) n[v.d]++;
    const t = decided.size;
    $("dec-count").textContent = `${t} decision${t === 1 ? "" : "s"}: ${n.keep} keep, ${n.relabel} relabel, ${n.remove} remove`;
  }

  function decide(i, d, label) {  // d null clears
    if (d) decided.set(items[i][0], { d, label: d === "relabel" ? label : null });
    else decided.delete(items[i][0]);
    paint(i);
    count();
    save();
  }

  // current suspect (j / k): outlined card and highlighted row
  let cur = -1;
  function setCurrent(i, scroll) {
    for (const el of [cards[cur], trs[cur]]) if (el) el.classList.remove("cur");
    cur = i;
    for (const el of [cards[i], trs[i]]) if (el) el.classList.add("cur");
    if (!scroll) return;
    const mid = document.elementFromPoint(innerWidth / 2, innerHeight / 2);
    const inTable = !!(mid && mid.closest("#table")) || !cards[i] || cards[i].hidden;
    const el = inTable ? trs[i] : cards[i];
    el.scrollIntoView({ block: inTable ? "center" : "nearest" });
    el.focus({ preventScroll: true });
  }

  document.addEventListener("focusin", (e) => { if (e.target.matches(".dec select")) fill(e.target); });
  document.addEventListener("pointerdown", (e) => { const s = e.target.closest(".dec select"); if (s) fill(s); });
  document.addEventListener("change", (e) => {
    const s = e.target.closest(".dec select");
    if (s && s.value) decide(+s.closest(".dec").dataset.i, "relabel", s.value);
  });
  document.addEventListener("click", (e) => {
    const b = e.target.closest(".dec button[data-d]");
    if (b) {
      const bar = b.closest(".dec"), i = +bar.dataset.i, d = b.dataset.d, label = bar.querySelector("select").value;
      const v = decided.get(items[i][0]);
      const same = v && v.d === d && (d !== "relabel" || v.label === label);
      decide(i, same ? null : d, label);  // clicking the pressed button again clears
    }
    const el = e.target.closest(".card[data-i], #suspects tbody tr[data-i]");
    if (el) setCurrent(+el.dataset.i, false);
  });

  const KEYS = { "1": "keep", "2": "relabel", "3": "remove", "0": null, Backspace: null };
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || e.isComposing) return;
    if (t instanceof Element && (t.closest("input, select, textarea") || t.isContentEditable)) return;
    if (e.key === "j" || e.key === "k") {
      const vis = order.filter((i) => !trs[i].hidden);
      if (!vis.length) return;
      const p = vis.indexOf(cur), step = e.key === "j" ? 1 : -1;
      setCurrent(vis[p < 0 ? (step > 0 ? 0 : vis.length - 1) : Math.min(vis.length - 1, Math.max(0, p + step))], true);
    } else if (e.key in KEYS && cur >= 0 && !trs[cur].hidden) {
      decide(cur, KEYS[e.key], suggestion(cur));
    } else return;
    e.preventDefault();
  });

  $("bulk-go").addEventListener("click", () => {
    const p = parseFloat($("bulk-p").value);
    if (!(p >= 0 && p <= 1)) { msg("enter a probability between 0 and 1"); return; }
    let set = 0, left = 0;
    items.forEach((it, i) => {
      if (it[5] !== BULK || it[4] === null || it[4] < p || it[3] === null || it[3] === it[2]) return;
      if (decided.has(it[0])) { left++; return; }  // a decision taken by hand stays
      decided.set(it[0], { d: "relabel", label: it[3] });
      paint(i);
      set++;
    });
    count();
    save();
    msg(`accepted ${set} suggestion${set === 1 ? "" : "s"} (${BULK}, p \u2265 ${p})` +
        (left ? `; ${left} already decided, left as they were` : ""));
  });

  const quote = (v) => {
    const s = v === null || v === undefined ? "" : String(v);
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  function csv() {  // one line per decided sample, in rank order (the page's order)
    const lines = ["index,file,label,remove,decision,from_run,from_identity"];
    for (const it of items) {
      const v = decided.get(it[0]);
      if (!v) continue;
      const label = v.d === "relabel" ? v.label : it[2];
      lines.push([it[0], it[1], label, v.d === "remove" ? 1 : 0, v.d, RUN.name, RUN.identity].map(quote).join(","));
    }
    return lines.join("\n") + "\n";
  }
  $("dec-export").addEventListener("click", () => {
    const url = URL.createObjectURL(new Blob([csv()], { type: "text/csv;charset=utf-8" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = RUN.file;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    msg(`exported ${decided.size} decision${decided.size === 1 ? "" : "s"} to ${RUN.file}`);
  });
  window.memreport = { csv, decided, key: KEY };  // for tests and the console

  load();
  items.forEach((_, i) => paint(i));
  count();
  apply();
  document.documentElement.dataset.ready = "1";
})();
"""
