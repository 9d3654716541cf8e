"""Two gloo processes save a sharded checkpoint, then save again while rank 1 fails mid-write.

    python tests/ep_checkpoint_worker.py TMP_DIR OUT.json

The failed save must leave the earlier checkpoint in place, remove its own `.partial` files and
raise one message (TrainingStopped). Writes {check: "ok" or the failure}.
"""

from __future__ import annotations

import json
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from moelight.errors import TrainingStopped
from moelight.moe.experts import ExpertWeights
from moelight.parallel.checkpoint import check_sharded, load_sharded, save_sharded

sys.path.insert(0, str(Path(__file__).parent))
from ep_dispatch_worker import free_port  # noqa: E402


class Tiny(nn.Module):
    def __init__(self, rank: int):
        super().__init__()
        self.dense = nn.Linear(4, 4)
        self.experts = ExpertWeights([rank, rank + 2], 4, 8)  # rank 0: experts 0, 2; rank 1: 1, 3


def lightning_like(module, opt, step: int) -> dict:
    return {"global_step": step, "state_dict": module.state_dict(), "optimizer_states": [opt.state_dict()]}


def worker(rank: int, port: int, tmp: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    torch.manual_seed(0)
    module = Tiny(rank)
    opt = torch.optim.AdamW(module.parameters(), lr=0.1)
    loss = module.dense(torch.ones(2, 4)).sum() + module.experts.w1.sum()
    loss.backward()
    opt.step()
    path = Path(tmp) / "last.ckpt"
    save_sharded(lightning_like(module, opt, 1), path, module, [opt], ep_rank=rank, expert_parallel=2)
    good = {k: v.clone() for k, v in module.state_dict().items()}

    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    import torch.distributed.checkpoint.filesystem as fs

    if rank == 1:

        def broken(*args, **kwargs):
            raise OSError("disk full (simulated)")

        fs._write_item = broken  # rank 1 fails while writing its shard
    failed = False
    try:
        save_sharded(lightning_like(module, opt, 2), path, module, [opt], ep_rank=rank, expert_parallel=2)
    except TrainingStopped as exc:
        failed = "could not save checkpoint" in str(exc) and "free there" in str(exc)
    dist.barrier()  # rank 0 has cleaned up
    results = {}
    try:
        assert failed, "the save with a failing rank did not raise one clear message"
        partial = path.with_name(f".{path.name}.partial")
        assert not partial.exists(), "the failed save left its partial files"
        check_sharded(path)
        loaded = load_sharded(path, module, [opt])
        assert loaded["global_step"] == 1
        for key, value in good.items():
            assert torch.equal(loaded["state_dict"][key], value), f"{key} is not the earlier checkpoint's"
        results["failed_save_keeps_previous"] = "ok"
    except Exception:
        results["failed_save_keeps_previous"] = f"rank {rank}: {traceback.format_exc(limit=3)}"
    gathered: list = [None] * 2
    dist.all_gather_object(gathered, results)
    if rank == 0:
        merged = {k: next((r[k] for r in gathered if r[k] != "ok"), "ok") for k in results}
        Path(out).write_text(json.dumps(merged))
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(free_port(), sys.argv[1], sys.argv[2]), nprocs=2)
