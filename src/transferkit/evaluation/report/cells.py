"""One value as the text of a table cell, the same way in ``report.md`` and ``report.html``."""

from __future__ import annotations

import html
import math


def is_number(value) -> bool:
    """A finite int or float (``True`` is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def cell(value) -> str:
    """A ranking cell or fact: floats to 4 significant digits, lists joined, ``None`` as ``-``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "; ".join(map(str, value))
    return "-" if value is None else str(value)


def num(value, digits: int = 4) -> str:
    """A number with ``digits`` decimals, or ``-``."""
    return f"{value:.{digits}f}" if is_number(value) else "-"


def count(value) -> str:
    """An int with thousands separators, or ``-``."""
    return f"{value:,}" if isinstance(value, int) else "-"


def esc(value) -> str:
    """``value`` as HTML text (quotes escaped too, so it can stand in an attribute)."""
    return html.escape(str(value), quote=True)
