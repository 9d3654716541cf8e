"""Checkpoint state (all but the big tensors) as JSON: a format that cannot carry code.

Lightning's checkpoint dict holds more than JSON's types: tuples (Adam's betas), dicts with
non-string keys, small tensors (ModelCheckpoint's scores), dtypes. They are written as tagged
objects `{"__moelight__": kind, ...}` and read back as the same types. Anything else is refused
at save time, naming where it sits (as `torch.load(weights_only=True)` would refuse it at load).
Reading only ever builds plain values and tensors from numbers: no name in the file is imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

TAG = "__moelight__"


def encode(value: Any, where: str = "") -> Any:
    """`value` as JSON-serialisable data (tagged where JSON has no such type)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        return {
            TAG: "tensor",
            "dtype": _dtype_name(t.dtype),
            "shape": list(t.shape),
            "data": t.flatten().tolist(),
        }
    if isinstance(value, torch.dtype):
        return {TAG: "dtype", "name": _dtype_name(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return {TAG: "tuple", "items": [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and TAG not in value:
            return {k: encode(v, f"{where}.{k}" if where else k) for k, v in value.items()}
        return {
            TAG: "dict",
            "items": [[encode(k, where), encode(v, f"{where}[{k!r}]")] for k, v in value.items()],
        }
    if hasattr(value, "item") and hasattr(value, "dtype"):  # a numpy scalar
        return value.item()
    raise TypeError(f"checkpoint state {where or '<root>'}: a {type(value).__name__} cannot be saved as JSON")


def decode(data: Any) -> Any:
    """The values `encode` wrote."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    kind = data.get(TAG)
    if kind is None:
        return {k: decode(v) for k, v in data.items()}
    if kind == "tuple":
        return tuple(decode(v) for v in data["items"])
    if kind == "dict":
        return {_hashable(decode(k)): decode(v) for k, v in data["items"]}
    if kind == "dtype":
        return _dtype(data["name"])
    if kind == "tensor":
        return torch.tensor(data["data"], dtype=_dtype(data["dtype"])).reshape(data["shape"])
    raise ValueError(f"unknown tagged value {kind!r}")


def dumps(value: Any) -> str:
    return json.dumps(encode(value))


def loads(text: str) -> Any:
    return decode(json.loads(text))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list | tuple) else key
