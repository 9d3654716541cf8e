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


def c2r_instruct(messages: list[Message]) -> Rendered:
    system, turns = _system(messages, C2R_SYSTEM)
    segments: list[tuple[str, bool]] = []
    head = system + "\n"
    for m in turns:
        if m["role"] == "user":
            segments.append((f"{head}### Instruction:\n{m['content'].strip()}\n### Response:\n", False))
            head = "\n"
        else:
            segments.append((f"{m['content']}\n{EOT}", True))
    return Rendered(segments, eos_after_response=False, bos_first=False)


def vicuna(messages: list[Message]) -> Rendered:
    system, turns = _system(messages, "")
    segments: list[tuple[str, bool]] = []
    head = system + " "
    for m in turns:
        if m["role"] == "user":
            segments.append((f"{head}USER: {m['content']} ASSISTANT:", False))
            head = ""
        else:
            segments.append((f" {m['content']}", True))
    return Rendered(segments, eos_after_response=True, bos_first=True)


TEMPLATES = {"c2r-instruct": c2r_instruct, "vicuna": vicuna}
