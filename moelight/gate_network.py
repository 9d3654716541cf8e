"""Router gate networks: the linear gate, LLaMA-MoE's MLP gate, and its learned gate noise.

Parameter names are part of the checkpoint format: a linear gate is `gate.weight`, the MLP gate
`gate.0.weight` / `gate.2.weight` (Linear -> Tanh -> Linear, as LLaMA-MoE's `gate_network`), the
noise projection `noise.weight` (LLaMA-MoE's `weight_noise`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

GateNetwork = Literal["linear", "mlp"]


def build_gate(hidden_size: int, num_experts: int, kind: GateNetwork, std: float = 0.02) -> nn.Module:
    """`linear`: logits = x W^T. `mlp`: logits = tanh(x W0^T) W2^T with W0 [E, d], W2 [E, E]; no biases."""
    first = nn.Linear(hidden_size, num_experts, bias=False)
    nn.init.normal_(first.weight, std=std)
    if kind == "linear":
        return first
    if kind == "mlp":
        return nn.Sequential(first, nn.Tanh(), nn.Linear(num_experts, num_experts, bias=False))
    raise ValueError(f"unknown gate network {kind!r}")


class GateNoise(nn.Module):
    """Input-dependent Gaussian noise on the logits (Shazeer et al. 2017): std = softplus(x W^T) + eps.

    W starts at zero, as in LLaMA-MoE, so the noise starts at std softplus(0) + eps everywhere.
    """

    def __init__(self, hidden_size: int, num_experts: int, epsilon: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_experts, hidden_size))
        self.epsilon = epsilon

    def forward(
        self, x: torch.Tensor, clean: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy logits, the noise added, its std), all [T, E] float32; draws one randn_like(clean)."""
        std = nn.functional.softplus(nn.functional.linear(x, self.weight).float()) + self.epsilon
        noise = torch.randn_like(clean) * std
        return clean + noise, noise, std
