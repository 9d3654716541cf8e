"""Measure a recipe's training-step peak on CPU (one process), to set beside its plan."""

from __future__ import annotations

import torch

from moelight.memory.live_bytes import peak_bytes, tensor_bytes
from moelight.model.build import build_model
from moelight.recipe import Recipe


def measured_step_peak(recipe: Recipe, steps: int = 2) -> int:
    """Peak live bytes of a training step (forward, backward, AdamW step, gradients set to None)
    of the recipe's model at data.batch_size x data.seq_len, fp32 on CPU: the state that exists
    before the step (parameters, AdamW moments after a first step) plus the step's own peak."""
    torch.manual_seed(recipe.seed)
    model = build_model(recipe)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shape = (recipe.data.batch_size, recipe.data.seq_len)
    x = torch.randint(0, recipe.model.vocab_size, shape)
    y = torch.randint(0, recipe.model.vocab_size, shape)

    def step() -> None:
        loss = model(x, targets=y, loss_chunk_tokens=recipe.trainer.loss_chunk_tokens) + model.aux_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(steps - 1):
        step()  # AdamW's moments exist from the first step on
    state = [*model.parameters(), *model.buffers()]
    state += [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(state) + peak_bytes(step)


def measured_cuda_peak(recipe: Recipe, steps: int = 2) -> int:
    """`torch.cuda.max_memory_allocated` over training steps of the recipe's model on CUDA under
    bf16 autocast (fp32 parameters and AdamW state: the plan's `bf16-mixed`)."""
    device = torch.device("cuda")
    torch.manual_seed(recipe.seed)
    with device:
        model = build_model(recipe)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shape = (recipe.data.batch_size, recipe.data.seq_len)
    x = torch.randint(0, recipe.model.vocab_size, shape, device=device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, targets=x, loss_chunk_tokens=recipe.trainer.loss_chunk_tokens) + model.aux_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()
