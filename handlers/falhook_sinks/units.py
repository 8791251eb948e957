"""Sizes as people read them, for messages, the console and progress lines."""

from __future__ import annotations


def size_text(size: int | float) -> str:
    """`512 B`, `10.5 KiB`, `1.0 GiB`: binary units, one decimal above bytes."""
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
