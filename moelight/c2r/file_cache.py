"""Read a C2R input file once per process: results cached by (path, mtime, size, other arguments).

`fit` builds the layer contexts several times (the launch check, the model report, each rank's
model); each reads the placement and the profile. Callers get clones, so they may modify them.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
MAX_ENTRIES = 16


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(_clone(v) for v in value)
    return value


def cached_by_file(read: F) -> F:
    """Cache `read(path, *args)` while the file at `path` is unchanged; errors are never cached."""
    cache: OrderedDict[tuple, Any] = OrderedDict()

    @functools.wraps(read)
    def wrapper(path, *args):
        try:
            stat = Path(path).stat()
        except OSError:
            return read(path, *args)  # missing: let the reader say so
        key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size, *args)
        if key not in cache:
            cache[key] = read(path, *args)
            while len(cache) > MAX_ENTRIES:
                cache.popitem(last=False)
        return _clone(cache[key])

    wrapper.cache = cache  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
