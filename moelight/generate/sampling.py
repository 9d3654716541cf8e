"""Choosing the next token from the model's logits: greedy, or temperature / top-k / top-p sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moelight.errors import MoelightError


@dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy (argmax); top_k 0 = no top-k cut; top_p 1 = no nucleus cut."""

    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise MoelightError(f"--temperature {self.temperature}: must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise MoelightError(f"--top-k {self.top_k}: must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise MoelightError(f"--top-p {self.top_p}: must be in (0, 1] (1 = off)")


class Sampler:
    """Picks token ids from next-token logits; sampling runs on the CPU with its own seeded
    generator, so a seed gives the same text on any device that computes the same logits."""

    def __init__(self, settings: Sampling) -> None:
        self.settings = settings
        self.generator = torch.Generator()
        if settings.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(settings.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        s = self.settings
        logits = logits.detach().float().cpu()
        if s.temperature == 0:
            return int(logits.argmax())
        logits = logits / s.temperature
        if s.top_k:
            kth = logits.topk(min(s.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if s.top_p < 1:
            sorted_logits, order = logits.sort(descending=True)
            probs = sorted_logits.softmax(-1)
            # Drop a token when the tokens before it already reach top_p (the first always stays).
            drop = probs.cumsum(-1) - probs >= s.top_p
            logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
        return int(torch.multinomial(logits.softmax(-1), 1, generator=self.generator))
