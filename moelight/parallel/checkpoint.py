"""Sharded checkpoints that reshard: saved at one expert-parallel size, resumed at any other.

A checkpoint is a directory at the path Lightning asks for (e.g. `checkpoints/last.ckpt`, as
Lightning's FSDP strategy does):

    .metadata, __<rank>_0.distcp   torch.distributed.checkpoint (DCP) shards of every tensor
    meta.json                      rank 0: all else Lightning saves (loops, callbacks, schedulers,
                                   data position, hyper-parameters) and the layout below, as JSON:
                                   reading a checkpoint runs no code (sharded_meta.py; the DCP
                                   `.metadata` pickle is read by checkpoint/dcp_metadata.py)
    COMPLETE                       written last; the directory was renamed into place after it

Tensor keys name each expert by its GLOBAL id, so they depend neither on P nor on the placement
(DCP would otherwise take same-named shards of different ranks for replicas):

    model/<fqn>                         dense tensors (equal on every rank: DCP saves one copy)
    model/<prefix>.<g>.<w1|v1|w2>       expert g's slice of <prefix>.<w1|v1|w2>
    optim/<i>/<param key>/<state>       optimizer i's state of that parameter (expert slices alike)

Loading builds, for the rank at hand, an ordinary Lightning checkpoint dict (its local model
state dict and optimizer state dicts) from the keys it needs, so Lightning restores it as usual.
A single-process `.ckpt` file loads the same way (its experts are 0..E-1 in order), and
`consolidate` turns a directory into such a file for a single-process resume.

A save writes into `.<name>.partial` and is renamed into place by rank 0 only after every rank
has written (DCP's save ends with a gather) and the marker is down: a directory at the real name
without COMPLETE is never loaded. A failed save removes its `.partial` directory and raises
`TrainingStopped` naming the path, the bytes needed and the bytes free.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from moelight.checkpoint.files import checkpoint_corrupt, load_checkpoint_file, publish
from moelight.checkpoint.storage import save_failed, tensor_bytes
from moelight.errors import MoelightError
from moelight.moe.experts import named_expert_parameters
from moelight.parallel.liveness import mentions_peer_failure
from moelight.parallel.sharded_meta import META_FILE, meta_file, not_moelight, safe_read_meta, write_meta

FORMAT_VERSION = 1
MARKER_FILE = "COMPLETE"
MODEL, OPTIM = "model/", "optim/"

# Kinds of optimizer state entries of an expert parameter.
SPLIT, SHARED, PYTHON = "split", "shared", "python"


# ---- names ------------------------------------------------------------------------------


def expert_key(fqn: str, gid: int) -> str:
    """`blocks.0.ffn.experts.w1`, 3 -> `blocks.0.ffn.experts.3.w1`."""
    prefix, leaf = fqn.rsplit(".", 1)
    return f"{prefix}.{gid}.{leaf}"


def expert_layout(module: nn.Module) -> dict[str, list[int]]:
    """State-dict name of every expert parameter -> the global ids of its rows."""
    return {name: list(owner.global_ids) for name, _, owner in named_expert_parameters(module)}


def optimizer_param_names(optimizer: torch.optim.Optimizer, module: nn.Module) -> list[list[str]]:
    """Names of the parameters of each param group, in the optimizer's order."""
    names = {id(p): n for n, p in module.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


# ---- local state <-> global keys -------------------------------------------------------------


def model_to_global(state_dict: dict[str, Any], layout: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        ids = layout.get(key)
        if ids is None:
            out[MODEL + key] = value
        else:
            for row, gid in enumerate(ids):
                out[MODEL + expert_key(key, gid)] = value[row]
    return out


def model_from_global(
    flat: dict[str, torch.Tensor], keys: list[str], layout: dict[str, list[int]]
) -> dict[str, torch.Tensor]:
    out = {}
    for key in keys:
        ids = layout.get(key)
        if ids is None:
            out[key] = flat[MODEL + key]
        else:
            out[key] = torch.stack([flat[MODEL + expert_key(key, gid)] for gid in ids])
    return out


def optimizer_to_global(
    opt_state: dict[str, Any], names: list[list[str]], layout: dict[str, list[int]], index: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten `optimizer.state_dict()` under global keys; returns (tensors, layout to rebuild it)."""
    flat_names = [n for group in names for n in group]
    tensors: dict[str, torch.Tensor] = {}
    kinds: dict[str, dict[str, str]] = {}
    for pid, state in opt_state["state"].items():
        name = flat_names[pid]
        ids = layout.get(name)
        kinds[name] = {}
        for entry, value in state.items():
            kind = PYTHON if not isinstance(value, torch.Tensor) else SHARED
            value = torch.as_tensor(value) if kind == PYTHON else value
            if ids is not None and value.dim() >= 1 and value.shape[0] == len(ids):
                kind = SPLIT
            kinds[name][entry] = kind
            if ids is None:
                tensors[f"{OPTIM}{index}/{name}/{entry}"] = value
            else:
                for row, gid in enumerate(ids):
                    tensors[f"{OPTIM}{index}/{expert_key(name, gid)}/{entry}"] = (
                        value[row] if kind == SPLIT else value
                    )
    groups = [
        {**{k: v for k, v in group.items() if k != "params"}, "params": list(group_names)}
        for group, group_names in zip(opt_state["param_groups"], names)
    ]
    return tensors, {"param_groups": groups, "kinds": kinds}


def model_keys(keys: list[str], layout: dict[str, list[int]]) -> list[str]:
    """The tensor keys of a model state dict with keys `keys` whose experts are `layout`."""
    out = [MODEL + k for k in keys if k not in layout]
    return out + [MODEL + expert_key(k, gid) for k, ids in layout.items() for gid in ids]


def optimizer_keys(saved: dict[str, Any], index: int, layout: dict[str, list[int]]) -> list[str]:
    """The tensor keys this rank needs to rebuild optimizer `index`."""
    keys = []
    for name, entries in saved["kinds"].items():
        ids = layout.get(name)
        for entry, kind in entries.items():
            if ids is None:
                keys.append(f"{OPTIM}{index}/{name}/{entry}")
            else:
                shown = ids if kind == SPLIT else ids[:1]
                keys += [f"{OPTIM}{index}/{expert_key(name, gid)}/{entry}" for gid in shown]
    return keys


def optimizer_from_global(
    flat: dict[str, torch.Tensor],
    saved: dict[str, Any],
    index: int,
    names: list[list[str]],
    layout: dict[str, list[int]],
) -> dict[str, Any]:
    """An `optimizer.state_dict()` for this rank's parameters (named `names`, per group)."""
    saved_groups = saved["param_groups"]
    if [sorted(g["params"]) for g in saved_groups] != [sorted(g) for g in names]:
        raise MoelightError(
            f"optimizer {index}: the checkpoint's parameter groups do not match this model's "
            "(a different model or optimizer configuration?)"
        )
    state: dict[int, dict[str, Any]] = {}
    groups = []
    pid = 0
    for saved_group, group_names in zip(saved_groups, names):
        ids_in_group = []
        for name in group_names:
            entries = saved["kinds"].get(name)
            if entries is not None:
                state[pid] = {
                    e: _optimizer_entry(flat, index, name, e, k, layout.get(name)) for e, k in entries.items()
                }
            ids_in_group.append(pid)
            pid += 1
        groups.append({**{k: v for k, v in saved_group.items() if k != "params"}, "params": ids_in_group})
    return {"state": state, "param_groups": groups}


def _optimizer_entry(flat, index: int, name: str, entry: str, kind: str, ids: list[int] | None):
    if ids is None:
        value = flat[f"{OPTIM}{index}/{name}/{entry}"]
    elif kind == SPLIT:
        value = torch.stack([flat[f"{OPTIM}{index}/{expert_key(name, gid)}/{entry}"] for gid in ids])
    else:
        value = flat[f"{OPTIM}{index}/{expert_key(name, ids[0])}/{entry}"]
    return value.item() if kind == PYTHON else value


# ---- sharded save (collective: every rank calls) and load (each rank on its own) ----------------


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_sharded(
    checkpoint: dict[str, Any],
    path: str | Path,
    module: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    ep_rank: int = 0,
    expert_parallel: int = 1,
    layout: dict[str, list[int]] | None = None,
) -> None:
    """Write Lightning's `checkpoint` dict as a sharded directory at `path` (atomically).

    `layout`: the global expert ids of the expert rows in `checkpoint` (default: all of this
    rank's experts; FSDP passes the rows of its shard)."""
    # imported on use: it loads much of torch.distributed, which single-process runs never need
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    layout = expert_layout(module) if layout is None else layout
    tensors = model_to_global(checkpoint["state_dict"], layout)
    meta = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
    if "optimizer_states" in checkpoint:
        saved = []
        for i, (opt, opt_state) in enumerate(zip(optimizers, checkpoint["optimizer_states"])):
            opt_tensors, opt_meta = optimizer_to_global(
                opt_state, optimizer_param_names(opt, module), layout, i
            )
            tensors.update(opt_tensors)
            saved.append(opt_meta)
        meta["optimizer_states"] = saved
    placement = _gather_placement(layout, ep_rank)
    meta["moelight_sharded"] = {
        "format": FORMAT_VERSION,
        "expert_parallel": expert_parallel,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "model_keys": list(checkpoint["state_dict"]),
        "experts": {key: len(placement[_module_of(key)]) for key in layout},
        "placement": placement,
    }
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    try:
        dcp.save(tensors, checkpoint_id=tmp)  # raises on every rank if any rank fails to write
        if _rank() == 0:
            write_meta(tmp, meta)
            (tmp / MARKER_FILE).write_text(
                json.dumps({"format": FORMAT_VERSION, "step": checkpoint.get("global_step")})
            )
            publish(tmp, path)
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # never leave a disk filled by a failed save
        if mentions_peer_failure(str(exc)):  # a rank was lost mid-save, not a storage problem
            raise RuntimeError(
                f"a collective failed while saving {path}: connection closed by peer"
            ) from None
        raise save_failed(path, exc, tensor_bytes(tensors)) from None
    _barrier()


def _module_of(key: str) -> str:
    return key.rsplit(".", 1)[0]


def _gather_placement(layout: dict[str, list[int]], ep_rank: int) -> dict[str, list[int]]:
    """Expert module name -> device (EP rank) of each global expert, from every rank's layout."""
    mine = [(ep_rank, layout)]
    if dist.is_initialized():
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine[0])
        mine = everyone
    placement: dict[str, dict[int, int]] = {}
    for device, rank_layout in mine:
        for key, ids in rank_layout.items():
            placement.setdefault(_module_of(key), {}).update({gid: device for gid in ids})
    return {key: [devices[g] for g in sorted(devices)] for key, devices in placement.items()}


def is_sharded(path: str | Path) -> bool:
    return Path(path).is_dir()


def check_sharded(path: str | Path) -> None:
    """Refuse a directory that is not a complete sharded checkpoint."""
    path = Path(path)
    if not (path / MARKER_FILE).is_file():
        raise MoelightError(
            f"checkpoint {path} is incomplete (no {MARKER_FILE} marker): its save was interrupted; "
            "resume from an earlier checkpoint"
        )
    if meta_file(path) is None or not (path / ".metadata").is_file():
        raise not_moelight(path, f"{META_FILE} or .metadata missing")


def read_meta(path: str | Path) -> dict[str, Any]:
    check_sharded(path)
    return safe_read_meta(path)


def read_tensors(path: str | Path, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Load `keys` (default: every tensor) of a checkpoint directory into new CPU tensors.

    Each rank reads only what it needs, on its own (`no_dist`): ranks ask for different keys.
    """
    # imported on use: it loads much of torch.distributed, which single-process runs never need
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from moelight.checkpoint.dcp_metadata import SafeFileSystemReader

    path = Path(path)
    metadata = SafeFileSystemReader(path).read_metadata().state_dict_metadata
    keys = list(metadata) if keys is None else keys
    missing = [k for k in keys if k not in metadata]
    if missing:
        raise MoelightError(
            f"checkpoint {path} lacks {len(missing)} tensors this model needs, e.g. {missing[:3]}"
        )
    out = {}
    for key in keys:
        md = metadata[key]
        if not isinstance(md, TensorStorageMetadata):
            raise MoelightError(f"checkpoint {path}: {key} is not a tensor")
        out[key] = torch.empty(md.size, dtype=md.properties.dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
        try:
            dcp.load(out, storage_reader=SafeFileSystemReader(path), no_dist=True)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a truncated or damaged shard (DCP's CheckpointException)
            reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
            raise checkpoint_corrupt(path, f"a shard cannot be read ({reason})") from None
    return out


def load_sharded(
    path: str | Path, module: nn.Module, optimizers: list[torch.optim.Optimizer]
) -> dict[str, Any]:
    """This rank's Lightning checkpoint dict from a sharded directory (its experts, by global id)."""
    path = Path(path)
    meta = read_meta(path)
    layout = expert_layout(module)
    names = list(module.state_dict())
    keys = model_keys(names, layout)
    saved_optim = meta.get("optimizer_states", [])
    for i, saved in enumerate(saved_optim[: len(optimizers)]):
        keys += optimizer_keys(saved, i, layout)
    flat = read_tensors(path, keys)
    checkpoint = dict(meta)
    checkpoint["state_dict"] = model_from_global(flat, names, layout)
    if optimizers and saved_optim:
        checkpoint["optimizer_states"] = [
            optimizer_from_global(flat, saved, i, optimizer_param_names(opt, module), layout)
            for i, (opt, saved) in enumerate(zip(optimizers, saved_optim))
        ]
    return checkpoint


# ---- single-file checkpoints -------------------------------------------------------------------


def localize_full(
    checkpoint: dict[str, Any], module: nn.Module, optimizers: list[torch.optim.Optimizer]
) -> dict:
    """A checkpoint of one process holding every expert (0..E-1) -> this rank's checkpoint dict."""
    layout = expert_layout(module)
    full_layout = {k: list(range(checkpoint["state_dict"][k].shape[0])) for k in layout}
    flat = model_to_global(checkpoint["state_dict"], full_layout)
    out = dict(checkpoint)
    out["state_dict"] = model_from_global(flat, list(module.state_dict()), layout)
    if "optimizer_states" in checkpoint and optimizers:
        states = []
        for i, (opt, opt_state) in enumerate(zip(optimizers, checkpoint["optimizer_states"])):
            names = optimizer_param_names(opt, module)
            tensors, saved = optimizer_to_global(opt_state, names, full_layout, i)
            states.append(optimizer_from_global(tensors, saved, i, names, layout))
        out["optimizer_states"] = states
    return out


def write_consolidated(path: str | Path, out: str | Path) -> Path:
    """Write a sharded directory as one ordinary Lightning checkpoint file (every expert, in order)."""
    path, out = Path(path), Path(out)
    meta = read_meta(path)
    info = meta["moelight_sharded"]
    layout = {key: list(range(n)) for key, n in info["experts"].items()}
    keys = model_keys(info["model_keys"], layout)
    saved_optim = meta.get("optimizer_states", [])
    for i, saved in enumerate(saved_optim):
        keys += optimizer_keys(saved, i, layout)
    flat = read_tensors(path, keys)
    checkpoint = {k: v for k, v in meta.items() if k != "moelight_sharded"}
    checkpoint["state_dict"] = model_from_global(flat, info["model_keys"], layout)
    checkpoint["optimizer_states"] = [
        optimizer_from_global(flat, saved, i, [g["params"] for g in saved["param_groups"]], layout)
        for i, saved in enumerate(saved_optim)
    ]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    torch.save(checkpoint, tmp)
    os.replace(tmp, out)
    return out


def consolidated_file(path: str | Path) -> Path:
    """The single-file form of a complete sharded checkpoint, written once beside its shards."""
    path = Path(path)
    check_sharded(path)
    single = path / "consolidated.ckpt"
    if single.is_file():
        load_checkpoint_file(single, mmap=True)  # written by us, or planted: refuse what runs code
    else:
        write_consolidated(path, single)
    return single
