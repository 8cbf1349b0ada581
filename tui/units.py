"""How numbers look in the TUI: rates, bytes, durations."""

from __future__ import annotations

BARS = "▁▂▃▄▅▆▇█"


def per_second(value: float) -> str:
    """12.3/s (empty for zero, so idle edges stay quiet)."""
    if value <= 0:
        return "·"
    return f"{value:.0f}/s" if value >= 100 else f"{value:.1f}/s"


def size(value: float) -> str:
    """Bytes with a binary unit: 512 B, 8.7 KiB, 12 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def rate(value: float) -> str:
    """A per-second rate in a column headed '/s': 25.5 ('·' for zero)."""
    if value <= 0:
        return "·"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def compact_size(value: float) -> str:
    """Bytes in at most 6 characters: 512, 12.8K, 3.1M ('·' for zero)."""
    if value <= 0:
        return "·"
    for unit in ("", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "" or value >= 100 else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"


def bytes_per_second(value: float) -> str:
    """8.7 KiB/s ('·' for zero)."""
    return "·" if value <= 0 else size(value) + "/s"


def millis(value: float | None) -> str:
    """A latency in ms, '-' when unknown."""
    return "-" if value is None else f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


def span(seconds: float) -> str:
    """A time span the way a person reads it: 45s, 12m 5s, 11h 59m, 2d 3h; negative spans say 'ago'."""
    if seconds < 0:
        return span(-seconds) + " ago"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def bars(values: list[float], width: int, top: float | None = None) -> str:
    """The last `width` values as a text sparkline, scaled to `top` (default: their own maximum)."""
    tail = values[-width:] if width > 0 else []
    top = max(tail, default=0.0) if top is None else top
    if top <= 0:
        return " " * (width - len(tail)) + "▁" * len(tail)
    return " " * (width - len(tail)) + "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))]
                                               for v in tail)
