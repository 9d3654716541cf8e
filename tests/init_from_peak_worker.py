"""Peak host memory of one EP rank's `model.init_from`, for tests/test_init_from_sharded.py.

    python tests/init_from_peak_worker.py DIR sharded|whole-file [--ep P] [--rank R] [--kind K]

Writes DIR/model.safetensors (and model.ckpt / a sharded directory for the other kinds) once, in
a separate process, so this process's memory holds only what loading needs. Then builds rank R
of EP P as `configure_model` does (`sharded`: parameters on the meta device, then
`load_init_weights`), having reset the kernel's RSS high-water mark (/proc/self/clear_refs), and
prints one JSON line: the peak above the RSS before building (`peak_rss_bytes`, from VmHWM), the file size, this rank's shard size, the largest single tensor
part read, and whether the loaded weights equal the file's rows.

`sharded` is moelight's loader; `whole-file` is the loading it replaces (the model built and
initialised, safetensors.load_file / torch.load of the whole file, the rank's expert rows by
indexing, load_state_dict), kept here as the reference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from moelight.load import load_init_weights
from moelight.model.build import build_model, layer_contexts
from moelight.model.meta_params import parameters_on_meta
from moelight.moe.dispatch import ExpertParallelContext
from moelight.moe.experts import named_expert_parameters
from moelight.recipe import load_recipe

# ~100 MB of fp32 weights, almost all of them experts (as in the paper's models).
MODEL = [
    "model.n_layers=4",
    "model.hidden_size=256",
    "model.n_heads=4",
    "model.num_experts=8",
    "model.expert_ffn_hidden_size=1024",
    "model.ffn_hidden_size=512",
    "model.moe_every=1",
    "dispatcher.name=sorted",
]


def model_overrides(ep: int, extra: list[str]) -> list[str]:
    dispatch = ["dispatcher.name=grouplocal"] if ep > 1 else []  # `sorted` refuses P > 1
    return MODEL + extra + dispatch + [f"parallel.expert_parallel={ep}"]


def files(out: Path) -> dict[str, Path]:
    return {
        "safetensors": out / "model.safetensors",
        "ckpt": out / "model.ckpt",
        "sharded": out / "sharded.ckpt",
    }


def generate(out: Path, extra: list[str]) -> None:
    from safetensors.torch import save_file

    from moelight.parallel.checkpoint import save_sharded

    torch.manual_seed(0)
    model = build_model(load_recipe(None, model_overrides(1, extra)))
    state = model.state_dict()
    save_file(state, files(out)["safetensors"])
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, files(out)["ckpt"])
    save_sharded({"state_dict": state}, files(out)["sharded"], model, [])


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def whole_file_load(recipe, ep: ExpertParallelContext, path: Path) -> torch.nn.Module:
    """What `configure_model` did before: build (and initialise) the rank's model, read the
    whole file, take the rank's expert rows, copy into the model."""
    from safetensors.torch import load_file

    model = build_model(recipe, ep)
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = {k[6:]: v for k, v in torch.load(path, weights_only=True)["state_dict"].items()}
    for name, _, owner in named_expert_parameters(model):
        state[name] = state[name][torch.tensor(owner.global_ids)]
    model.load_state_dict(state, strict=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("loader", choices=["sharded", "whole-file", "generate"])
    parser.add_argument("--ep", type=int, default=2)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--kind", default="safetensors", choices=["safetensors", "ckpt", "sharded"])
    parser.add_argument("--model", nargs="*", default=[], help="more model overrides")
    args = parser.parse_args()
    out = Path(args.dir)
    if args.loader == "generate":
        generate(out, args.model)
        return
    path = files(out)[args.kind]
    if not path.exists():
        cmd = [sys.executable, __file__, str(out), "generate", "--model", *args.model]
        subprocess.run(cmd, check=True)
    recipe = load_recipe(None, model_overrides(args.ep, args.model))
    contexts = layer_contexts(recipe)
    ep = ExpertParallelContext(rank=args.rank, size=args.ep)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status_bytes("VmRSS")
    if args.loader == "sharded":  # what `configure_model` does with model.init_from
        with parameters_on_meta():
            model = build_model(recipe, ep, contexts)
        load_init_weights(model, str(path))
    else:
        if args.kind == "sharded":
            raise SystemExit("whole-file loading read a sharded directory through a consolidated file")
        model = whole_file_load(recipe, ep, path)
    peak = status_bytes("VmHWM") - before
    shard = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    largest = max(t.numel() * t.element_size() for t in model.state_dict().values())
    # Equality with the file, checked after the measurement (it reads the whole file).
    from safetensors.torch import load_file

    ok = True
    full = load_file(str(files(out)["safetensors"]))
    rows = {name: owner.global_ids for name, _, owner in named_expert_parameters(model)}
    for name, value in model.state_dict().items():
        want = full[name][rows[name]] if name in rows else full[name]
        ok = ok and torch.equal(value, want)
    report = {
        "loader": args.loader,
        "kind": args.kind,
        "ep": args.ep,
        "rank": args.rank,
        "file_bytes": path.stat().st_size
        if path.is_file()
        else sum(f.stat().st_size for f in path.iterdir()),
        "shard_bytes": shard,
        "largest_read_bytes": largest,
        "peak_rss_bytes": peak,
        "equal": ok,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
