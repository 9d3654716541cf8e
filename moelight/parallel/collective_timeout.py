"""Every multi-process strategy moelight builds takes `parallel.collective_timeout_s`.

A rank that waits longer than this on a collective (a peer died or stopped) stops the run instead
of hanging for torch's 30-minute default. The timeout goes in through each strategy's public
`timeout` constructor argument, wherever the strategy comes from:
- the recipe: `expert_parallel` for P > 1, DDP when the recipe asks for several processes;
- a registered name on the command line (`--trainer.strategy ddp`, `expert_parallel`, ...): that
  strategy is built from the registry with its registered arguments plus `timeout`;
- a class with arguments (`--trainer.strategy DDPStrategy --trainer.strategy.find_unused_parameters
  true`): its `timeout`, unless given there;
- Lightning's "auto", when it will run several processes: the `DDPStrategy` it would pick.
A strategy instance built in Python keeps what it was given.
"""

from __future__ import annotations

import importlib
import inspect
from datetime import timedelta
from typing import Any

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.accelerators import Accelerator, CUDAAccelerator
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry


def takes_timeout(cls: type) -> bool:
    """Whether `cls(timeout=...)` is accepted: its own argument, or passed on by `**kwargs` to a base's."""
    for klass in cls.__mro__:
        params = inspect.signature(klass.__init__).parameters
        if "timeout" in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


def devices_per_node(accelerator: str | Accelerator, devices: Any) -> int:
    """The processes per node Lightning starts for `devices` (an int, a list, "0,1", "auto", -1)."""
    if isinstance(devices, list | tuple):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):  # every GPU when GPUs are used; "auto" on CPU is one process
        if isinstance(accelerator, Accelerator):
            return accelerator.auto_device_count()
        gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and CUDAAccelerator.is_available())
        return CUDAAccelerator.auto_device_count() if gpu else 1
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.isdigit() else 1  # anything else: Lightning reports it


def strategy_with_timeout(
    strategy: Any, timeout: timedelta, accelerator: str | Accelerator, devices: Any, num_nodes: int
) -> Any:
    """The Trainer's `strategy` argument, built with `timeout` when it runs several processes."""
    if not isinstance(strategy, str):
        return strategy  # an instance: built by its owner
    if strategy == "auto":
        if accelerator not in ("auto", "cpu", "gpu", "cuda") and not isinstance(accelerator, Accelerator):
            return strategy  # e.g. TPUs: Lightning picks its own strategy there
        if devices_per_node(accelerator, devices) * num_nodes <= 1:
            return strategy  # one process: Lightning's single-device strategy
        return DDPStrategy(timeout=timeout)  # what Lightning's "auto" picks for several processes
    if strategy not in StrategyRegistry:
        return strategy  # not a registered name: Lightning reports it
    registered = StrategyRegistry[strategy]
    cls, params = registered["strategy"], dict(registered["init_params"])
    if not takes_timeout(cls) or "timeout" in params:
        return strategy
    return cls(**params, timeout=timeout)


def set_config_timeout(strategy_config: Any, timeout: timedelta) -> None:
    """A `class_path` + `init_args` strategy (jsonargparse) gets `timeout` unless it names its own."""
    init_args = getattr(strategy_config, "init_args", None)
    class_path = getattr(strategy_config, "class_path", None)
    if init_args is None or class_path is None:
        return
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if takes_timeout(cls) and init_args.get("timeout") in (None, default_pg_timeout):
        init_args["timeout"] = timeout
