"""The one form texts are compared in: ingest de-duplicates by it, the validate stage checks duplicates and
split overlap by it, and the transfer set and the causal-LM corpus exclude by it.

A pure function with no imports beyond the standard library, so every stage can share it.
"""

from __future__ import annotations

from typing import Any


def text_key(value: Any) -> str | None:
    """Case-folded with whitespace runs collapsed to one space and trimmed; None for a cell that is not a
    string (null, number), which the validate stage reports on its own."""
    return " ".join(value.casefold().split()) if isinstance(value, str) else None
