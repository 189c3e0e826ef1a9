"""One least-recently-used map, bounded by a count of entries, a total size, or both."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """`get` and `put` make an entry the most recent; `put` evicts the least recent ones past a bound.

    `max_entries` bounds the count; `max_bytes` bounds the sum of `size(value)`. A value larger than
    `max_bytes` on its own is not kept at all.
    """

    def __init__(
        self, max_entries: int | None = None, max_bytes: int | None = None, size: Callable[[V], int] | None = None
    ) -> None:
        if max_bytes is not None and size is None:
            raise ValueError("a byte bound needs a size function")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self.bytes = 0

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> bool:
        """Keep `value` under `key`; False when it is over the bounds on its own (then it is not kept)."""
        size = self._size(value) if self._size is not None else 0
        if (self.max_entries is not None and self.max_entries <= 0) or (self.max_bytes is not None and size > self.max_bytes):
            return False
        self.pop(key)
        self._items[key] = value
        self.bytes += size
        while (self.max_entries is not None and len(self._items) > self.max_entries) or (
            self.max_bytes is not None and self.bytes > self.max_bytes
        ):
            self._evict()
        return True

    def pop(self, key: K) -> V | None:
        value = self._items.pop(key, None)
        if value is not None and self._size is not None:
            self.bytes -= self._size(value)
        return value

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def _evict(self) -> None:
        _, value = self._items.popitem(last=False)
        if self._size is not None:
            self.bytes -= self._size(value)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)
