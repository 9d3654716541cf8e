"""Build a module with its parameters on the meta device and its buffers real.

A model that `model.init_from` fills needs no initial weights: built this way it allocates no
parameter memory, so a rank's peak is the weights it loads. `torch.device("meta")` would move
the buffers too, and moelight's buffers (placement tables, C2R candidate lists, balancing
biases) are computed at construction and are not in the checkpoints; so only parameters move,
at registration (the same approach as accelerate's `init_empty_weights(include_buffers=False)`).
Parameter initialisers then run on meta tensors and do nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register
