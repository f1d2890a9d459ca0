"""The one translator between string ids at the edges and dense indices inside models.

Stock codes and customer ids are strings in the data ("85123A", "17850"). Models see dense
integers. An :class:`ItemMap` is built once (in fuse), travels with every model that uses it, and is
the only place that converts between the two. Index 0 is padding and never a real item.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from components.common.errors import InputError

PAD = 0


class ItemMap:
    """Bijection between item ids (strings) and indices ``1..len(self)``; 0 is padding."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        ids = [str(i) for i in item_ids]
        if len(set(ids)) != len(ids):
            raise InputError("item ids must be unique to build an item map")
        self._ids = ids
        self._index = {item_id: pos + 1 for pos, item_id in enumerate(ids)}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    @property
    def item_ids(self) -> list[str]:
        """Item ids in index order: ``item_ids[i - 1]`` has index ``i``."""
        return list(self._ids)

    @property
    def vocab_size(self) -> int:
        """Rows an embedding table needs: every item plus the padding row."""
        return len(self._ids) + 1

    def index(self, item_id: str) -> int:
        try:
            return self._index[item_id]
        except KeyError:
            raise InputError(f"unknown item id {item_id!r}", column="item_id") from None

    def encode(self, item_ids: Iterable[str], *, skip_unknown: bool = False) -> list[int]:
        """Indices of ``item_ids``; unknown ids raise unless ``skip_unknown`` drops them."""
        if skip_unknown:
            return [self._index[i] for i in item_ids if i in self._index]
        return [self.index(i) for i in item_ids]

    def decode(self, indices: Iterable[int]) -> list[str]:
        out = []
        for idx in indices:
            idx = int(idx)
            if not 1 <= idx <= len(self._ids):
                raise InputError(f"item index {idx} is outside 1..{len(self._ids)}")
            out.append(self._ids[idx - 1])
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        payload = {"pad_index": PAD, "item_ids": self._ids}
        Path(path).write_text(json.dumps(payload) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ItemMap:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(payload["item_ids"])
