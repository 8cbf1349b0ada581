"""A small SVG line chart writer (no plotting library needed): panels side by side, one line per series."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd")
PANEL_W, PANEL_H = 420, 300
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 60, 15, 40, 45


@dataclass
class Panel:
    """One chart: a title, axis labels and named series of (x, y) points."""

    title: str
    x_label: str
    y_label: str
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [step * i for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"


def _panel(p: Panel, ox: int) -> list[str]:
    pts = [pt for s in p.series.values() for pt in s]
    xs = nice_ticks(max((x for x, _ in pts), default=1.0))
    ys = nice_ticks(max((y for _, y in pts), default=1.0))
    w, h = PANEL_W - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B
    x0, y0 = ox + MARGIN_L, MARGIN_T + h

    def sx(x: float) -> float:
        return x0 + x / xs[-1] * w

    def sy(y: float) -> float:
        return y0 - y / ys[-1] * h

    out = [f'<text x="{ox + PANEL_W / 2}" y="20" text-anchor="middle" font-weight="bold">{escape(p.title)}</text>',
           f'<line x1="{x0}" y1="{y0}" x2="{x0 + w}" y2="{y0}" stroke="black"/>',
           f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{MARGIN_T}" stroke="black"/>']
    for t in xs:
        out.append(f'<text x="{sx(t):.1f}" y="{y0 + 15}" text-anchor="middle" font-size="11">{_fmt(t)}</text>')
    for t in ys:
        out.append(f'<line x1="{x0}" y1="{sy(t):.1f}" x2="{x0 + w}" y2="{sy(t):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 5}" y="{sy(t) + 4:.1f}" text-anchor="end" font-size="11">{_fmt(t)}</text>')
    out.append(f'<text x="{x0 + w / 2}" y="{PANEL_H - 8}" text-anchor="middle" font-size="12">'
               f'{escape(p.x_label)}</text>')
    out.append(f'<text transform="translate({ox + 14},{MARGIN_T + h / 2}) rotate(-90)" text-anchor="middle" '
               f'font-size="12">{escape(p.y_label)}</text>')
    for n, (name, points) in enumerate(p.series.items()):
        colour = COLOURS[n % len(COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in points]
        ly = MARGIN_T + 5 + 16 * n
        out.append(f'<rect x="{x0 + 10}" y="{ly}" width="12" height="3" fill="{colour}"/>')
        out.append(f'<text x="{x0 + 27}" y="{ly + 5}" font-size="12">{escape(name)}</text>')
    return out


def render(panels: list[Panel]) -> str:
    """The panels as one SVG document."""
    width = PANEL_W * len(panels)
    body = [line for i, p in enumerate(panels) for line in _panel(p, i * PANEL_W)]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PANEL_H}" '
            f'viewBox="0 0 {width} {PANEL_H}" font-family="sans-serif">\n'
            f'<rect width="{width}" height="{PANEL_H}" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")
