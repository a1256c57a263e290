"""Compact JSON text (no spaces, UTF-8 kept as is), from encoders made once.

``json.dumps`` with any non-default option builds a new `json.JSONEncoder` on every call,
which costs as much as encoding a small event; these run once per chunk.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["compact_json", "strict_compact_json"]

_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_STRICT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def compact_json(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``."""
    return _COMPACT.encode(value)


def strict_compact_json(value: Any) -> str:
    """`compact_json`, refusing NaN and infinities (``ValueError``) as JSON does."""
    return _STRICT.encode(value)
