"""Named prompt templates of the C2R paper's official fine-tuning scripts (`data.prompt_template`).

- `c2r-instruct`: UNITES-Lab/c2r-moe `Qwen-MoE/finetune.py` (taken from DeepSeek-MoE's fine-tuning
  script): a fixed system line, then ``### Instruction:\\n{instruction}\\n### Response:\\n``; the
  target is ``{response}\\n<|EOT|>`` (``<|EOT|>`` is literal text, tokenised as such).
- `vicuna`: pjlab-sys4nlp/llama-moe `smoe/entrypoint/sft/train_sft.py`, which the paper's LLaMA-MoE
  script runs: FastChat's vicuna_v1.1 layout with an empty system message,
  ``{system} USER: {u} ASSISTANT: {a}</s>USER: ...`` with the tokenizer's BOS first and its EOS
  (``</s>``) closing each answer; the answer and its EOS are the targets.

Multi-turn conversations repeat the instruction/response block (the official Qwen script only
ever sees one turn). A record's own system message replaces the template's.
"""

from __future__ import annotations

from dataclasses import dataclass

Message = dict[str, str]

C2R_SYSTEM = (
    "You are an AI assistant, developed by DeepSeek Company. For politically sensitive questions, "
    "security and privacy issues, you will refuse to answer."
)
EOT = "<|EOT|>"


@dataclass(frozen=True)
class Rendered:
    segments: list[tuple[str, bool]]  # (text, is_response)
    eos_after_response: bool  # the tokenizer's EOS closes every response (as a target)
    bos_first: bool  # the tokenizer's BOS opens the conversation (not a target)


def _system(messages: list[Message], default: str) -> tuple[str, list[Message]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return default, messages


@dataclass(frozen=True)
class Template:
    """One template's strings; every template renders turns with the same loop (`__call__`).

    A user turn is `user.format(head=..., content=...)`, where head is `first_head` (formatted
    with the system message) before the first user turn and `later_head` after; an assistant
    turn is `response.format(content=...)` and is a target.
    """

    name: str  # the `data.prompt_template` value
    default_system: str
    first_head: str
    later_head: str
    user: str
    response: str
    strip_user: bool  # strip the user's text (the Qwen script does; FastChat does not)
    eos_after_response: bool
    bos_first: bool
    stops: tuple[str, ...] = ()  # generation: text that ends a response (besides the EOS token)

    def __call__(self, messages: list[Message]) -> Rendered:
        system, turns = _system(messages, self.default_system)
        segments: list[tuple[str, bool]] = []
        head = self.first_head.format(system=system)
        for m in turns:
            if m["role"] == "user":
                content = m["content"].strip() if self.strip_user else m["content"]
                segments.append((self.user.format(head=head, content=content), False))
                head = self.later_head
            else:
                segments.append((self.response.format(content=m["content"]), True))
        return Rendered(segments, eos_after_response=self.eos_after_response, bos_first=self.bos_first)


C2R_INSTRUCT = Template(
    name="c2r-instruct",
    default_system=C2R_SYSTEM,
    first_head="{system}\n",
    later_head="\n",
    user="{head}### Instruction:\n{content}\n### Response:\n",
    response="{content}\n" + EOT,
    strip_user=True,
    eos_after_response=False,
    bos_first=False,
    stops=(EOT, "### Instruction:"),
)
VICUNA = Template(
    name="vicuna",
    default_system="",
    first_head="{system} ",
    later_head="",
    user="{head}USER: {content} ASSISTANT:",
    response=" {content}",
    strip_user=False,
    eos_after_response=True,
    bos_first=True,
    stops=("USER:",),
)
TEMPLATES = {t.name: t for t in (C2R_INSTRUCT, VICUNA)}
