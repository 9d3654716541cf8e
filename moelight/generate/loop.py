"""The generation loop: prompt ids -> streamed text, ended by EOS, a stop string or the token budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moelight.generate.decoder import Decoder
from moelight.generate.sampling import Sampler
from moelight.generate.stop_text import StopText


@dataclass
class Generated:
    text: str
    tokens: list[int]  # the generated ids, up to (not including) an EOS / the stop string's end
    prompt_tokens: int
    seconds: float  # prompt processing and generation
    first_token_seconds: float  # until the first generated token (prompt processing)
    stopped_by: str  # "eos", "stop", "max_new_tokens"

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("inf")


def generate(
    decoder: Decoder,
    tokenizer: Any,
    prompt_ids: list[int],
    sampler: Sampler,
    max_new_tokens: int,
    stops: list[str] | tuple[str, ...] = (),
    stop_ids: set[int] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Generated:
    """Sample up to `max_new_tokens` tokens after `prompt_ids`; `on_text` receives the text as it
    settles (for streaming). Ends at a token of `stop_ids` (default: the tokenizer's EOS) or when
    the text contains one of `stops` (the text is cut before it)."""
    stop_ids = {tokenizer.eos_id} if stop_ids is None else stop_ids
    text = StopText(tokenizer, stops)
    ids = list(prompt_ids)
    start = time.perf_counter()
    first = 0.0
    stopped_by = "max_new_tokens"
    for step in range(max_new_tokens):
        token = sampler(decoder.logits_after(ids))
        if step == 0:
            first = time.perf_counter() - start
        if token in stop_ids:
            stopped_by = "eos"
            break
        ids.append(token)
        piece = text.push(token)
        if piece and on_text is not None:
            on_text(piece)
        if text.stopped:
            stopped_by = "stop"
            break
    rest = text.finish()
    if rest and on_text is not None:
        on_text(rest)
    seconds = time.perf_counter() - start
    return Generated(text.text, ids[len(prompt_ids) :], len(prompt_ids), seconds, first, stopped_by)
