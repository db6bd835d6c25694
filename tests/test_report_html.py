"""report.html: self-contained and escaped (plain checks), and working in a real headless Chromium (the DOM after
its scripts ran: every row, a sort that reorders them, filters that hide rows, no console error).

The browser test drives Chromium over the Chrome DevTools Protocol (websocket-client). Where no Chromium is
installed it skips saying so, unless REQUIRE_CHROMIUM=1 (set by .ci/run, which installs Debian's chromium): then
it fails."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from utils.report.html import thumbnail_uri, write_report_html

EVIL = 'cat</script><script>window.pwned=1</script>&"x"'  # a class name from a hostile folder name
CLASSES = ["zero", "one", EVIL]
CATEGORIES = ["likely mislabeled", "conflicting duplicate", "atypical / memorized", "none"]
COLUMNS = ["rank", "index", "given_class", "suggested_class", "suggested_prob", "score", "curvature", "fitted",
           "category", "source"]
N = 50


def synthetic(tmp: Path, n: int = N, with_figure: bool = True) -> dict:
    """Keyword arguments of write_report_html: `n` ranked rows with random scores (some curvature NaN), 3 classes,
    4 categories (one unused), 8x8 digit thumbnails (grey, every third one tinted RGB), one duplicate pair, one small
    PNG figure and one missing figure."""
    from PIL import Image
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    digits = load_digits().images / 16.0
    index = rng.permutation(1000)[:n]
    curv = rng.random(n)
    curv[[3, 17, 31]] = np.nan
    rows = [{"rank": r + 1, "index": int(i), "given_class": CLASSES[rng.integers(3)],
             "suggested_class": CLASSES[rng.integers(3)], "suggested_prob": float(rng.random()),
             "score": float(-r + rng.normal(0, 0.1)), "curvature": float(curv[r]), "fitted": bool(rng.random() < 0.5),
             "category": CATEGORIES[rng.integers(3)], "source": f"train/{CLASSES[0]}/{i}.png"}
            for r, i in enumerate(index)]
    pair = {"a": int(index[0]), "b": 2000, "label_a": CLASSES[0], "label_b": EVIL, "distance": 0.0123}
    thumbs = {int(i): thumbnail_uri(digits[i % 1797] if k % 3 else digits[i % 1797][:, :, None] * [1.0, 0.6, 0.2], size=32)
              for k, i in enumerate([*index, 2000])}
    figures = {"missing figure": tmp / "nope.png"}
    if with_figure:
        Image.fromarray(rng.integers(0, 256, (60, 120, 3)).astype(np.uint8)).save(tmp / "fig.png")
        figures = {"timeline": tmp / "fig.png", **figures}
    return dict(title="Memorization report: synth", summary=[("run", "synth"), ("data", EVIL), ("test accuracy", "0.91")],
                notes=["ranked by cumulative loss; epochs used: 1–10"], columns=COLUMNS, rows=rows, thumbs=thumbs,
                classes=CLASSES, categories=CATEGORIES, pairs=[pair], figures=figures)


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
    assert "cat&lt;/script&gt;&lt;script&gt;window.pwned=1&lt;/script&gt;&amp;&quot;x&quot;" in page
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1))
    assert len(data["rows"]) == N and data["columns"][COLUMNS.index("curvature")] == ["curvature", "num"]
    assert data["rows"][3][COLUMNS.index("curvature")] is None  # NaN -> null (sorted last), shown as "–"
    assert data["columns"][COLUMNS.index("fitted")] == ["fitted", "bool"]
    assert page.count("<tr id=\"row-") == N and page.count('class="card ') == N


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

    def wait_event(self, method: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if hit := next((e for e in self.events if e.get("method") == method), None):
                return hit
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

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


@pytest.fixture
def browser(tmp_path):
    exe = _chromium()
    if exe is None:
        if os.environ.get("REQUIRE_CHROMIUM") == "1":
            pytest.fail("REQUIRE_CHROMIUM=1 but no chromium on PATH")
        pytest.skip("chromium not installed: apt-get install -y chromium")
    b = Browser(exe, tmp_path)
    try:
        yield b
    finally:
        b.close()


def _visible(b: Browser) -> list[int]:
    return b.js("Array.from(document.querySelectorAll('#suspects tbody tr:not([hidden])'), tr => +tr.dataset.index)")


def _gallery(b: Browser) -> list[int]:
    return b.js("Array.from(document.querySelectorAll('#gallery-cards .card:not([hidden])'),"
                " c => +c.getAttribute('href').slice(5))")


def _choose(b: Browser, select: str, value: str) -> None:
    b.js(f"(() => {{ const s = document.getElementById({json.dumps(select)}); s.value = {json.dumps(value)};"
         " s.dispatchEvent(new Event('change')); })()")


def test_report_in_headless_chromium(tmp_path, browser):
    t0 = time.monotonic()
    kw = synthetic(tmp_path)
    rows = kw["rows"]
    page = write_report_html(tmp_path / "report.html", **kw)
    b = browser
    for domain in ("Runtime", "Log", "Page"):
        b.page(f"{domain}.enable")
    b.page("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    b.page("Page.navigate", url=page.as_uri())
    b.wait_event("Page.loadEventFired")
    assert b.js("document.documentElement.dataset.ready") == "1"  # the script ran to its end

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
    cat = CATEGORIES[1]
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
    _choose(b, "f-cat", CATEGORIES[3])  # an unused category: nothing left, and the page says so
    assert _visible(b) == [] and b.js("document.getElementById('table-empty').hidden") is False
    b.js("document.getElementById('f-reset').click()")
    assert _visible(b) == by_rank

    size = b.page("Page.getLayoutMetrics")["cssContentSize"]
    shot = b.page("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                  clip={"x": 0, "y": 0, "width": 1280, "height": min(size["height"], 6000), "scale": 1})
    (tmp_path / "report_screenshot.png").write_bytes(__import__("base64").b64decode(shot["data"]))
    print(f"screenshot: {tmp_path / 'report_screenshot.png'}")
    assert b.errors() == []
    assert time.monotonic() - t0 < 30
