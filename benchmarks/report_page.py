"""report.html with a full gallery: its size and the time headless Chromium takes to load and render it.

    python benchmarks/report_page.py [--n 200] [--epochs 30] [--repeats 3] [--out /tmp/report_page]

Builds pages of `n` cards (synthetic rows like tests/test_report_html.py: the catalogue's categories, 32x32 RGB
noise images as thumbnails (the worst case for PNG), a history of `epochs` epochs for every row) in three cases:
10 classes; 10 classes with a decision stored for every row (restored from localStorage and painted on load);
1000 classes (ImageNet: the relabel selects are filled only when used). Each page is opened `repeats` times in one
headless Chromium (tests/test_report_html.py's CDP driver) from about:blank; from the navigation timing of each
load: DOMContentLoaded end, load event end, and the first frame after load (two requestAnimationFrame), all in ms
from navigation start; medians. Target: < 5 MB and < 2 s. Writes benchmarks/results/report_page.csv
(utils.io.write_table). Not a test; needs `chromium` on the PATH.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_report_html import start_browser  # noqa: E402
from utils.io import write_table  # noqa: E402
from utils.report.html import thumbnail_uri, write_report_html  # noqa: E402
from utils.scores.catalogue import CATEGORIES  # noqa: E402

COLUMNS = ["rank", "index", "given_class", "suggested_class", "suggested_prob", "report_score", "curvature",
           "in_confidence", "fitted", "fitted_epoch", "category", "source"]
TIMING = """new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => {
  const nav = performance.getEntriesByType("navigation")[0];
  done({dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd, frame: performance.now()});
})))"""


def page_kwargs(tmp: Path, n: int, epochs: int, k: int, seed: int = 0) -> dict:
    """Keyword arguments of write_report_html: `n` rows over `k` classes, 32x32 RGB noise thumbnails (64 px, as
    the report writes them), an `epochs`-long history per row, no pair, no figure."""
    rng = np.random.default_rng(seed)
    classes = [f"class_{c:03d}" for c in range(k)]
    cats = [dataclasses.asdict(c) for c in CATEGORIES.values()]
    index = rng.permutation(50 * n)[:n]
    rows, history = [], {}
    for r, i in enumerate(index):
        given, sugg = rng.integers(k, size=2)
        fitted = int(rng.integers(-1, epochs))
        rows.append({"rank": r + 1, "index": int(i), "given_class": classes[given], "suggested_class": classes[sugg],
                     "suggested_prob": float(rng.random()), "report_score": float(n - r), "curvature": float(rng.random()),
                     "in_confidence": float(rng.random()), "fitted": fitted >= 0, "fitted_epoch": fitted,
                     "category": cats[rng.integers(len(cats))]["name"], "source": f"train/{classes[given]}/{i:05d}.png"})
        pg = np.clip(np.cumsum(rng.normal(0.03, 0.1, epochs)) + 0.1, 0, 1)
        history[int(i)] = {"epochs": list(range(1, epochs + 1)), "p_given": pg.tolist(),
                           "p_other": ((1 - pg) * rng.uniform(0.4, 1, epochs)).tolist(), "fitted_epoch": fitted,
                           "forgetting": sorted(rng.choice(epochs, rng.integers(0, 4), replace=False).tolist())}
    thumbs = {int(i): thumbnail_uri(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for i in index}
    return dict(title="Memorization report: bench", summary=[("run", "bench")], notes=[], columns=COLUMNS, rows=rows,
                thumbs=thumbs, classes=classes, categories=cats, pairs=[], figures={}, run_name="bench",
                run_identity=f"bench{k}", banner="Suggestions are in-sample (benchmark)", history=history)


def stored_decisions(rows: list[dict]) -> str:
    """localStorage value with a decision for every row (keep, relabel to the suggestion, remove in turn)."""
    kinds = ("keep", "relabel", "remove")
    ds = {str(r["index"]): {"decision": kinds[k % 3], "label": r["suggested_class"] if k % 3 == 1 else None}
          for k, r in enumerate(rows)}
    return json.dumps({"version": 1, "decisions": ds})


def measure(b, page: Path, repeats: int, key: str, stored: str | None) -> dict[str, float]:
    """Median ms from navigation start to DOMContentLoaded end, load end, the first frame after load."""
    b.open(page.as_uri())
    b.js(f"localStorage.clear(); {'' if stored is None else f'localStorage.setItem({json.dumps(key)}, {json.dumps(stored)})'}")
    runs = []
    for _ in range(repeats):
        b.page("Page.navigate", url="about:blank")
        b.wait_event("Page.loadEventFired")
        b.open(page.as_uri())
        runs.append(b.js(TIMING))
        if stored is not None:
            assert b.js("window.memreport.decided.size") == len(json.loads(stored)["decisions"])
    assert not b.errors(), b.errors()
    return {k: statistics.median(r[k] for r in runs) for k in ("dcl", "load", "frame")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="report_page_"))
    out.mkdir(parents=True, exist_ok=True)
    b = start_browser(out)
    results = []
    try:
        for case, k, decided in ((f"{a.n} cards, 10 classes", 10, False),
                                 (f"{a.n} cards, 10 classes, {a.n} stored decisions", 10, True),
                                 (f"{a.n} cards, 1000 classes", 1000, False)):
            kw = page_kwargs(out, a.n, a.epochs, k)
            page = write_report_html(out / f"report_{k}.html", **kw)
            t = measure(b, page, a.repeats, f"memreport:{kw['run_identity']}",
                        stored_decisions(kw["rows"]) if decided else None)
            results.append({"case": case, "cards": a.n, "epochs": a.epochs, "classes": k,
                            "size_mb": page.stat().st_size / 1e6, "dom_content_loaded_ms": t["dcl"],
                            "load_ms": t["load"], "first_frame_ms": t["frame"], "repeats": a.repeats})
            print(results[-1], flush=True)
    finally:
        b.close()
    print(f"\n{'case':<46} {'MB':>6} {'DOMContentLoaded ms':>20} {'load ms':>8} {'first frame ms':>15}")
    for r in results:
        print(f"{r['case']:<46} {r['size_mb']:>6.2f} {r['dom_content_loaded_ms']:>20.0f} {r['load_ms']:>8.0f} "
              f"{r['first_frame_ms']:>15.0f}")
    ok = all(r["size_mb"] < 5 and r["first_frame_ms"] < 2000 for r in results)
    print(f"target < 5 MB and < 2 s (first frame after load, median of {a.repeats}): {'met' if ok else 'MISSED'}")
    print(write_table(ROOT / "benchmarks/results/report_page", results, markdown=False)[0])


if __name__ == "__main__":
    main()
