"""Readable identifiers (``u000123``, ``p00042``, ``s17``) built in Arrow, not one Python string at a time."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def prefixed(prefix: str, numbers: np.ndarray, width: int = 0, valid: np.ndarray | None = None) -> pa.Array:
    """``prefix`` followed by each number, zero-padded to ``width``; null where ``valid`` is False."""
    text = pc.cast(pa.array(np.asarray(numbers, dtype=np.int64)), pa.string())
    if width:
        text = pc.utf8_lpad(text, width, "0")
    joined = pc.binary_join_element_wise(prefix, text, "")
    if valid is None:
        return joined
    return pc.if_else(pa.array(np.asarray(valid, dtype=bool)), joined, pa.scalar(None, pa.string()))


def user_width(customers: int) -> int:
    """Digits of user ids: at least 6, more for very large shops."""
    return max(6, len(str(customers - 1)))
