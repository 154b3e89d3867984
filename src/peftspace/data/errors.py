"""The one error type of `peftspace.data`."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or unobtainable data, raised before any training starts.

    The message says where (file, 1-based row as a person counts lines in that file, column) and
    what would have been valid.
    """


def where(path, row: int | None = None, column: str | None = None) -> str:
    """'FILE, row N, column "C"' — the location prefix every row-level message starts with."""
    parts = [str(path)]
    if row is not None:
        parts.append(f"row {row}")
    if column is not None:
        parts.append(f"column {column!r}")
    return ", ".join(parts)
