"""Line plots as inline SVG text: drawn here in Python, so the report needs no plotting library to view.

The data range maps onto the plot box exactly (no padding): x in [min, max] -> [LEFT, width - RIGHT],
y in [min, max] -> [height - BOTTOM, TOP] (linear, or linear in log10 y for a log plot). Ticks sit at
"nice" values (1, 2, 5 x 10^k) inside the range. A noisy series is drawn faint with its exponential moving
average over it (``ema``, TensorBoard's smoothing), taken in the axis's own scale (of log10 y on a log axis).
"""
from __future__ import annotations

import math
from html import escape

__all__ = ["line_plot", "nice_ticks", "wants_log", "ema"]

LEFT, RIGHT, TOP, BOTTOM = 58.0, 14.0, 30.0, 34.0  # margins of the plot box in px
SMOOTHING = 0.8  # the EMA's weight of the past: each point is the mean of the ones before it, weighted 0.8^age


def ema(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing: the n-th output is the mean of the first n
    values weighted weight^(n-1-k), so the line starts at the first value instead of rising from 0."""
    out, acc = [], 0.0
    for n, v in enumerate(values, start=1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight ** n))
    return out


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Multiples of the 1-2-5 step nearest to (hi - lo) / count that lie in [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / count
    base = 10.0 ** math.floor(math.log10(raw))
    step = min((m * base for m in (1.0, 2.0, 5.0, 10.0)), key=lambda s: abs(s - raw))
    first = math.ceil(lo / step - 1e-9)
    ticks = [k * step for k in range(first, first + count * 3) if k * step <= hi + step * 1e-9]
    return [0.0 if abs(t) < step * 1e-9 else t for t in ticks]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks in log10 space: whole decades, with 2x and 5x in between when the range spans few decades."""
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    for mantissas in ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0)):
        ticks = [d + math.log10(m) for d in decades for m in mantissas if lo - 1e-9 <= d + math.log10(m) <= hi + 1e-9]
        if len(ticks) >= 3:
            return ticks
    return ticks


def _span(lo: float, hi: float) -> tuple[float, float]:
    """A non-empty interval: a single value v becomes [v - 1, v + 1] (or +-|v| / 2)."""
    if hi > lo:
        return lo, hi
    pad = abs(lo) / 2 if lo != 0 else 1.0
    return lo - pad, hi + pad


def _label(v: float) -> str:
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:.4g}"


def wants_log(ys: list[float]) -> bool:
    """A log y axis when every value is positive and they span two decades or more."""
    finite = [y for y in ys if math.isfinite(y)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) >= 100.0


def line_plot(xs: list[float], ys: list[float], title: str, *, x_label: str = "step", y_label: str = "",
              width: int = 460, height: int = 230, log_y: bool | None = None, smooth: bool = False) -> str:
    """One series as an SVG <svg> element. Points with a non-finite y (or y <= 0 on a log axis) are left
    out and break the line; `log_y=None` picks a log axis by `wants_log`. `smooth`: the raw line faint and
    its ``ema`` over it (from three points on)."""
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys differ in length: {len(xs)} and {len(ys)}")
    log_y = wants_log(ys) if log_y is None else log_y
    keep = [math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y) for x, y in zip(xs, ys)]
    fx = [x for x, k in zip(xs, keep) if k]
    fy = [(math.log10(y) if log_y else y) for y, k in zip(ys, keep) if k]
    dropped = len(xs) - len(fx)
    head = (f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">')
    note = f" ({dropped} non-finite not drawn)" if dropped else ""
    last = f" \u2014 last {_label(ys[len(ys) - 1])}" if ys else ""
    parts = [head, f'<text class="title" x="{LEFT}" y="{TOP - 12}">{escape(title)}{escape(last)}{note}'
                   f'{" (log scale)" if log_y else ""}</text>']
    x0, x1, y0, y1 = LEFT, width - RIGHT, height - BOTTOM, TOP
    parts.append(f'<rect class="box" x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}"/>')
    if not fx:
        parts.append(f'<text class="empty" x="{(x0 + x1) / 2}" y="{(y0 + y1) / 2}">no finite values</text></svg>')
        return "".join(parts)
    xlo, xhi = _span(min(fx), max(fx))
    ylo, yhi = _span(min(fy), max(fy))
    px = lambda x: x0 + (x - xlo) / (xhi - xlo) * (x1 - x0)  # noqa: E731
    py = lambda y: y0 - (y - ylo) / (yhi - ylo) * (y0 - y1)  # noqa: E731
    for t in nice_ticks(xlo, xhi):
        parts.append(f'<line class="grid" x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{y1}" y2="{y0}"/>'
                     f'<text class="xtick" x="{px(t):.1f}" y="{y0 + 16}">{_label(t)}</text>')
    for t in (_log_ticks(ylo, yhi) if log_y else nice_ticks(ylo, yhi)):
        parts.append(f'<line class="grid" x1="{x0}" x2="{x1}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>'
                     f'<text class="ytick" x="{x0 - 6}" y="{py(t) + 4:.1f}">{_label(10 ** t if log_y else t)}</text>')
    parts.append(f'<text class="xlabel" x="{x1}" y="{height - 4}">{escape(x_label)}</text>')
    if y_label:
        parts.append(f'<text class="ylabel" transform="translate(12 {(y0 + y1) / 2:.1f}) rotate(-90)">'
                     f'{escape(y_label)}</text>')
    smooth = smooth and len(fx) >= 3
    curves = [("line raw" if smooth else "line", ys)]
    if smooth:  # the EMA of the kept points in the axis's own scale (of log10 y on a log axis: an arithmetic
        # mean of heavy-tailed values would run above nearly every point), at their places (a gap stays a gap)
        smoothed = iter(10 ** v if log_y else v for v in ema(fy))
        curves.append(("line smooth", [next(smoothed) if k else y for y, k in zip(ys, keep)]))
    for cls, values in curves:
        segment: list[str] = []
        for x, v, k in zip(xs, values, keep):
            if k:
                segment.append(f"{px(x):.2f},{py(math.log10(v) if log_y else v):.2f}")
            elif segment:
                parts.append(f'<polyline class="{cls}" points="{" ".join(segment)}"/>')
                segment = []
        if segment:
            parts.append(f'<polyline class="{cls}" points="{" ".join(segment)}"/>')
    if len(fx) == 1:
        parts.append(f'<circle class="dot" cx="{px(fx[0]):.2f}" cy="{py(fy[0]):.2f}" r="3"/>')
    parts.append("</svg>")
    return "".join(parts)
