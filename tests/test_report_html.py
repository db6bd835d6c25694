"""report.html: self-contained and escaped (plain checks), and working in a real headless Chromium (the DOM after
its scripts ran: every row, a sort that reorders them, filters that hide rows, decisions taken by click, select, key
and bulk action that survive a reload and export to the exact CSV, no console error).

The browser tests drive one Chromium (module fixture) over the Chrome DevTools Protocol (websocket-client). Where no
Chromium is installed they skip saying so, unless REQUIRE_CHROMIUM=1 (set by .ci/run, which installs Debian's
chromium): then they fail. `export_csv_via_browser` is the reusable piece: page + decisions -> the exported bytes."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from html import escape
from pathlib import Path

import numpy as np
import pytest

from utils.report.html import thumbnail_uri, write_report_html
from utils.scores.catalogue import CATEGORIES as CATALOGUE

EVIL = 'cat</script><script>window.pwned=1</script>&"x",y'  # a class name from a hostile folder name
EVIL_HTML = "cat&lt;/script&gt;&lt;script&gt;window.pwned=1&lt;/script&gt;&amp;&quot;x&quot;,y"
CLASSES = ["zero", "one", EVIL]
CATEGORIES = [dataclasses.asdict(c) for c in CATALOGUE.values()]
CAT_NAMES = [c["name"] for c in CATEGORIES]
MISLABELED = "likely mislabeled"
COLUMNS = ["rank", "index", "given_class", "suggested_class", "suggested_prob", "score", "curvature", "fitted",
           "category", "source"]
RUN_NAME, IDENTITY = 'synth "v2", seed 0', "0123abcd4567ef89"
EXPORT_NAME = "decisions_synth_v2_seed_0.csv"
BANNER = 'Suggestions are in-sample: <b>not</b> held out & "unchecked"'
N = 50
NO_HISTORY = 6  # rows r with r % 7 == NO_HISTORY have no history
SAME = 5  # row 5: likely mislabeled with p 0.97 but suggesting its own class (the bulk action skips it)


def history(rng: np.random.Generator, epochs: int = 10) -> dict:
    """One sample's synthetic training history: p(given) rising noisily, p(other) the rest of it, a few missing
    values, the fitted epoch (-1 for a third) and the epochs where p(given) fell below 0.5 again."""
    ep = list(range(1, epochs + 1))
    pg = np.clip(np.cumsum(rng.normal(0.08, 0.15, epochs)) + 0.1, 0, 1)
    po = (1 - pg) * rng.uniform(0.5, 1.0, epochs)
    p_given: list[float | None] = [float(v) for v in pg]
    p_other: list[float | None] = [float(v) for v in po]
    p_given[rng.integers(epochs)] = None
    p_other[rng.integers(epochs)] = float("nan")
    ok = pg > 0.5
    forgetting = [ep[e] for e in range(1, epochs) if ok[e - 1] and not ok[e]]
    fitted = next((ep[e] for e in range(epochs) if ok[e:].all()), -1) if rng.random() > 0.33 else -1
    return {"epochs": ep, "p_given": p_given, "p_other": p_other, "fitted_epoch": fitted, "forgetting": forgetting}


def synthetic(tmp: Path, n: int = N, with_figure: bool = True) -> dict:
    """Keyword arguments of write_report_html: `n` ranked rows with random scores (some curvature NaN), 3 classes,
    the catalogue's 5 categories (the first 3 used; a likely mislabeled row suggests another class with p >= 0.5,
    except row SAME), a history for most rows, 8x8 digit thumbnails (grey, every third one tinted RGB), one
    duplicate pair, one small PNG figure and one missing figure, a banner and a run name / identity."""
    from PIL import Image
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    digits = load_digits().images / 16.0
    index = rng.permutation(1000)[:n]
    curv = rng.random(n)
    curv[[3, 17, 31]] = np.nan
    rows = []
    for r, i in enumerate(index):
        given, cat = CLASSES[rng.integers(3)], CAT_NAMES[rng.integers(3)]
        sugg, prob = CLASSES[rng.integers(3)], float(rng.random())
        if cat == MISLABELED:
            sugg, prob = CLASSES[(CLASSES.index(given) + 1 + rng.integers(2)) % 3], float(rng.uniform(0.5, 1.0))
        if r == SAME:
            cat, sugg, prob = MISLABELED, given, 0.97
        rows.append({"rank": r + 1, "index": int(i), "given_class": given, "suggested_class": sugg,
                     "suggested_prob": prob, "score": float(-r + rng.normal(0, 0.1)), "curvature": float(curv[r]),
                     "fitted": bool(rng.random() < 0.5), "category": cat, "source": f"train/{given}/{i}.png"})
    pair = {"a": int(index[0]), "b": 2000, "label_a": CLASSES[0], "label_b": EVIL, "distance": 0.0123}
    thumbs = {int(i): thumbnail_uri(digits[i % 1797] if k % 3 else digits[i % 1797][:, :, None] * [1.0, 0.6, 0.2], size=32)
              for k, i in enumerate([*index, 2000])}
    figures = {"missing figure": tmp / "nope.png"}
    if with_figure:
        Image.fromarray(rng.integers(0, 256, (60, 120, 3)).astype(np.uint8)).save(tmp / "fig.png")
        figures = {"timeline": tmp / "fig.png", **figures}
    hist = {int(i): history(rng) for r, i in enumerate(index) if r % 7 != NO_HISTORY}
    return dict(title="Memorization report: synth", summary=[("run", "synth"), ("data", EVIL), ("test accuracy", "0.91")],
                notes=["ranked by cumulative loss; epochs used: 1–10"], columns=COLUMNS, rows=rows, thumbs=thumbs,
                classes=CLASSES, categories=CATEGORIES, pairs=[pair], figures=figures, run_name=RUN_NAME,
                run_identity=IDENTITY, banner=BANNER, history=hist)


def csv_quote(v: object) -> str:
    """RFC 4180: a field holding a comma, a double quote, CR or LF is wrapped in double quotes, its quotes doubled."""
    s = str(v)
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\r\n') else s


def expected_csv(rows: list[dict], decisions: dict[int, tuple[str, str | None]], run_name: str = RUN_NAME,
                 identity: str = IDENTITY) -> str:
    """The export the page must write for `decisions` {index: (keep | relabel | remove, class for relabel)}."""
    lines = ["index,file,label,remove,decision,from_run,from_identity"]
    for r in rows:  # rank order
        if r["index"] in decisions:
            d, label = decisions[r["index"]]
            fields = [r["index"], r["source"], label if d == "relabel" else r["given_class"], int(d == "remove"), d,
                      run_name, identity]
            lines.append(",".join(csv_quote(f) for f in fields))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plain checks
def test_thumbnail_uri_shapes_and_size():
    import base64
    import io

    from PIL import Image

    for img, want in [(np.zeros((28, 28)), (64, 64)), (np.ones((32, 16, 3)), (32, 64)),
                      (np.full((224, 224, 3), 200, np.uint8), (64, 64)), (np.zeros((5, 5, 1)), (64, 64))]:
        uri = thumbnail_uri(img)
        assert uri.startswith("data:image/png;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert im.size == want
    # nearest neighbour: an 2x2 checkerboard stays two colours, in blocks
    px = np.asarray(Image.open(io.BytesIO(base64.b64decode(thumbnail_uri(np.eye(2), size=4).split(",")[1]))))
    assert px.tolist() == [[255, 255, 0, 0]] * 2 + [[0, 0, 255, 255]] * 2
    with pytest.raises(ValueError, match="shape"):
        thumbnail_uri(np.zeros((3, 4, 4)))


def test_page_is_self_contained_and_escaped(tmp_path):
    kw = synthetic(tmp_path)
    page = write_report_html(tmp_path / "report.html", **kw).read_text()
    # nothing to fetch: every src / href / url() is a data URI or an in-page anchor; no http(s) anywhere in markup
    refs = re.findall(r'(?:src|href)="([^"]*)"', page) + re.findall(r'url\("?([^")]*)', page)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), [r[:40] for r in refs if not r.startswith("data")]
    assert not re.search(r"<(?:link|script|img|iframe)[^>]*\bhttps?://", page)
    assert "@import" not in page and "https://" not in page and "http://" not in page
    assert page.count("<img ") == 1 and 'src="data:image/png;base64,' in page  # the one readable figure
    assert "Figure “missing figure” was skipped" in page
    # the hostile class name is text everywhere: escaped in HTML, \u003c-escaped inside the JSON block
    assert "<script>window.pwned" not in page and page.count("<script") == 2
    assert EVIL_HTML in page
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1))
    assert len(data["rows"]) == N and data["columns"][COLUMNS.index("curvature")] == ["curvature", "num"]
    assert data["rows"][3][COLUMNS.index("curvature")] is None  # NaN -> null (sorted last), shown as "–"
    assert data["columns"][COLUMNS.index("fitted")] == ["fitted", "bool"]
    assert page.count("<tr id=\"row-") == N and page.count('class="card ') == N
    assert page.count('<div class="dec" data-i=') == 2 * N  # a decision bar on every card and row
    assert data["run"] == {"name": RUN_NAME, "identity": IDENTITY, "file": EXPORT_NAME}
    r = kw["rows"][0]
    assert data["items"][0] == [r["index"], r["source"], r["given_class"], r["suggested_class"], r["suggested_prob"],
                                r["category"]]


def test_banner_badges_and_history(tmp_path):
    kw = synthetic(tmp_path, with_figure=False)
    page = write_report_html(tmp_path / "report.html", **kw).read_text()
    # the banner: escaped, first thing in the body (above the header and its summary)
    banner = ('<div class="banner" role="alert">Suggestions are in-sample: &lt;b&gt;not&lt;/b&gt; held out &amp; '
              '&quot;unchecked&quot;</div>')
    assert page.index("<body>\n" + banner) < page.index('<header class="top">') < page.index('id="summary"')
    assert "<b>not</b>" not in page
    assert write_report_html(tmp_path / "r.html", **{**kw, "banner": ""}).read_text().count('class="banner"') == 0
    # badge colours and tooltips from the category dicts; the filter options carry the descriptions too
    for k, c in enumerate(CATEGORIES):
        assert f".badge.cat-{k}{{color:{c['colour']};background:{c['background']}}}" in page
        assert f'<option value="{escape(c["name"])}" title="{escape(c["description"])}">' in page
    assert f'<span class="badge cat-1" title="{CATEGORIES[1]["description"]}">{MISLABELED}</span>' in page
    # plain names still work (grey badges, no tooltip); a colour that is not one is refused
    old = write_report_html(tmp_path / "o.html", **{**kw, "categories": CAT_NAMES, "history": None}).read_text()
    assert ".badge.cat-1{color:#4a5260;background:#eceff3}" in old and "<svg" not in old
    bad = [{**CATEGORIES[0], "colour": "red;}body{display:none"}]
    with pytest.raises(ValueError, match="not a CSS colour"):
        write_report_html(tmp_path / "b.html", **{**kw, "categories": bad})
    # a sparkline symbol per row with history, used by its card and its row; none for the others
    for r, row in enumerate(kw["rows"]):
        i, h = row["index"], kw["history"].get(row["index"])
        assert page.count(f'<use href="#h-{i}"/>') == (0 if h is None else 2) and (h is None) == (r % 7 == NO_HISTORY)
        if h is None:
            continue
        sym = re.search(rf'<symbol id="h-{i}" viewBox="0 0 120 36">(.*?)</symbol>', page).group(1)
        assert sym.count("<circle") == len(h["forgetting"]) and sym.count('stroke-dasharray="3 2"') == 1
        assert ('stroke="#0b8a5f"' in sym) == (h["fitted_epoch"] >= 0)
        title = re.search(rf'<title>([^<]*)</title><use href="#h-{i}"/>', page).group(1)
        assert ("never fitted" in title) == (h["fitted_epoch"] < 0) and "forgetting event" in title
    sprite = re.search(r'<svg class="sprite" aria-hidden="true">(.*?)</svg>', page).group(1)
    assert "nan" not in sprite.lower() and sprite.count("<symbol") == len(kw["history"])


def test_bad_inputs_and_empty_report(tmp_path):
    kw = synthetic(tmp_path, with_figure=False)
    with pytest.raises(ValueError, match="not a base64 image data URI"):
        write_report_html(tmp_path / "r.html", **{**kw, "thumbs": {1: "https://example.org/x.png"}})
    with pytest.raises(ValueError, match="lack category"):
        write_report_html(tmp_path / "r.html", **{**kw, "columns": COLUMNS[:-2]})
    page = write_report_html(tmp_path / "r.html", **{**kw, "rows": [], "pairs": [], "figures": {}}).read_text()
    assert "None found" in page and "showing 0 of 0" in page and "No figures." in page


# ----------------------------------------------------------------------------- the browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


class Browser:
    """A headless Chromium started on about:blank, its one page attached over CDP (flat session)."""

    def __init__(self, exe: str, tmp: Path, timeout: float = 15.0):
        import websocket  # websocket-client (requirements.txt)

        self.events: list[dict] = []
        self._id = 0
        log = tmp / "chromium.log"
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={tmp / 'profile'}", "--no-sandbox",
             "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--mute-audio", "--remote-allow-origins=*", "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
        try:
            deadline, url = time.monotonic() + timeout, None
            while url is None:
                if m := re.search(r"DevTools listening on (ws://\S+)", log.read_text(errors="replace")):
                    url = m.group(1)
                elif self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chromium did not start: {log.read_text(errors='replace')[-2000:]}")
                else:
                    time.sleep(0.05)
            self.ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
            page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        except BaseException:
            self.close()
            raise

    def call(self, method: str, session: bool = False, **params: object) -> dict:
        """Send one CDP command and wait for its answer; events met meanwhile are kept in `events`."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            m = json.loads(self.ws.recv())
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def page(self, method: str, **params: object) -> dict:
        return self.call(method, session=True, **params)

    def wait_event(self, method: str, timeout: float = 10.0, where: dict | None = None) -> dict:
        """The first event `method` (whose params include `where`) seen so far or coming; it is consumed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for k, e in enumerate(self.events):
                if e.get("method") == method and all(e.get("params", {}).get(a) == v for a, v in (where or {}).items()):
                    return self.events.pop(k)
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def open(self, url: str, reload: bool = False) -> None:
        """Navigate to `url` (or reload) and wait for the load event and the page script's end (data-ready)."""
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.page("Page.reload") if reload else self.page("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")
        assert self.js("document.documentElement.dataset.ready") == "1"  # the script ran to its end

    def press(self, key: str) -> None:
        """One real key press (keyDown with its text, keyUp) on the focused element: a letter, digit or Backspace."""
        code = {"Backspace": ("Backspace", 8)}.get(key) or ((f"Key{key.upper()}" if key.isalpha() else f"Digit{key}"),
                                                           ord(key.upper()))
        text = {} if len(key) > 1 else {"text": key, "unmodifiedText": key}
        self.page("Input.dispatchKeyEvent", type="keyDown", key=key, code=code[0], windowsVirtualKeyCode=code[1], **text)
        self.page("Input.dispatchKeyEvent", type="keyUp", key=key, code=code[0], windowsVirtualKeyCode=code[1])

    def download(self, click: str, folder: Path, timeout: float = 10.0) -> Path:
        """Run the script `click` (which starts a download) and return the file it saved into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        self.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(folder), eventsEnabled=True)
        self.js(click)
        begin = self.wait_event("Browser.downloadWillBegin", timeout)["params"]
        self.wait_event("Browser.downloadProgress", timeout, where={"guid": begin["guid"], "state": "completed"})
        return folder / begin["suggestedFilename"]

    def js(self, expr: str) -> object:
        r = self.page("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error calls and error log entries seen so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:500])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            try:
                self.ws.close()
            except OSError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(5)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def start_browser(tmp: Path) -> Browser:
    """A Browser with Runtime, Log and Page events on, a focused 1280x900 window; skips (or fails under
    REQUIRE_CHROMIUM=1) without Chromium."""
    exe = _chromium()
    if exe is None:
        if os.environ.get("REQUIRE_CHROMIUM") == "1":
            pytest.fail("REQUIRE_CHROMIUM=1 but no chromium on PATH")
        pytest.skip("chromium not installed: apt-get install -y chromium")
    b = Browser(exe, tmp)
    for domain in ("Runtime", "Log", "Page"):
        b.page(f"{domain}.enable")
    b.page("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    b.page("Emulation.setFocusEmulationEnabled", enabled=True)  # focus events as in a focused window
    return b


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = start_browser(tmp_path_factory.mktemp("chromium"))
    try:
        yield b
    finally:
        b.close()


def _visible(b: Browser) -> list[int]:
    return b.js("Array.from(document.querySelectorAll('#suspects tbody tr:not([hidden])'), tr => +tr.dataset.index)")


def _gallery(b: Browser) -> list[int]:
    return b.js("Array.from(document.querySelectorAll('#gallery-cards .card:not([hidden])'),"
                " c => +c.dataset.index)")


def _choose(b: Browser, select: str, value: str) -> None:
    b.js(f"(() => {{ const s = document.getElementById({json.dumps(select)}); s.value = {json.dumps(value)};"
         " s.dispatchEvent(new Event('change')); })()")


def test_report_in_headless_chromium(tmp_path, browser):
    t0 = time.monotonic()
    kw = synthetic(tmp_path)
    rows = kw["rows"]
    page = write_report_html(tmp_path / "report.html", **kw)
    b = browser
    b.open(page.as_uri())

    by_rank = [r["index"] for r in rows]
    assert b.js("document.querySelectorAll('#suspects tbody tr').length") == N
    assert _visible(b) == by_rank and _gallery(b) == by_rank
    assert b.js("document.getElementById('counter').textContent") == f"showing {N} of {N}"
    assert b.js("window.pwned") is None and b.js("document.scripts.length") == 2
    assert b.js(f"Array.from(document.getElementById('f-class').options, o => o.value).includes({json.dumps(EVIL)})")
    assert b.js("performance.getEntriesByType('resource').length") == 0  # nothing fetched
    assert b.js("Array.from(document.images).every(i => i.complete && i.naturalWidth === 120)")

    # sort by a numeric column with missing values: ascending, NaN last; a second click reverses, NaN still last
    def click(name: str) -> None:
        b.js(f"document.querySelector('#suspects th[data-c=\"{COLUMNS.index(name)}\"] button').click()")

    def order(sign: float) -> list[int]:  # NaN last in both directions, ties (the NaNs) in rank order
        key = lambda r: (math.isnan(r["curvature"]), 0 if math.isnan(r["curvature"]) else sign * r["curvature"])  # noqa: E731
        return [r["index"] for r in sorted(rows, key=key)]

    click("curvature")
    asc = order(1)
    assert _visible(b) == asc != by_rank and _gallery(b) == asc
    click("curvature")
    desc = order(-1)
    assert _visible(b) == desc and desc[-3:] == asc[-3:]
    assert b.js("document.querySelector('#suspects th[aria-sort=\"descending\"]').dataset.c") == str(COLUMNS.index("curvature"))

    # filter by category: exactly its rows stay, in the current order; then by class (given OR suggested)
    cat = CAT_NAMES[1]
    _choose(b, "f-cat", cat)
    want = [i for i in desc if next(r for r in rows if r["index"] == i)["category"] == cat]
    assert 0 < len(want) < N and _visible(b) == want and _gallery(b) == want
    assert b.js("document.getElementById('counter').textContent") == f"showing {len(want)} of {N}"
    _choose(b, "f-cat", "")
    _choose(b, "f-class", EVIL)
    either = [i for i in desc if EVIL in (next(r for r in rows if r["index"] == i)["given_class"],
                                          next(r for r in rows if r["index"] == i)["suggested_class"])]
    assert 0 < len(either) < N and _visible(b) == either
    _choose(b, "f-mode", "given")
    assert sorted(_visible(b)) == sorted(r["index"] for r in rows if r["given_class"] == EVIL)
    _choose(b, "f-cat", CAT_NAMES[3])  # an unused category: nothing left, and the page says so
    assert _visible(b) == [] and b.js("document.getElementById('table-empty').hidden") is False
    b.js("document.getElementById('f-reset').click()")
    assert _visible(b) == by_rank

    size = b.page("Page.getLayoutMetrics")["cssContentSize"]
    shot = b.page("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                  clip={"x": 0, "y": 0, "width": 1280, "height": min(size["height"], 6000), "scale": 1})
    (tmp_path / "report_screenshot.png").write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {tmp_path / 'report_screenshot.png'}")
    assert b.errors() == []
    assert time.monotonic() - t0 < 30


# ----------------------------------------------------------------------------- decisions in the browser
def _bar(where: str, index: int) -> str:
    """JS expression: the decision bar of sample `index` on its gallery card or its table row."""
    return f"document.querySelector('{'.card[data-index' if where == 'card' else 'tr[data-index'}=\"{index}\"] .dec')"


def _act(b: Browser, action: Sequence[object], where: str = "row") -> None:
    """One decision through the page's own controls: ("keep" | "remove" | "clear", index), ("relabel", index,
    class name: chosen in the bar's select, which gets the focus first like a user's click) or ("bulk", p)."""
    kind = action[0]
    if kind == "bulk":
        b.js(f"document.getElementById('bulk-p').value = {json.dumps(str(action[1]))};"
             " document.getElementById('bulk-go').click()")
    elif kind == "relabel":
        b.js(f"(() => {{ const s = {_bar(where, int(action[1]))}.querySelector('select'); s.focus();"  # type: ignore[call-overload]
             f" s.value = {json.dumps(action[2])}; s.dispatchEvent(new Event('change', {{bubbles: true}})); s.blur(); }})()")
    elif kind == "clear":
        b.js(f"{_bar(where, int(action[1]))}.querySelector('button[aria-pressed=true]')?.click()")  # type: ignore[call-overload]
    elif kind in ("keep", "remove"):
        b.js(f"{_bar(where, int(action[1]))}.querySelector('button[data-d={kind}]').click()")  # type: ignore[call-overload]
    else:
        raise ValueError(f"unknown action {action!r}")


def export_csv_via_browser(html_path: Path, actions: Sequence[Sequence[object]], tmp: Path,
                           browser: Browser | None = None) -> bytes:
    """The bytes of the CSV that the page at `html_path` exports after `actions` (see `_act`: e.g.
    [("keep", 12), ("relabel", 40, "dog"), ("remove", 7), ("bulk", 0.9)]), taken in headless Chromium through the
    page's buttons, selects and bulk action, starting from no decision (its localStorage entry is dropped first).
    Uses `browser` or starts (and closes) one; skips without Chromium like the tests here."""
    b = browser or start_browser(tmp)
    try:
        b.open(html_path.as_uri())
        b.js("localStorage.removeItem(window.memreport.key)")
        b.open(html_path.as_uri(), reload=True)
        for a in actions:
            _act(b, a)
        path = b.download("document.getElementById('dec-export').click()", tmp / f"download_{time.monotonic_ns()}")
        return path.read_bytes()
    finally:
        if browser is None:
            b.close()


def _state(b: Browser, index: int) -> list[object]:
    """[card classes d-*, row classes d-*, the two state texts, the two selects' values, pressed buttons]."""
    return b.js(f"""(() => {{
      const els = [document.querySelector('.card[data-index="{index}"]'), document.querySelector('tr[data-index="{index}"]')];
      const cls = els.map(e => Array.from(e.classList).filter(c => c.startsWith('d-')).join(' '));
      const bars = els.map(e => e.querySelector('.dec'));
      return [...cls, ...bars.map(x => x.querySelector('.dstate').textContent), ...bars.map(x => x.querySelector('select').value),
              bars.map(x => Array.from(x.querySelectorAll('button[aria-pressed=true]'), y => y.dataset.d).join()).join('|')];
    }})()""")


def _want_state(d: str | None, label: str | None, sugg: str) -> list[object]:
    text = "" if d is None else f"relabel → {label}" if d == "relabel" else d
    cls = "" if d is None else f"d-{d}"
    sel = label if d == "relabel" else sugg
    return [cls, cls, text, text, sel, sel, "|" if d is None else f"{d}|{d}"]


def test_decisions_in_headless_chromium(tmp_path, browser):
    """Click, select, key and bulk decisions; the same state on card and row; back after a reload (localStorage);
    the export's exact bytes; the page still working without localStorage."""
    t0 = time.monotonic()
    kw = synthetic(tmp_path)
    rows, b = kw["rows"], browser
    pos = {r["index"]: k for k, r in enumerate(rows)}
    page = write_report_html(tmp_path / "report.html", **kw)
    b.open(page.as_uri())
    b.js("localStorage.clear()")
    b.open(page.as_uri(), reload=True)
    counter = "document.getElementById('dec-count').textContent"
    assert b.js(counter) == "0 decisions: 0 keep, 0 relabel, 0 remove"
    assert b.js("document.querySelectorAll('.d-keep, .d-relabel, .d-remove').length") == 0

    want: dict[int, tuple[str, str | None]] = {}
    a = rows[0]
    relabel = next(r for r in rows[1:] if r["suggested_class"] != EVIL)  # to the hostile class, not its suggestion
    c, d = [r for r in rows[1:] if r is not relabel][:2]
    _act(b, ("keep", a["index"]), where="card")
    want[a["index"]] = ("keep", None)
    assert _state(b, a["index"]) == _want_state("keep", None, a["suggested_class"])
    assert b.js("document.querySelectorAll(`tr[data-index] .dec select`)[1].options.length") == 1  # filled lazily
    _act(b, ("relabel", relabel["index"], EVIL), where="row")
    want[relabel["index"]] = ("relabel", EVIL)
    assert _state(b, relabel["index"]) == _want_state("relabel", EVIL, relabel["suggested_class"])
    _act(b, ("remove", c["index"]), where="card")
    _act(b, ("remove", c["index"]), where="row")  # the pressed button again: cleared on both
    assert _state(b, c["index"]) == _want_state(None, None, c["suggested_class"])
    _act(b, ("remove", c["index"]), where="row")
    want[c["index"]] = ("remove", None)
    assert b.js(counter) == "3 decisions: 1 keep, 1 relabel, 1 remove"

    # keys: click a card (it becomes the current one), j moves to the next suspect (focus + outline), 2 relabels it
    # to its suggestion; keys typed into a form field do nothing
    nxt = next(k for k in range(pos[d["index"]] + 1, N)
               if rows[k]["suggested_class"] != rows[k]["given_class"]
               and {rows[k]["index"], rows[k - 1]["index"]}.isdisjoint(want))
    b.js(f"document.querySelectorAll('.card')[{pos[d['index']]}].click()")
    for _ in range(nxt - pos[d["index"]]):
        b.press("j")
    e = rows[nxt]
    assert b.js("document.activeElement.dataset.index") == str(e["index"])
    assert b.js(f"document.querySelector('.card[data-index=\"{e['index']}\"]').classList.contains('cur')")
    b.press("2")
    want[e["index"]] = ("relabel", e["suggested_class"])
    assert _state(b, e["index"]) == _want_state("relabel", e["suggested_class"], e["suggested_class"])
    b.press("k")
    b.press("3")
    b.press("Backspace")  # removed, then cleared
    assert _state(b, rows[nxt - 1]["index"])[0] == "" and b.js(counter).startswith("4 decisions")
    b.js("document.getElementById('f-class').focus()")
    b.press("1")
    assert b.js(counter) == "4 decisions: 1 keep, 2 relabel, 1 remove"
    b.js("document.activeElement.blur()")

    # bulk: every likely mislabeled row with p >= 0.8 that suggests another class and has no decision yet
    bulk = [r for r in rows if r["category"] == MISLABELED and r["suggested_prob"] >= 0.8
            and r["suggested_class"] != r["given_class"]]
    fresh = [r for r in bulk if r["index"] not in want]
    assert len(fresh) >= 3 and rows[SAME] not in bulk and rows[SAME]["suggested_prob"] >= 0.8
    _act(b, ("bulk", 0.8))
    want.update({r["index"]: ("relabel", r["suggested_class"]) for r in fresh})
    held = len(bulk) - len(fresh)
    assert b.js("document.getElementById('dec-msg').textContent") == (
        f"accepted {len(fresh)} suggestions ({MISLABELED}, p ≥ 0.8)" + (f"; {held} already decided, left as they were"
                                                                        if held else ""))
    n = {k: sum(v[0] == k for v in want.values()) for k in ("keep", "relabel", "remove")}
    summary = f"{len(want)} decisions: {n['keep']} keep, {n['relabel']} relabel, {n['remove']} remove"
    assert b.js(counter) == summary

    # a reload brings every decision back from localStorage, on cards and rows alike
    b.open(page.as_uri(), reload=True)
    assert b.js(counter) == summary
    for r in rows:
        assert _state(b, r["index"]) == _want_state(*want.get(r["index"], (None, None)), r["suggested_class"])
    stored = json.loads(b.js(f"localStorage.getItem('memreport:{IDENTITY}')"))
    assert stored["identity"] == IDENTITY and len(stored["decisions"]) == len(want)

    # export: the exact bytes, the hostile class name quoted (RFC 4180), and what a CSV reader makes of them
    got = b.download("document.getElementById('dec-export').click()", tmp_path / "downloads")
    assert got.name == EXPORT_NAME
    raw = got.read_bytes()
    assert raw == expected_csv(rows, want).encode("utf-8") and not raw.startswith(b"\xef\xbb\xbf")
    line = (f'{relabel["index"]},{csv_quote(relabel["source"])},"cat</script><script>window.pwned=1</script>&""x"",y",'
            '0,relabel,"synth ""v2"", seed 0",0123abcd4567ef89\n')
    assert line.encode() in raw and raw.startswith(b"index,file,label,remove,decision,from_run,from_identity\n")
    parsed = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    assert [int(p["index"]) for p in parsed] == [r["index"] for r in rows if r["index"] in want]
    for p in parsed:
        dec, label = want[int(p["index"])]
        r = rows[pos[int(p["index"])]]
        assert (p["decision"], p["label"], p["remove"], p["file"]) == (
            dec, label if dec == "relabel" else r["given_class"], "1" if dec == "remove" else "0", r["source"])
        assert (p["from_run"], p["from_identity"]) == (RUN_NAME, IDENTITY)

    # the reusable helper: fresh state, a few actions, the same format
    few = export_csv_via_browser(page, [("keep", a["index"]), ("relabel", c["index"], EVIL), ("remove", d["index"])],
                                 tmp_path, browser=b)
    assert few.decode() == expected_csv(rows, {a["index"]: ("keep", None), c["index"]: ("relabel", EVIL),
                                               d["index"]: ("remove", None)})

    size = b.page("Page.getLayoutMetrics")["cssContentSize"]
    shot = b.page("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                  clip={"x": 0, "y": 0, "width": 1280, "height": min(size["height"], 2400), "scale": 1})
    (tmp_path / "decisions_screenshot.png").write_bytes(base64.b64decode(shot["data"]))

    # without localStorage (file:// in some browsers) the page still works and says decisions are not kept
    script = b.page("Page.addScriptToEvaluateOnNewDocument", source="Object.defineProperty(window, 'localStorage', "
                    "{get() { throw new DOMException('blocked', 'SecurityError'); }});")["identifier"]
    try:
        b.open(page.as_uri(), reload=True)
        assert b.js(counter) == "0 decisions: 0 keep, 0 relabel, 0 remove"
        _act(b, ("keep", a["index"]))
        assert b.js(counter) == "1 decision: 1 keep, 0 relabel, 0 remove"
        assert "NOT saved" in b.js("document.getElementById('dec-store').textContent")
    finally:
        b.page("Page.removeScriptToEvaluateOnNewDocument", identifier=script)
    assert b.errors() == []
    assert time.monotonic() - t0 < 30


# ----------------------------------------------------------------------------- the loop: decide, export, retrain
def test_decisions_exported_from_a_real_report_train_a_digits_run(tmp_path, browser):
    """A tiny noisy digits run, its holdout stage and report; decisions clicked in the page and exported; a new run
    trained on exactly those bytes (data.labels + data.exclude) relabels and removes what was decided, and its
    report names the run it was corrected from."""
    from utils.holdout.stage import run_holdout
    from utils.report.build import make_report
    from utils.runs import open_run
    from utils.train import train

    from .conftest import tiny_cfg
    from .test_analysis import write_scores

    cfg = tiny_cfg(tmp_path, "noise.kind=symmetric", "noise.rate=0.2", "train.epochs=20", "report.top=30",
                   "holdout.method=mlp", "run=orig")
    train(cfg)
    write_scores(cfg, np.random.default_rng(0).random(300))
    run_holdout(cfg, progress=False)
    res = make_report(cfg, progress=False)
    t = res["table"]
    a, b = int(t["index"][0]), int(t["index"][1])
    new = "7" if t["given_class"][0] != "7" else "3"
    data = export_csv_via_browser(res["out_dir"] / "report.html", [("relabel", a, new), ("remove", b)], tmp_path,
                                  browser)
    lines = data.decode().splitlines()
    assert lines[0] == "index,file,label,remove,decision,from_run,from_identity" and len(lines) == 3
    assert lines[1].startswith(f"{a},digits:train:") and f",{new},0,relabel,orig," in lines[1]
    export = tmp_path / "decisions.csv"
    export.write_bytes(data)
    fixed = tiny_cfg(tmp_path, "noise.kind=none", "noise.rate=0", "train.epochs=2", f"data.labels={export}",
                     f"data.exclude={export}", "run=fixed")
    train(fixed)
    rec, orig = open_run(fixed).record, open_run(cfg).record
    assert rec["corrected_from"] == "orig" and rec["labels_changed_from_run"] == 1 and rec["excluded"] == 1
    want = orig["given_labels"].numpy().copy()
    want[a] = int(new)
    np.testing.assert_array_equal(rec["given_labels"].numpy(), np.delete(want, b))  # the rest: orig's noisy labels
    write_scores(fixed, np.random.default_rng(1).random(299))
    notes = make_report(fixed, progress=False, html=False)["notes"]
    assert any("corrected from run orig (1 labels changed, 1 samples removed" in n for n in notes)
