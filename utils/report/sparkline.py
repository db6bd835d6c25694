"""The history sparkline of report.html: p(given) and p(suggested) per epoch of one sample as a small inline SVG
symbol (drawn once, used by its card and its table row), with the fitted epoch and the forgetting events."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping

import numpy as np

SPARK_W, SPARK_H = 120, 36  # sparkline size, px


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _is_missing(v: object) -> bool:
    return v is None or (isinstance(v, str) and v == "") or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _floats(v: object, n: int | None = None) -> np.ndarray:
    """A 1-D float array of a list / array, None as NaN; cut or NaN-padded to length `n` when given."""
    a = np.array([np.nan if x is None else float(x) for x in np.asarray(v if v is not None else [], object).ravel()])
    if n is None:
        return a
    out = np.full(n, np.nan)
    out[:min(n, len(a))] = a[:n]
    return out


def _polyline(xs: np.ndarray, ys: np.ndarray) -> str:
    """SVG path data through the points (px), a new subpath after every missing (NaN) value; a lone point becomes
    a dot (a 0.1 px stroke with round caps)."""
    segs: list[list[str]] = [[]]
    for x, y in zip(xs, ys):
        if math.isnan(y):
            segs.append([])
        else:
            segs[-1].append(f"{x:.1f} {y:.1f}")
    return "".join("M" + "L".join(p) + ("h.1" if len(p) == 1 else "") for p in segs if p)


def sparkline(index: int, h: Mapping[str, object]) -> tuple[str, str] | None:
    """(the `<symbol id="h-<index>">` drawing, a one-line summary) of one sample's training history, or None
    without epochs. Drawing: SPARK_W x SPARK_H px, x = epoch (first to last recorded), y = probability 0..1;
    p(given) solid, p(most probable other class) dashed, a green tick at the fitted epoch, red dots at forgetting
    events."""
    ep = _floats(h.get("epochs"))
    n = len(ep)
    if n == 0 or np.isnan(ep).all():
        return None
    pg, po = _floats(h.get("p_given"), n), _floats(h.get("p_other"), n)
    e0, e1 = float(np.nanmin(ep)), float(np.nanmax(ep))

    def sx(e: float) -> float:  # epoch -> px from the left
        return 2 + (float(e) - e0) / max(e1 - e0, 1.0) * (SPARK_W - 4)

    def sy(p: np.ndarray) -> np.ndarray:  # probabilities -> px from the top (NaN stays NaN)
        return SPARK_H - 2 - np.clip(p, 0.0, 1.0) * (SPARK_H - 4)

    ok = ~np.isnan(ep)
    xs = np.array([sx(e) for e in ep[ok]])
    f = h.get("fitted_epoch")
    fitted = -1 if _is_missing(f) else int(f)  # type: ignore[call-overload]
    forgot = [int(e) for e in _floats(h.get("forgetting")) if e0 <= e <= e1]  # NaN fails both
    parts = [f'<rect width="{SPARK_W}" height="{SPARK_H}" fill="#f6f7f9"/>',
             f'<path d="M0 {SPARK_H / 2:g}H{SPARK_W}" stroke="#dfe3ea" stroke-width=".7"/>']
    if fitted >= 0 and e0 <= fitted <= e1:
        parts.append(f'<path d="M{sx(fitted):.1f} 0V{SPARK_H}" stroke="#0b8a5f" stroke-width="1.2"/>')
    ygiven = sy(pg)
    for y, style in ((sy(po), 'stroke="#c25b00" stroke-width="1.1" stroke-dasharray="3 2"'),
                     (ygiven, 'stroke="#2b59c3" stroke-width="1.4"')):
        if d := _polyline(xs, y[ok]):
            parts.append(f'<path d="{d}" fill="none" stroke-linecap="round" {style}/>')
    for e in forgot:
        at = np.flatnonzero(ep == e)
        y = ygiven[at[0]] if len(at) and not math.isnan(ygiven[at[0]]) else SPARK_H - 3
        parts.append(f'<circle cx="{sx(e):.1f}" cy="{y:.1f}" r="2.2" fill="#d4161b"/>')
    return (f'<symbol id="h-{index}" viewBox="0 0 {SPARK_W} {SPARK_H}">{"".join(parts)}</symbol>',
            _history_text(ep, pg, po, fitted, forgot))


def _history_text(ep: np.ndarray, pg: np.ndarray, po: np.ndarray, fitted: int, forgot: list[int]) -> str:
    """One line: p(given) first -> last over the epochs, max p(other), fitted epoch, forgetting events."""
    span = f"epochs {int(np.nanmin(ep))}–{int(np.nanmax(ep))}"
    g = pg[~np.isnan(pg)]
    out = [f"p(given) {g[0]:.2f} → {g[-1]:.2f} over {span}" if len(g) else f"p(given) missing over {span}"]
    if (~np.isnan(po)).any():
        out.append(f"max p(other) {np.nanmax(po):.2f}")
    out.append(f"fitted from epoch {fitted}" if fitted >= 0 else "never fitted")
    k, s = len(forgot), "s" if len(forgot) != 1 else ""
    listed = ", ".join(map(str, forgot[:6])) + ("…" if k > 6 else "")
    out.append(f"{k} forgetting event{s}" + (f" (epoch{s} {listed})" if k else ""))
    return "; ".join(out)


def spark(index: int, sparks: dict[int, tuple[str, str]], extra: str = "") -> str:
    if index not in sparks:
        return ""
    return (f'<svg class="spark{extra}" viewBox="0 0 {SPARK_W} {SPARK_H}" role="img" aria-label="{_e(sparks[index][1])}">'
            f'<title>{_e(sparks[index][1])}</title><use href="#h-{index}"/></svg>')


def sprite(sparks: dict[int, tuple[str, str]]) -> str:
    if not sparks:
        return ""
    return f'<svg class="sprite" aria-hidden="true">{"".join(s for s, _ in sparks.values())}</svg>'


# ----------------------------------------------------------------------------- pieces
