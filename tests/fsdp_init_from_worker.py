"""FSDP2 ranks fill their chunks from a safetensors file, for tests/test_init_from_sharded.py.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_init_from_worker.py FILE OUT PLACEMENT

Three models on one 2-rank gloo mesh, each `fully_shard`-ed per block and at the root:
- `meta`: parameters on the meta device when loaded (the loader puts DTensors in their place);
- `empty`: materialised with `to_empty` first (the loader copies into each local chunk);
- `experts`: EP=2 placement [[1, 3], [0, 2]] with both ranks holding EP rank 0's experts, so the
  expert rows (global ids 1, 3) are FSDP-chunked again: each rank holds one expert.
Every parameter's local chunk must equal the same chunk of the file tensor (rows by global id),
the gathered `full_tensor()` the whole selected tensor, and (`meta`, `empty`) the logits those
of the model loaded whole in one process. Writes OUT/rank<r>.json: {"checked": n, "bad": [...]}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).parent))
from test_init_from_sharded import SMALL  # noqa: E402

from moelight.load import load_init_weights  # noqa: E402
from moelight.model.build import build_model, layer_contexts  # noqa: E402
from moelight.model.meta_params import parameters_on_meta  # noqa: E402
from moelight.moe.dispatch import ExpertParallelContext  # noqa: E402
from moelight.moe.experts import named_expert_parameters  # noqa: E402
from moelight.recipe import load_recipe  # noqa: E402


def sharded_model(extra: list[str], mesh, materialise: bool):
    recipe = load_recipe(None, SMALL + extra)
    contexts = layer_contexts(recipe)
    with parameters_on_meta():
        model = build_model(
            recipe, ExpertParallelContext(rank=0, size=recipe.parallel.expert_parallel), contexts
        )
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if materialise:
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        model.to_empty(device="cpu")
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    return model


def check(model, full: dict[str, torch.Tensor], rank: int) -> tuple[int, list[str]]:
    """Each parameter's local chunk against torch.chunk of the selected file tensor."""
    rows = {name: owner.global_ids for name, _, owner in named_expert_parameters(model)}
    bad, checked = [], 0
    for name, p in model.named_parameters():
        want = full[name][rows[name]] if name in rows else full[name]
        if not isinstance(p, DTensor) or p.to_local().is_meta:
            bad.append(f"{name}: not a loaded DTensor")
            continue
        chunks = want.chunk(2)
        mine = chunks[rank] if rank < len(chunks) else want[:0]
        if not torch.equal(p.to_local(), mine):
            bad.append(f"{name}: local chunk differs")
        if not torch.equal(p.full_tensor(), want):
            bad.append(f"{name}: full tensor differs")
        checked += 1
    return checked, bad


def main() -> None:
    file, out, placement = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    full = load_file(file)
    reference = build_model(load_recipe(None, SMALL))
    reference.load_state_dict(full)
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = reference(idx)
    checked, bad = 0, []
    for label, extra, materialise, logits in (
        ("meta", [], False, True),
        ("empty", [], True, True),
        (
            "experts",
            ["parallel.expert_parallel=2", f"parallel.placement={placement}", "dispatcher.name=grouplocal"],
            False,
            False,
        ),
    ):
        model = sharded_model(extra, mesh, materialise)
        load_init_weights(model, file)
        n, problems = check(model, full, rank)
        checked += n
        bad += [f"{label}: {p}" for p in problems]
        if logits:
            with torch.no_grad():
                got = model(idx)
            if not torch.allclose(got, want, atol=1e-5, rtol=1e-5):
                bad.append(f"{label}: logits differ by {float((got - want).abs().max())}")
    (out / f"rank{rank}.json").write_text(json.dumps({"checked": checked, "bad": bad}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
