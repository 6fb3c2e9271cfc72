"""The protocol of fixed person crops read by row: a crop cache (``CropCache``) or rows of a shard set
(``ShardCrops``)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class CropSource(Protocol):
    """Fixed crops by row. ``rows`` holds at least int64 [N] arrays ``camera`` and ``pid``; ``crop(i)`` is
    uint8 [height, width, 3] RGB (a source that cannot read a crop raises ``ShardError`` naming it)."""

    height: int
    width: int
    rows: dict[str, np.ndarray]

    @property
    def num_rows(self) -> int: ...

    def crop(self, index: int) -> np.ndarray: ...
