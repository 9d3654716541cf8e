"""What a router or dispatcher knows about the MoE layer it serves."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerContext:
    """Static facts about one MoE layer.

    placement: LongTensor[E], the device (expert-parallel rank) holding each global expert.
    collaborators: LongTensor[E, E] or None; row i lists the other experts by decreasing
    co-activation with i (i itself last), from the recipe's `profile.path`.
    coactivation: float[E, E] or None, the raw counts when the profile had them.
    """

    hidden_size: int
    num_experts: int
    top_k: int
    layer_index: int
    expert_hidden_size: int = 0  # each expert's FFN width (model.expert_ffn_hidden_size)
    placement: torch.Tensor | None = None
    collaborators: torch.Tensor | None = None
    coactivation: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.placement is None:
            self.placement = torch.zeros(self.num_experts, dtype=torch.long)

    @property
    def ffn_hidden_size(self) -> int:
        """The former name of `expert_hidden_size`, kept so out-of-tree plugins written for it still run."""
        return self.expert_hidden_size

    @property
    def num_devices(self) -> int:
        return int(self.placement.max().item()) + 1
