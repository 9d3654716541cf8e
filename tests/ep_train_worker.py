"""A small training run with or without expert parallelism, for tests/test_expert_parallel.py.

    python tests/ep_train_worker.py OUT_DIR --ep P --devices N --batch B --steps S
        [--dispatcher NAME] [--resume PATH] [--placement FILE] [--dump] [--cache DIR] [--init-from PATH]

Lightning launches the other ranks by re-running this command line (its subprocess launcher).
Writes, from rank 0, OUT_DIR/losses.json (the global-mean loss of every step) and saves
OUT_DIR/final.ckpt (a sharded directory with P > 1, a file otherwise). With --dump every rank
writes OUT_DIR/restored.rank<r>.pt: its model and optimizer state under global keys (see
moelight/parallel/checkpoint.py) as they are right after the checkpoint was restored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch

from moelight.data.datamodule import MoEDataModule
from moelight.parallel.checkpoint import (
    expert_layout,
    model_to_global,
    optimizer_param_names,
    optimizer_to_global,
)
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
        "router.name=topk",
        "router.aux_loss_coef=0",  # a per-shard balancing loss is not the global one
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
        "seed=7",
    ] + ([f"model.init_from={args.init_from}"] if getattr(args, "init_from", None) else [])


def global_state(module, optimizer) -> dict[str, torch.Tensor]:
    layout = expert_layout(module)
    flat = model_to_global(module.state_dict(), layout)
    tensors, _ = optimizer_to_global(
        optimizer.state_dict(), optimizer_param_names(optimizer, module), layout, 0
    )
    return {k: v.detach().clone() for k, v in {**flat, **tensors}.items()}


class Record(L.Callback):
    def __init__(self, out: Path, dump: bool):
        self.out, self.dump, self.losses = out, dump, []

    def on_train_start(self, trainer, module):
        if self.dump:
            state = global_state(module, trainer.optimizers[0])
            torch.save(state, self.out / f"restored.rank{trainer.global_rank}.pt")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        self.losses.append(float(loss))

    def on_train_end(self, trainer, module):
        if trainer.is_global_zero:
            (self.out / "losses.json").write_text(json.dumps(self.losses))


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
