"""Refuse, before anything is built, a model or batch that cannot fit this machine's memory.

`moelight fit` plans the step (moelight/memory/plan.py: arithmetic, microseconds) and compares
the per-rank peak, times the ranks on this host, with the memory this host has: device memory
on a GPU, available RAM on a CPU, keeping a margin. A model of 10^12 vocabulary rows or a batch
of 10^8 rows is one line naming the field and the bytes instead of minutes of allocation and a
traceback. `--force` or `trainer.skip_memory_check: true` skips it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from moelight.errors import ConfigError
from moelight.memory.plan import GIB, MemoryPlan, plan, setup_from_recipe
from moelight.recipe import DataConfig, ModelConfig, Recipe

MARGIN = 0.9  # of the memory found, what a run may plan to use
# Fields a too-large plan is blamed on: the one whose default value shrinks the peak the most.
SIZE_FIELDS = {
    "model": (
        "vocab_size",
        "hidden_size",
        "n_layers",
        "num_experts",
        "expert_ffn_hidden_size",
        "ffn_hidden_size",
        "shared_expert_ffn_hidden_size",
        "top_k",
    ),
    "data": ("batch_size", "seq_len"),
}
DEFAULTS = {"model": ModelConfig(), "data": DataConfig()}


def host_memory() -> int:
    """Bytes of RAM available now (Linux MemAvailable), else the physical total."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def machine_memory(recipe: Recipe) -> tuple[int, str, str]:
    """(bytes one rank may use, what they are, the planned device kind)."""
    accel = str(recipe.trainer.accelerator)
    if accel in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        return total, f"{torch.cuda.get_device_name(0)} memory", "cuda"
    devices = recipe.trainer.devices if isinstance(recipe.trainer.devices, int) else 1
    ranks_here = max(1, devices)  # CPU ranks of one node share its RAM
    return (
        host_memory() // ranks_here,
        "host RAM available" + (f" per rank ({ranks_here} ranks)" if ranks_here > 1 else ""),
        "cpu",
    )


def _with(recipe: Recipe, section: str, name: str, value) -> Recipe:
    part = getattr(recipe, section).model_copy(update={name: value})
    return recipe.model_copy(update={section: part})


def blamed_field(recipe: Recipe, device: str, peak: int) -> str:
    """The size field whose default value lowers the planned peak the most."""
    best, best_peak = "", peak
    for section, names in SIZE_FIELDS.items():
        for name in names:
            default = getattr(DEFAULTS[section], name)
            if getattr(getattr(recipe, section), name) <= default:
                continue
            trial = _with(recipe, section, name, default)
            trial_peak = plan(trial, setup_from_recipe(trial, device=device)).peak
            if trial_peak < best_peak:
                best, best_peak = f"{section}.{name}", trial_peak
    return best


def check_fits(recipe: Recipe, force: bool = False) -> MemoryPlan | None:
    """Raise a one-line ConfigError when the recipe's planned peak exceeds this machine's memory."""
    if force or recipe.trainer.skip_memory_check:
        return None
    available, what, device = machine_memory(recipe)
    result = plan(recipe, setup_from_recipe(recipe, device=device))
    if result.peak <= MARGIN * available:
        return result
    field = blamed_field(recipe, device, result.peak)
    section, _, name = field.partition(".")
    value = getattr(getattr(recipe, section), name) if field else None
    state = result.params + result.grads + result.optimizer
    raise ConfigError(
        field,
        f"{value} needs {result.peak / GIB:,.1f} GiB per rank by the memory plan (parameters, gradients "
        f"and optimizer state {state / GIB:,.1f} GiB, activations and logits "
        f"{(result.activations + result.logits) / GIB:,.1f} GiB), more than {MARGIN:.0%} of the "
        f"{available / GIB:,.1f} GiB of {what}; make it smaller (see `moelight bench memory`), or "
        "skip this check with --force or trainer.skip_memory_check=true",
    )
