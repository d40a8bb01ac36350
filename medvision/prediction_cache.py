"""Content hashing of cases and a thread-safe in-memory LRU bounded in bytes, for prediction results.

The app asks for the same case's slices and volume many times (every rerun, every scroll), often with a
fresh copy of the same Case (``st.cache_data`` hands out copies), so results are keyed by what the
image holds, not by object identity. Hashing a 240x240x155x4 float32 volume (142 MB) with SHA-256
takes about 0.1 s; a small identity memo skips even that for the same array object.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from medvision.data.case import Case

_IDENTITY_MEMO: dict[int, tuple[weakref.ref, str]] = {}
_IDENTITY_LOCK = threading.Lock()
_IDENTITY_LIMIT = 64


def case_content_hash(case: Case) -> str:
    """Hex SHA-256 over the image bytes, its shape and dtype, the spacing and the affine.

    Two cases with equal voxels and geometry get the same hash whatever their case_id, label or files.
    The image is assumed not to be modified in place after the first call (Case is frozen; the memo of
    already-hashed arrays relies on that).
    """
    image = case.image
    with _IDENTITY_LOCK:
        memo = _IDENTITY_MEMO.get(id(image))
    if memo is not None and memo[0]() is image:
        image_digest = memo[1]
    else:
        contiguous = np.ascontiguousarray(image)
        digest = hashlib.sha256()
        digest.update(f"{contiguous.dtype.str}{contiguous.shape}".encode())
        digest.update(memoryview(contiguous).cast("B"))
        image_digest = digest.hexdigest()
        _remember(image, image_digest)
    outer = hashlib.sha256(image_digest.encode())
    outer.update(np.asarray(case.spacing, dtype=np.float64).tobytes())
    outer.update(np.asarray(case.affine, dtype=np.float64).tobytes())
    return outer.hexdigest()


def _remember(image: np.ndarray, digest: str) -> None:
    try:
        ref = weakref.ref(image)
    except TypeError:  # an array subclass without weakref support: just do not memoise
        return
    with _IDENTITY_LOCK:
        if len(_IDENTITY_MEMO) >= _IDENTITY_LIMIT:
            # Drop entries whose arrays are gone; if all are alive, drop the oldest.
            for key in [k for k, (r, _) in _IDENTITY_MEMO.items() if r() is None] or [
                next(iter(_IDENTITY_MEMO))
            ]:
                _IDENTITY_MEMO.pop(key, None)
        _IDENTITY_MEMO[id(image)] = (ref, digest)


def nbytes_of(value: Any) -> int:
    """Approximate memory held by a value: the sum of the numpy arrays it (or its fields) hold."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(nbytes_of(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values())
    fields = getattr(value, "__dataclass_fields__", None)
    if fields:
        return sum(nbytes_of(getattr(value, name)) for name in fields)
    return 64


class ByteLRU:
    """Least-recently-used mapping whose values' total ``nbytes_of`` stays within ``max_bytes``.

    A value larger than the whole budget is not stored. All methods are thread-safe.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: Any) -> None:
        size = nbytes_of(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def first(self, match: Callable[[Hashable], bool]) -> Any | None:
        """The most recently used value whose key satisfies ``match``, or None."""
        with self._lock:
            for key in reversed(self._items):
                if match(key):
                    self._items.move_to_end(key)
                    return self._items[key][0]
        return None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items
