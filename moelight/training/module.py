"""The LightningModule: a MoE transformer trained with next-token cross-entropy plus router losses."""

from __future__ import annotations

import time

import lightning as L
import torch
from torchmetrics import MeanMetric

from moelight.errors import ConfigError
from moelight.load import load_init_weights
from moelight.model.build import build_model
from moelight.model.meta_params import parameters_on_meta
from moelight.moe.dispatch import ExpertParallelContext
from moelight.recipe import Recipe, validate_recipe
from moelight.training.metrics import dispatch_metrics, routing_metrics
from moelight.training.nonfinite import step_skipped, update_overflow, updates_taken
from moelight.training.optim import build_optimizer
from moelight.training.router_hooks import (
    after_optimizer_step,
    begin_router_step,
    discard_router_step,
    router_scalars,
)
from moelight.training.throughput import ThroughputWindow


def check_vocab(recipe: Recipe, tokenizer_vocab: int) -> None:
    """Token ids at or above model.vocab_size would index past the embedding table."""
    if recipe.model.vocab_size < tokenizer_vocab:
        raise ConfigError(
            "model.vocab_size",
            f"{recipe.model.vocab_size} is smaller than the tokenizer's vocabulary ({tokenizer_vocab}); "
            f"set model.vocab_size >= {tokenizer_vocab}",
        )


class MoELanguageModel(L.LightningModule):
    def __init__(self, recipe: Recipe | dict):
        """`recipe`: a Recipe, or its dict form (what checkpoints store, so that
        `MoELanguageModel.load_from_checkpoint(path)` rebuilds the model)."""
        super().__init__()
        self.recipe = recipe if isinstance(recipe, Recipe) else validate_recipe(recipe)
        self.save_hyperparameters({"recipe": self.recipe.model_dump(mode="json")})
        self.model = None
        self.val_loss = MeanMetric()
        self._t_last: float | None = None
        self.throughput = ThroughputWindow()
        self.grad_norm: torch.Tensor | None = None  # before clipping, set by configure_gradient_clipping

    def configure_model(self) -> None:
        if self.model is not None:
            return
        # An expert-parallel strategy exposes where this rank sits; otherwise one device holds all.
        ep = getattr(self.trainer.strategy, "ep_context", None) if self._trainer else None
        if not self.recipe.model.init_from:
            self.model = build_model(self.recipe, ep or ExpertParallelContext())
            return
        # Weights to be loaded need no initial values: no parameter memory until each is read.
        with parameters_on_meta():
            model = build_model(self.recipe, ep or ExpertParallelContext())
        load_init_weights(model, self.recipe.model.init_from)
        self.model = model  # only once loaded: teardown after a failed load moves no meta tensors

    def setup(self, stage: str) -> None:
        self.throughput = ThroughputWindow(self.trainer.log_every_n_steps)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "vocab_size"):
            check_vocab(self.recipe, datamodule.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def _lm_loss(self, batch) -> torch.Tensor:
        x, y = batch  # the loss inside the model's forward, over row chunks (moelight/model/loss.py)
        return self.model(x, targets=y, loss_chunk_tokens=self.recipe.trainer.loss_chunk_tokens)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        begin_router_step(self.model.moe_layers, updates_taken(self.trainer))
        loss = self._lm_loss(batch)
        aux = self.model.aux_loss().to(loss.device)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)  # the mean over ranks
        self.log("train/ppl", torch.exp(loss.detach().clamp(max=20)))
        for layer in self.model.moe_layers:
            for name, value in layer.aux_losses.items():
                self.log(f"aux/{name}/l{layer.ctx.layer_index}", value.detach())
        self.log_dict(router_scalars(self.model.moe_layers))
        now = time.perf_counter()
        if self._t_last is not None:  # the time since the previous step: forward, backward, update
            self.throughput.add(batch[0].numel() * self.trainer.world_size, now - self._t_last)
            self.log("tokens_per_s", self.throughput.rate(), prog_bar=True)  # over the last steps
        self._t_last = now
        if self.trainer.global_step % self.trainer.log_every_n_steps == 0:
            metrics = routing_metrics(self.model.moe_layers) | dispatch_metrics(self.model.moe_layers)
            self.log_dict(metrics)
        return loss + aux

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        with update_overflow(self.trainer, optimizer):
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if step_skipped(self.trainer):  # a dropped step (on_nonfinite: skip) is no update
            discard_router_step(self.model.moe_layers)
        else:
            after_optimizer_step(self.model.moe_layers)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clipping by norm is by the norm of the whole model's gradient: a distributed strategy
        whose gradients are split over ranks (experts, FSDP shards) provides `clip_grad_norm`.
        The norm before clipping is kept in `grad_norm` (for logging and the tests)."""
        if not gradient_clip_val or gradient_clip_algorithm == "value":
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        clip = getattr(self.trainer.strategy, "clip_grad_norm", None)
        if clip is not None:
            self.grad_norm = clip(optimizer, float(gradient_clip_val))
        else:
            params = list(self.trainer.precision_plugin.main_params(optimizer))
            self.grad_norm = torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val))

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if not step_skipped(self.trainer):  # the schedule counts updates taken
            super().lr_scheduler_step(scheduler, metric)

    def validation_step(self, batch, batch_idx: int) -> None:
        loss = self._lm_loss(batch)
        self.val_loss.update(loss, weight=batch[0].shape[0])

    def on_validation_start(self) -> None:
        self._t_last = None  # don't count validation time against training throughput

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # synced across ranks by torchmetrics
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/ppl", torch.exp(loss.clamp(max=20)))

    def configure_optimizers(self):
        # The steps this Trainer will take: its max_steps, which trainer.max_epochs (EpochBudget)
        # has resolved from the loaded data by now.
        return build_optimizer(self.model, self.recipe.optim, self.trainer.estimated_stepping_batches)
