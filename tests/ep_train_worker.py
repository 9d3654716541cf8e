"""A small training run with or without expert parallelism, for tests/test_expert_parallel.py.

    python tests/ep_train_worker.py OUT_DIR --ep P --devices N --batch B --steps S
        [--dispatcher NAME] [--resume PATH] [--placement FILE] [--dump] [--cache DIR] [--init-from PATH]
        [--fsdp] [--c2r-profile FILE]

Lightning launches the other ranks by re-running this command line (its subprocess launcher).
Writes, from rank 0, OUT_DIR/losses.json (the global-mean loss of every step) and
OUT_DIR/norms.json (the gradient norm before clipping of every step), and saves OUT_DIR/final.ckpt
(a sharded directory with P > 1 or --fsdp, a file otherwise). --fsdp trains with
parallel.fsdp=true; --c2r-profile routes with C2R (top_t 2) on that co-activation file. With --dump every rank
writes OUT_DIR/restored.rank<r>.pt: its model and optimizer state under global keys (see
moelight/parallel/checkpoint.py) as they are right after the checkpoint was restored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch
from torch.distributed.tensor import DTensor

from moelight.data.datamodule import MoEDataModule
from moelight.parallel.checkpoint import (
    expert_layout,
    model_to_global,
    optimizer_param_names,
    optimizer_to_global,
)
from moelight.parallel.fsdp_checkpoint import local_expert_layout, localize_experts
from moelight.recipe import load_recipe
from moelight.training.module import MoELanguageModel
from moelight.training.run_dir import prepare_run
from moelight.training.trainer import build_trainer


def recipe_overrides(args) -> list[str]:
    return [
        "model.n_layers=2",
        "model.hidden_size=32",
        "model.n_heads=2",
        "model.num_experts=8",
        "model.top_k=2",
        "model.expert_ffn_hidden_size=32",
        "model.ffn_hidden_size=64",
        *router_overrides(args),
        f"dispatcher.name={args.dispatcher}",
        "data.seq_len=32",
        f"data.batch_size={args.batch}",
        "data.max_bytes=300000",
        f"data.cache_dir={args.cache or Path(args.out) / 'cache'}",
        "optim.warmup_steps=1",
        "optim.grad_clip=0.5",
        "trainer.accelerator=cpu",
        f"trainer.devices={args.devices}",
        f"trainer.max_steps={args.steps}",
        "trainer.val_check_interval=1000",
        "trainer.limit_val_batches=1",
        "trainer.checkpoint_every_n_steps=1000",
        "trainer.logger=none",
        "trainer.progress_bar=false",
        f"trainer.out_dir={args.out}",
        f"parallel.expert_parallel={args.ep}",
        f"parallel.placement={args.placement or 'contiguous'}",
        f"parallel.fsdp={str(args.fsdp).lower()}",
        *(
            [f"parallel.param_dtype={args.param_dtype}", f"parallel.cpu_offload={args.cpu_offload}"]
            if args.fsdp
            else []
        ),
        "seed=7",
    ] + ([f"model.init_from={args.init_from}"] if getattr(args, "init_from", None) else [])


def router_overrides(args) -> list[str]:
    # a per-shard balancing loss is not the global one: no aux loss
    if args.c2r_profile:
        return [
            "router.name=c2r",
            "router.top_t=2",
            "router.aux_loss_coef=0",
            f"profile.path={args.c2r_profile}",
        ]
    return ["router.name=topk", "router.aux_loss_coef=0"]


def global_state(module, optimizer) -> dict[str, torch.Tensor]:
    """Model and optimizer state under global keys; FSDP shards: experts by row, dense gathered."""
    state = {"state_dict": module.state_dict(), "optimizer_states": [optimizer.state_dict()]}
    layout = expert_layout(module)
    if any(isinstance(v, DTensor) for v in state["state_dict"].values()):
        state, layout = localize_experts(state, module, [optimizer]), local_expert_layout(module)
    flat = model_to_global(state["state_dict"], layout)
    tensors, _ = optimizer_to_global(
        state["optimizer_states"][0], optimizer_param_names(optimizer, module), layout, 0
    )
    full = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in {**flat, **tensors}.items()}
    return {k: v.detach().clone() for k, v in full.items()}


class Record(L.Callback):
    def __init__(self, out: Path, dump: bool):
        self.out, self.dump, self.losses, self.norms = out, dump, [], []

    def on_train_start(self, trainer, module):
        if self.dump:
            state = global_state(module, trainer.optimizers[0])
            torch.save(state, self.out / f"restored.rank{trainer.global_rank}.pt")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        self.losses.append(float(loss))
        self.norms.append(float(module.grad_norm))

    def on_train_end(self, trainer, module):
        if trainer.is_global_zero:
            (self.out / "losses.json").write_text(json.dumps(self.losses))
            (self.out / "norms.json").write_text(json.dumps(self.norms))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dispatcher", default="grouplocal")
    parser.add_argument("--resume")
    parser.add_argument("--placement")
    parser.add_argument("--dump", action="store_true")
    parser.add_argument("--init-from", help="model.init_from: the weights every rank starts from")
    parser.add_argument("--cache", help="tokenised-corpus cache shared between runs")
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--param-dtype", "--param_dtype", default="float32", help="with --fsdp")
    parser.add_argument("--cpu-offload", "--cpu_offload", default="false", help="with --fsdp: true/false")
    parser.add_argument("--c2r-profile", "--c2r_profile", help="co-activation counts (.npy) for C2R routing")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(None, recipe_overrides(args))
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    trainer = build_trainer(recipe, callbacks=[Record(out, args.dump)])
    module = MoELanguageModel(recipe)
    datamodule = MoEDataModule(recipe.data, seed=recipe.seed)
    trainer.fit(module, datamodule=datamodule, ckpt_path=prepare_run(recipe, args.resume))
    trainer.save_checkpoint(out / "final.ckpt")


if __name__ == "__main__":
    main()
