"""A conversation with a trained model, rendered with the recipe's prompt template
(`data.prompt_template`: a named template, the tokenizer's chat template, or the plain format)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moelight.data.instruct import ChatEncoder
from moelight.generate.decoder import Decoder
from moelight.generate.loop import Generated, generate
from moelight.generate.sampling import Sampler


class ChatSession:
    def __init__(
        self,
        decoder: Decoder,
        tokenizer: Any,
        prompt_template: str,
        sampler: Sampler,
        max_new_tokens: int,
        system: str | None = None,
    ) -> None:
        self.decoder, self.tokenizer, self.sampler = decoder, tokenizer, sampler
        self.max_new_tokens = max_new_tokens
        self.encoder = ChatEncoder(tokenizer, prompt_template)
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.reset()

    @property
    def style(self) -> str:
        return self.encoder.style

    def reset(self) -> None:
        """Forget the conversation (the KV cache is reused only where the new prompt matches it)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, user_text: str, on_text: Callable[[str], None] | None = None) -> Generated:
        """The model's answer to `user_text`, streamed to `on_text`; both join the history."""
        self.messages.append({"role": "user", "content": user_text})
        prompt = self.encoder.encode_prompt(self.messages).tolist()
        out = generate(
            self.decoder,
            self.tokenizer,
            prompt,
            self.sampler,
            self.max_new_tokens,
            stops=self.encoder.stop_strings,
            on_text=on_text,
        )
        self.messages.append({"role": "assistant", "content": out.text.strip()})
        return out
