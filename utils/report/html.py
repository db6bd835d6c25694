"""`report.html`: the memorization report as one self-contained static page.

Everything is inline: the CSS and script (`utils.report.page_assets`), the thumbnails (PNG data URIs, each stored
once as a CSS class and used by the gallery, the table and the duplicate pairs), the history sparklines (one SVG
`<symbol>` per sample, drawn by the card and the row with `<use>`) and the figures (base64 PNG). The page loads
nothing, needs no server and works opened from disk (file://) or as a mail attachment. Every text is escaped (class
names come from folder names). Without JavaScript the page still shows everything in rank order; with it, the table
sorts by any column and filters by class and category, the gallery follows it, and every suspect takes a decision
(keep / relabel / remove) that is kept in the browser's localStorage and exported as a CSV (docs/report.md).
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io import write_text
from .page_assets import CSS, JS
from .sparkline import _e, _is_missing
from .sparkline import spark as _spark
from .sparkline import sparkline as _sparkline
from .sparkline import sprite as _sprite

GALLERY_LIMIT = 200  # cards shown before "show all" (the table always holds every row)
BULK_CATEGORY = "likely mislabeled"  # the category whose suggestions the bulk action accepts
GREY = ("#4a5260", "#eceff3")  # badge colours (text, background) of a category given as a plain name
_DATA_URI = re.compile(r"data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/]*={0,2}")
_COLOUR = re.compile(r"#[0-9a-fA-F]{3,8}|[a-zA-Z]{3,20}")
_REQUIRED = ("rank", "index", "given_class", "suggested_class", "suggested_prob", "category")


def thumbnail_uri(img: np.ndarray, size: int = 64) -> str:
    """PNG data URI of one image: (H, W) grey or (H, W, 3) RGB ((H, W, 1) too), floats in [0, 1] (clipped; NaN as
    0) or integers in [0, 255]; resized to `size` px on the long side, with nearest neighbour when enlarging (the
    pixels stay visible) and a box filter when shrinking (an ImageNet image)."""
    from PIL import Image

    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)) or 0 in a.shape:
        raise ValueError(f"thumbnail_uri: expected an (H, W) or (H, W, 3) image, got shape {a.shape}")
    if a.dtype.kind == "f":
        a = np.round(np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0) * 255)
    elif a.dtype.kind not in "biu":
        raise ValueError(f"thumbnail_uri: expected a float or integer image, got dtype {a.dtype}")
    pil = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    h, w = a.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new != (w, h):
        pil = pil.resize(new, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BOX)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_report_html(path: Path, *, title: str, summary: list[tuple[str, str]], notes: list[str],
                      columns: list[str], rows: list[dict[str, object]], thumbs: dict[int, str],
                      classes: list[str], categories: Sequence[Mapping[str, str] | str],
                      pairs: list[dict[str, object]], figures: dict[str, Path], run_name: str = "",
                      run_identity: str = "", banner: str = "",
                      history: Mapping[int, Mapping[str, object]] | None = None) -> Path:
    """Write the report page to `path` (atomically) and return it.

    `rows` are the top-N suspects in rank order, each with every key of `columns` (among them `rank`, `index`,
    `given_class`, `suggested_class`, `suggested_prob`, `category`) and `source` (the sample's file or
    `<dataset>:train:<i>`; the export's `file`, "" when absent); `thumbs` maps every shown index (rows and pair
    members) to a `thumbnail_uri`; `categories` are `utils.scores.catalogue.Category` dicts ({"name", "short",
    "colour", "background", "description"}) or plain names (grey badges); `pairs` are {"a", "b", "label_a",
    "label_b", "distance"}; `figures` maps a caption to a PNG file (a missing or unreadable file is skipped with a
    note on the page). `run_name` / `run_identity` name the exported decisions and key them in localStorage
    (`memreport:<run_identity>`); a non-empty `banner` is a warning shown above everything. `history` maps a row's
    index to {"epochs", "p_given", "p_other" (per epoch, None / NaN = missing), "fitted_epoch" (-1 = never),
    "forgetting" (epochs of correct -> incorrect transitions)}: a sparkline on its card and row."""
    missing = [c for c in _REQUIRED if c not in columns]
    if missing:
        raise ValueError(f"write_report_html: columns lack {', '.join(missing)}")
    for k, uri in thumbs.items():
        if not _DATA_URI.fullmatch(uri):
            raise ValueError(f"write_report_html: thumbnail of index {k} is not a base64 image data URI")
    cats = _categories(categories)
    sparks: dict[int, tuple[str, str]] = {}
    for idx in (int(r["index"]) for r in rows):  # type: ignore[call-overload]
        if history and idx in history and (s := _sparkline(idx, history[idx])):
            sparks[idx] = s
    types = [_column_type(c, [r[c] for r in rows]) for c in columns]
    data = {"columns": [[c, t] for c, t in zip(columns, types)],
            "rows": [[_json_value(r[c], t) for c, t in zip(columns, types)] for r in rows],
            "items": [_item(r) for r in rows], "classes": [str(c) for c in classes],
            "run": {"name": run_name, "identity": run_identity, "file": _export_name(run_name)},
            "bulk_category": BULK_CATEGORY, "gallery_limit": GALLERY_LIMIT}
    body = [f'<div class="banner" role="alert">{_e(banner)}</div>' if banner else "",
            _header(title, summary, notes, len(rows), len(pairs), len(figures)),
            _controls(rows, classes, cats, run_identity or run_name or title),
            _gallery(rows, thumbs, cats, sparks),
            _table(columns, types, rows, thumbs, cats, sparks),
            _pairs(pairs, thumbs),
            _figures(figures),
            "</main>",
            _sprite(sparks)]
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request
        f"<title>{_e(title)}</title>",
        f"<style>{CSS}{_badge_css(cats)}</style>",
        f"<style>{_thumb_css(thumbs)}</style>",
        "</head>", "<body>", *[b for b in body if b],
        f'<script type="application/json" id="report-data">{_script_json(data)}</script>',
        f"<script>{JS}</script>",
        "</body>", "</html>", ""])
    return write_text(path, page)


# ----------------------------------------------------------------------------- values
def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _column_type(name: str, values: list[object]) -> str:
    """"num" (all present values numbers), "bool" (all booleans) or "str"; category and class columns are "str"."""
    if name in ("given_class", "suggested_class", "category"):
        return "str"
    present = [v for v in values if not _is_missing(v)]
    if all(_is_number(v) for v in present):
        return "num"
    if all(isinstance(v, (bool, np.bool_)) for v in present):
        return "bool"
    return "str"


def _json_value(v: object, kind: str) -> object:
    """The value the script sorts by: null when missing, "inf"/"-inf" for infinities (JSON has neither)."""
    if _is_missing(v):
        return None
    if kind == "num":
        f = float(v)  # type: ignore[arg-type]
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return int(f) if isinstance(v, (int, np.integer)) else f
    if kind == "bool":
        return bool(v)
    return str(v)


def _item(r: Mapping[str, object]) -> list[object]:
    """What a decision needs of a row: [index, file, given class, suggested class (null), its probability (null),
    category]."""
    prob = r["suggested_prob"]
    p = None if _is_missing(prob) or not math.isfinite(float(prob)) else float(prob)  # type: ignore[arg-type]
    sugg = r["suggested_class"]
    return [int(r["index"]), "" if _is_missing(r.get("source")) else str(r["source"]),  # type: ignore[call-overload]
            str(r["given_class"]), None if _is_missing(sugg) else str(sugg), p, str(r["category"])]


def _export_name(run_name: str) -> str:
    """decisions_<run_name>.csv, characters other than letters, digits and ._=+- replaced by _."""
    safe = re.sub(r"[^A-Za-z0-9._=+-]+", "_", run_name).strip("._")
    return f"decisions_{safe}.csv" if safe else "decisions.csv"


def _text(v: object) -> str:
    """A cell as shown: 4 significant digits, "–" for missing values, yes/no for booleans."""
    if _is_missing(v):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "∞" if v == math.inf else "−∞" if v == -math.inf else f"{float(v):.4g}"
    return str(v)


def _prob(v: object) -> str:
    return "–" if _is_missing(v) else f"{float(v):.2f}"  # type: ignore[arg-type]


def _script_json(data: object) -> str:
    """JSON that cannot end its <script> element early (no raw <, >, &)."""
    s = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ----------------------------------------------------------------------------- categories
def _categories(categories: Sequence[Mapping[str, str] | str]) -> list[dict[str, str]]:
    """Category dicts with every key; a plain name becomes a grey one without description. Colours must be
    `#rgb`-style hex or a CSS colour name (they go into the style sheet)."""
    out = []
    for c in categories:
        d = {"name": "", "short": "", "colour": GREY[0], "background": GREY[1], "description": ""}
        d.update({"name": c} if isinstance(c, str) else {k: str(v) for k, v in c.items()})
        for k in ("colour", "background"):
            if not _COLOUR.fullmatch(d[k]):
                raise ValueError(f"write_report_html: category {d['name']!r} has {k} {d[k]!r}, not a CSS colour")
        out.append(d)
    return out


def _cat_pos(cat: object, cats: list[dict[str, str]]) -> int:
    return next((k for k, c in enumerate(cats) if c["name"] == cat), -1)


def _badge_css(cats: list[dict[str, str]]) -> str:
    return "\n".join(f".badge.cat-{k}{{color:{c['colour']};background:{c['background']}}} "
                     f".card.cat-{k}{{border-top:3px solid {c['colour']}}}" for k, c in enumerate(cats))


def _badge(cat: object, cats: list[dict[str, str]]) -> str:
    k = _cat_pos(cat, cats)
    tip = f' title="{_e(cats[k]["description"])}"' if k >= 0 and cats[k]["description"] else ""
    return f'<span class="badge cat-{k}"{tip}>{_e(cat)}</span>'


# ----------------------------------------------------------------------------- sparklines
def _thumb_css(thumbs: dict[int, str]) -> str:
    return "\n".join(f'.th-{int(k)}{{background-image:url("{uri}")}}' for k, uri in thumbs.items())


def _thumb(index: object, thumbs: dict[int, str], extra: str = "") -> str:
    i = int(index)  # type: ignore[call-overload]
    cls = f"th-{i}" if i in thumbs else "missing"
    label = f"sample {i}" if i in thumbs else f"sample {i} (no image)"
    return f'<div class="thumb {cls}{extra}" role="img" aria-label="{label}" title="{label}"></div>'


def _decide(i: int, r: Mapping[str, object]) -> str:
    """The decision bar of row i (card and table alike): keep / relabel to [class] / remove and the state."""
    sugg = _e(r["given_class"] if _is_missing(r["suggested_class"]) else r["suggested_class"])
    return (f'<div class="dec" data-i="{i}"><button type="button" data-d="keep" title="keep the label (1)">keep</button>'
            '<button type="button" data-d="relabel" title="relabel to the class chosen (2: to the suggestion)">'
            f'relabel</button><button type="button" data-d="remove" title="remove from training (3)">remove</button>'
            f'<select aria-label="relabel to"><option value="{sugg}">{sugg}</option></select>'
            '<output class="dstate"></output></div>')


def _header(title: str, summary: list[tuple[str, str]], notes: list[str], n: int, n_pairs: int, n_figs: int) -> str:
    items = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in summary)
    note = f'<ul class="notes">{"".join(f"<li>{_e(s)}</li>" for s in notes)}</ul>' if notes else ""
    return (f'<header class="top"><h1>{_e(title)}</h1><nav><a href="#gallery">Gallery ({n})</a>'
            f'<a href="#table">Table</a><a href="#pairs">Duplicate pairs ({n_pairs})</a>'
            f'<a href="#figures">Figures ({n_figs})</a></nav></header>\n'
            f'<main><section id="summary"><dl class="summary">{items}</dl>{note}</section>')


def _controls(rows: list[dict[str, object]], classes: list[str], cats: list[dict[str, str]], key: str) -> str:
    counts = Counter(str(r["category"]) for r in rows)
    cls = "".join(f'<option value="{_e(c)}">{_e(c)}</option>' for c in classes)
    opts = "".join(f'<option value="{_e(c["name"])}" title="{_e(c["description"])}">{_e(c["name"])} '
                   f'({counts.get(c["name"], 0)})</option>' for c in cats)
    return ('<div class="controls" id="controls"><div class="bar">'
            f'<label>class <select id="f-class"><option value="">all classes</option>{cls}</select></label>'
            '<label>as <select id="f-mode"><option value="either">given or suggested</option>'
            '<option value="given">given label</option><option value="suggested">suggested label</option>'
            '</select></label>'
            f'<label>category <select id="f-cat"><option value="">all categories</option>{opts}</select></label>'
            '<button type="button" id="f-reset">reset</button>'
            f'<span id="counter">showing {len(rows)} of {len(rows)}</span>'
            '<span class="muted" id="sort-state">sorted by rank ascending</span></div>'
            '<div class="bar js-only"><b id="dec-count">0 decisions: 0 keep, 0 relabel, 0 remove</b>'
            f'<label>accept the suggestions of all <i>{_e(BULK_CATEGORY)}</i> with p ≥ '
            '<input type="number" id="bulk-p" min="0" max="1" step="0.01" value="0.9"></label>'
            '<button type="button" id="bulk-go">accept</button>'
            '<button type="button" id="dec-export" class="primary">export decisions (CSV)</button>'
            '<output id="dec-msg"></output></div>'
            '<p class="help js-only">keys: <kbd>j</kbd>/<kbd>k</kbd> next/previous suspect · <kbd>1</kbd> keep · '
            '<kbd>2</kbd> relabel to the suggestion · <kbd>3</kbd> remove · <kbd>0</kbd> or <kbd>Backspace</kbd> '
            'clear (a pressed button clicked again clears too) · <span id="dec-store">decisions are kept in this '
            f'browser (localStorage <code>memreport:{_e(key)}</code>)</span></p></div>')


def _gallery(rows: list[dict[str, object]], thumbs: dict[int, str], cats: list[dict[str, str]],
             sparks: dict[int, tuple[str, str]]) -> str:
    cards = []
    for i, r in enumerate(rows):
        idx = int(r["index"])  # type: ignore[call-overload]
        hidden = " hidden" if i >= GALLERY_LIMIT else ""
        given, sugg = _e(r["given_class"]), _e(r["suggested_class"])
        cards.append(
            f'<div class="card cat-{_cat_pos(r["category"], cats)}" data-i="{i}" data-index="{idx}"{hidden}>'
            f'<a href="#row-{idx}">{_thumb(idx, thumbs)}'
            f'<span class="meta"><b>#{_e(r["rank"])}</b> · index {idx}</span>'
            f'<span class="labels" title="{given} → {sugg}">{given} → <span class="sugg">{sugg}</span> '
            f'({_prob(r["suggested_prob"])})</span></a>'
            f'{_badge(r["category"], cats)}{_spark(idx, sparks)}{_decide(i, r)}</div>')
    count = f"first {GALLERY_LIMIT} of {len(rows)}" if len(rows) > GALLERY_LIMIT else str(len(rows))
    return ('<section id="gallery"><h2>Top suspects <small>(<span id="gallery-count">'
            f'{count}</span>; image, given → suggested label (its probability), rank, category; history: '
            '<span class="key-g">p(given)</span>, <span class="key-o">p(other)</span> per epoch, '
            '<span class="key-f">fitted epoch</span>, <span class="key-x">forgetting</span>; '
            'follows the table\'s sort and filter; click an image for its row)</small></h2>'
            f'<div class="cards" id="gallery-cards">{"".join(cards)}</div>'
            '<p class="empty" id="gallery-empty" hidden>No suspect matches these filters.</p>'
            f'<button type="button" id="gallery-more"{"" if len(rows) > GALLERY_LIMIT else " hidden"}>'
            f"show all {len(rows)} in the gallery</button></section>")


def _table(columns: list[str], types: list[str], rows: list[dict[str, object]], thumbs: dict[int, str],
           cats: list[dict[str, str]], sparks: dict[int, tuple[str, str]]) -> str:
    head = ['<th class="plain">image</th><th class="plain js-only">decision</th>',
            '<th class="plain">history</th>' if sparks else ""]
    for c, (name, t) in enumerate(zip(columns, types)):
        sort = ' aria-sort="ascending"' if name == "rank" else ""
        arrow = "▲" if name == "rank" else ""
        head.append(f'<th class="{t}" data-c="{c}"{sort}><button type="button" title="sort by {_e(name)}">'
                    f'{_e(name).replace("_", "_<wbr>")}<span class="arrow">{arrow}</span></button></th>')
    body = []
    for i, r in enumerate(rows):
        idx = int(r["index"])  # type: ignore[call-overload]
        cells = [f"<td>{_thumb(idx, thumbs, ' mini')}</td><td class=\"js-only\">{_decide(i, r)}</td>",
                 f"<td>{_spark(idx, sparks, ' mini')}</td>" if sparks else ""]
        for name, t in zip(columns, types):
            v = r[name]
            cells.append(f'<td class="{t}">{_badge(v, cats)}</td>' if name == "category"
                         else f'<td class="{t}" title="{_e(v)}">{_e(_text(v))}</td>' if t == "str"
                         else f'<td class="{t}">{_e(_text(v))}</td>')
        body.append(f'<tr id="row-{idx}" data-i="{i}" data-index="{idx}">{"".join(cells)}</tr>')
    return ('<section id="table"><h2>Table <small>(click a column header to sort, again to reverse; '
            'missing values (–) sort last)</small></h2>'
            f'<div class="tablewrap"><table id="suspects"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>'
            f'<p class="empty" id="table-empty"{"" if not rows else " hidden"}>No suspect matches these filters.</p>'
            '</div></section>')


def _pairs(pairs: list[dict[str, object]], thumbs: dict[int, str]) -> str:
    if not pairs:
        return ('<section id="pairs"><h2>Conflicting duplicate pairs</h2>'
                '<p class="note">None found: no two near-identical training images carry different labels.</p></section>')
    items = []
    for p in pairs:
        sides = "".join(f'<figure>{_thumb(p[k], thumbs)}<figcaption>index {_e(p[k])}<br><b>{_e(p[lab])}</b>'
                        '</figcaption></figure>' for k, lab in (("a", "label_a"), ("b", "label_b")))
        items.append(f'<div class="pair"><div class="two">{sides}</div>'
                     f'<div class="dist">distance {_e(_text(p["distance"]))}</div></div>')
    return (f'<section id="pairs"><h2>Conflicting duplicate pairs <small>({len(pairs)}: near-identical images '
            f'with different labels)</small></h2><div class="pairs">{"".join(items)}</div></section>')


def _figures(figures: dict[str, Path]) -> str:
    items, skipped = [], []
    for name, p in figures.items():
        try:
            raw = Path(p).read_bytes()
        except OSError:
            skipped.append(f'<p class="note">Figure “{_e(name)}” was skipped: {_e(p)} could not be read.</p>')
            continue
        mime = {".jpg": "jpeg", ".jpeg": "jpeg", ".svg": "svg+xml"}.get(Path(p).suffix.lower(), "png")
        uri = f"data:image/{mime};base64," + base64.b64encode(raw).decode("ascii")
        items.append(f'<figure><img src="{uri}" alt="{_e(name)}"><figcaption>{_e(name)}</figcaption></figure>')
    inner = f'<div class="figs">{"".join(items)}</div>' if items else ('<p class="note">No figures.</p>'
                                                                     if not skipped else "")
    return f'<section id="figures"><h2>Figures</h2>{inner}{"".join(skipped)}</section>'
