"""Expert placement: which expert-parallel rank holds each expert, per MoE layer.

A placement is a LongTensor [layers, E] of device ids with E/P experts on every device.
Files are JSON: `{"num_devices": P, "layers": [[[experts on dev 0], [on dev 1], ...], ...]}`
(one entry per MoE layer) or `{"num_devices": P, "groups": [[...], ...]}` for every layer;
`.npy` files hold device ids shaped [layers, E] or [E].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from moelight.c2r.file_cache import cached_by_file
from moelight.errors import ConfigError

FIELD = "parallel.placement"


def contiguous_placement(num_layers: int, num_experts: int, num_devices: int) -> torch.Tensor:
    per = num_experts // num_devices
    return (torch.arange(num_experts) // per).expand(num_layers, num_experts).clone()


def groups_to_devices(groups: list[list[int]], num_experts: int, where: str) -> torch.Tensor:
    """[[experts of dev 0], ...] -> device id per expert; every expert exactly once, equal sizes."""
    devices = torch.full((num_experts,), -1, dtype=torch.long)
    for d, group in enumerate(groups):
        for e in group:
            if not isinstance(e, int) or not 0 <= e < num_experts:
                raise ConfigError(FIELD, f"{where}: expert id {e!r} is not in 0..{num_experts - 1}")
            if devices[e] >= 0:
                raise ConfigError(
                    FIELD, f"{where}: expert {e} is placed twice (devices {int(devices[e])} and {d})"
                )
            devices[e] = d
    missing = (devices < 0).nonzero().flatten().tolist()
    if missing:
        raise ConfigError(FIELD, f"{where}: experts {missing} are not placed on any device")
    check_balanced(devices, len(groups), where)
    return devices


def devices_to_groups(devices: torch.Tensor, num_devices: int) -> list[list[int]]:
    """Device id per expert [E] -> [[experts of dev 0], ...] (ascending ids); the inverse of
    `groups_to_devices`."""
    ids = devices.tolist()
    return [[e for e, d in enumerate(ids) if d == dev] for dev in range(num_devices)]


def check_balanced(devices: torch.Tensor, num_devices: int, where: str) -> None:
    counts = torch.bincount(devices, minlength=num_devices)
    if len(counts) != num_devices or (counts != counts[0]).any():
        raise ConfigError(
            FIELD, f"{where}: every device must hold the same number of experts, got {counts.tolist()}"
        )


@cached_by_file
def load_placement(path: str, num_layers: int, num_experts: int, num_devices: int) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            FIELD, f"placement file not found: {path} (allowed: 'contiguous' or a .json/.npy file)"
        )
    if p.suffix == ".npy":
        arr = torch.as_tensor(np.load(p, allow_pickle=False)).long()
        if arr.dim() == 1:
            arr = arr.expand(num_layers, -1)
        if arr.shape != (num_layers, num_experts):
            raise ConfigError(
                FIELD, f"{path}: shape {tuple(arr.shape)}, expected [{num_layers}, {num_experts}]"
            )
        groups = [devices_to_groups(layer, num_devices) for layer in arr]
        if int(arr.max()) >= num_devices or int(arr.min()) < 0:
            raise ConfigError(FIELD, f"{path}: device ids must be in 0..{num_devices - 1}")
    elif p.suffix == ".json":
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(FIELD, f"{path}: not valid JSON: {exc}") from None
        if not isinstance(data, dict) or ("layers" not in data and "groups" not in data):
            raise ConfigError(FIELD, f"{path}: expected an object with 'layers' or 'groups'")
        groups = data["layers"] if "layers" in data else [data["groups"]] * num_layers
        if len(groups) != num_layers:
            raise ConfigError(FIELD, f"{path}: {len(groups)} layers, the model has {num_layers} MoE layers")
        if int(data.get("num_devices", num_devices)) != num_devices:
            raise ConfigError(
                FIELD,
                f"{path}: made for {data['num_devices']} devices, parallel.expert_parallel is {num_devices}",
            )
    else:
        raise ConfigError(FIELD, f"{path}: unknown placement file type (allowed: .json, .npy)")
    out = torch.empty(num_layers, num_experts, dtype=torch.long)
    for i, layer_groups in enumerate(groups):
        if len(layer_groups) != num_devices:
            raise ConfigError(
                FIELD, f"{path}: layer {i} has {len(layer_groups)} groups, expected {num_devices}"
            )
        out[i] = groups_to_devices(layer_groups, num_experts, f"{path} layer {i}")
    return out


def resolve_placement(spec: str, num_layers: int, num_experts: int, num_devices: int) -> torch.Tensor:
    if spec == "contiguous":
        return contiguous_placement(num_layers, num_experts, num_devices)
    return load_placement(spec, num_layers, num_experts, num_devices)


def save_placement(path: str | Path, placement: torch.Tensor, **extra) -> None:
    num_devices = int(placement.max()) + 1
    layers = [devices_to_groups(layer, num_devices) for layer in placement]
    Path(path).write_text(json.dumps({"num_devices": num_devices, "layers": layers, **extra}, indent=1))
