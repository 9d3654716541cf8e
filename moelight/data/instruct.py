"""Instruction (chat) data: conversations -> token ids with the loss on the responses only.

Formats (local ``.jsonl``, one record per line, or ``.json`` holding a list of records):
- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``
- LIMA: ``{"conversations": ["user turn", "assistant turn", ...]}`` (alternating, user first);
  ShareGPT-style ``conversations`` of ``{"from": "human"|"gpt", "value": "..."}`` work too
- Alpaca: ``{"instruction": "...", "input": "...", "output": "..."}`` (``input`` optional)
- ``{"prompt": "...", "response"|"completion": "..."}``
A top-level ``"system"`` string becomes a system message. Trailing user turns (no answer) are
dropped; a record with no assistant turn is an error.

Rendering. With a Hugging Face tokenizer that has a chat template, conversations are rendered
by ``tokenizer.apply_chat_template``; each response is the text the template adds between the
prompt rendered with ``add_generation_prompt=True`` and the conversation including that response
(so it covers the template's end-of-turn marker: the model learns to stop). Without a template
(the byte tokenizer, or a tokenizer without one) a plain format is used:
``<|system|>\\n...\\n<|user|>\\n...\\n<|assistant|>\\n`` + response + EOS.
Prompt and response segments are tokenised separately, as generation sees them (the prompt alone,
then the model's own tokens). ``data.prompt_template`` picks one of the official scripts' layouts
instead (`prompt_templates.py`: ``c2r-instruct``, ``vicuna``).

Targets. ``loss_mask[j]`` is True where token j is part of a response; sequences built from the
stream take targets ``-100`` wherever the mask is False (prompts, templates, separators). Every
conversation ends with the tokenizer's EOS (appended, not a target, when the template did not
already end with it), so packed neighbours stay separated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from moelight.errors import ConfigError

from .corpus import Corpus, TokenSplit, is_validation, iter_jsonl, token_dtype
from .prompt_templates import TEMPLATES
from .tokenizer import ByteTokenizer, HFTokenizer

if TYPE_CHECKING:
    from moelight.recipe import DataConfig

PLAIN_ASSISTANT = "<|assistant|>\n"  # the plain format's response opener
PLAIN_USER = "<|user|>"
IGNORE_INDEX = -100  # targets with this value carry no loss (torch cross_entropy's default)
SUFFIXES = (".jsonl", ".json")
FIELD = "data.source"
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
}
FORMATS = (
    "'messages' (role/content), 'conversations' (alternating strings or from/value), "
    "'instruction'/'input'/'output', or 'prompt'/'response'"
)

Message = dict[str, str]
Tok = ByteTokenizer | HFTokenizer


# ---- parsing -------------------------------------------------------------------------------


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(FIELD, f"{where}: {what} is {type(value).__name__}, expected a string")
    return value


def _turns(items: Any, where: str, key: str, role_key: str, text_key: str, noun: str) -> list[Message]:
    """`messages` ({role, content} objects) or ShareGPT `conversations` ({from, value}) -> messages."""
    if not isinstance(items, list):
        raise ConfigError(FIELD, f"{where}: {key!r} must be a list of {{{role_key}, {text_key}}} objects")
    out = []
    for n, t in enumerate(items):
        if not isinstance(t, dict) or role_key not in t or text_key not in t:
            raise ConfigError(
                FIELD, f"{where}: {noun} {n} must be an object with {role_key!r} and {text_key!r}"
            )
        role = SHAREGPT_ROLES.get(str(t[role_key]).lower())
        if role is None:
            raise ConfigError(
                FIELD,
                f"{where}: {noun} {n} has {role_key} {t[role_key]!r} (allowed: {', '.join(SHAREGPT_ROLES)})",
            )
        out.append({"role": role, "content": _text(t[text_key], f"{noun} {n} {text_key}", where)})
    return out


def _conversations(items: Any, where: str) -> list[Message]:
    if isinstance(items, list) and items and all(isinstance(t, str) for t in items):
        # LIMA: alternating user / assistant strings, user first.
        return [{"role": ("user", "assistant")[n % 2], "content": t} for n, t in enumerate(items)]
    return _turns(items, where, "conversations", "from", "value", "conversation turn")


def parse_record(record: Any, where: str = "record") -> list[Message]:
    """One record in any supported format -> a list of {role, content} messages ending with a response."""
    if not isinstance(record, dict):
        raise ConfigError(FIELD, f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        msgs = _turns(record["messages"], where, "messages", "role", "content", "message")
    elif "conversations" in record:
        msgs = _conversations(record["conversations"], where)
    elif "instruction" in record:
        instruction = _text(record["instruction"], "'instruction'", where)
        extra = _text(record.get("input") or "", "'input'", where)
        answer = record.get("output", record.get("response"))
        if answer is None:
            raise ConfigError(FIELD, f"{where}: an 'instruction' record needs 'output'")
        user = f"{instruction}\n\n{extra}" if extra else instruction
        msgs = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _text(answer, "'output'", where)},
        ]
    elif "prompt" in record and ("response" in record or "completion" in record):
        answer = record.get("response", record.get("completion"))
        msgs = [
            {"role": "user", "content": _text(record["prompt"], "'prompt'", where)},
            {"role": "assistant", "content": _text(answer, "'response'", where)},
        ]
    else:
        keys = sorted(record)
        raise ConfigError(FIELD, f"{where}: not instruction data (keys {keys}); expected {FORMATS}")
    if "system" in record and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": _text(record["system"], "'system'", where)})
    while msgs and msgs[-1]["role"] != "assistant":
        msgs.pop()  # an unanswered last question teaches nothing
    if not msgs:
        raise ConfigError(FIELD, f"{where}: the conversation has no assistant response")
    system = [m for m in msgs[:1] if m["role"] == "system"]
    turns = msgs[len(system) :]
    if not any(m["role"] == "user" for m in turns):
        raise ConfigError(FIELD, f"{where}: the conversation must start with a user turn")
    # Answers before the first question are dropped, as llama-moe's SFT script drops them.
    first_user = next(i for i, m in enumerate(turns) if m["role"] == "user")
    return system + turns[first_user:]


def first_exchange(messages: list[Message]) -> list[Message]:
    """`data.turns: first`: the system message (if any), the first question and its answer."""
    answer = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[: answer + 1]


# ---- rendering and tokenising --------------------------------------------------------------


class ChatEncoder:
    """Conversation -> (token ids, response mask) with a named template (`prompt_template`), the
    tokenizer's chat template, or the plain format."""

    def __init__(self, tokenizer: Tok, prompt_template: str = "auto"):
        self.tok = tokenizer
        hf = tokenizer.hf_tokenizer if isinstance(tokenizer, HFTokenizer) else None
        self._named = TEMPLATES.get(prompt_template)
        use_chat = self._named is None and hf is not None and getattr(hf, "chat_template", None)
        self._template = hf if use_chat else None

    @property
    def uses_template(self) -> bool:
        return self._template is not None

    @property
    def style(self) -> str:
        if self._named is not None:
            return f"{self._named.name} template"
        return "chat template" if self._template is not None else "plain chat format"

    def _render(self, messages: list[Message], generation_prompt: bool) -> str:
        assert self._template is not None
        return self._template.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _template_segments(self, messages: list[Message], where: str) -> list[tuple[str, bool]]:
        segments: list[tuple[str, bool]] = []
        done = ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = self._render(messages[:i], generation_prompt=True)
            full = self._render(messages[: i + 1], generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise ConfigError(
                    "data.tokenizer",
                    f"{where}: the chat template does not render conversations prefix by prefix, so the "
                    "responses cannot be located; use a tokenizer without a chat template (plain format)",
                )
            segments += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
            done = full
        return segments

    def _plain_segments(self, messages: list[Message]) -> list[tuple[str, bool]]:
        segments: list[tuple[str, bool]] = []
        for m in messages:
            if m["role"] == "assistant":
                segments += [(PLAIN_ASSISTANT, False), (m["content"], True)]
            else:
                segments.append((f"<|{m['role']}|>\n{m['content']}\n", False))
        return segments

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Generation: text that ends a response besides the EOS token (the next turn's marker)."""
        if self._named is not None:
            return self._named.stops
        return () if self._template is not None else (PLAIN_USER, "<|system|>")

    def encode_prompt(self, messages: list[Message]) -> np.ndarray:
        """Generation: the ids a model continues to answer the last (user) turn of `messages`,
        tokenised segment by segment as in training, ending with the template's response opener."""
        if self._named is not None:
            rendered = self._named(messages)
            segments, eos_after_response = rendered.segments, rendered.eos_after_response
        elif self._template is not None:
            segments = self._template_segments(messages, "the conversation")
            done = "".join(text for text, _ in segments)
            segments.append((self._render(messages, generation_prompt=True)[len(done) :], False))
            eos_after_response = False
        else:
            segments, eos_after_response = self._plain_segments(messages) + [(PLAIN_ASSISTANT, False)], True
        ids, _ = self._tokens(segments, eos_after_response, self._bos_first)
        return ids

    @property
    def _bos_first(self) -> bool:
        return self._named is not None and self._named.bos_first

    def _tokens(
        self, segments: list[tuple[str, bool]], eos_after_response: bool, bos_first: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, response mask) of rendered segments, each tokenised on its own."""
        ids: list[np.ndarray] = []
        mask: list[np.ndarray] = []
        bos = getattr(self.tok, "bos_id", None)
        if bos_first and bos is not None:
            ids.append(np.array([bos], np.int64))
            mask.append(np.zeros(1, bool))
        for text, is_response in segments:
            t = np.asarray(self.tok.encode(text), dtype=np.int64) if text else np.zeros(0, np.int64)
            if is_response and eos_after_response:
                t = np.append(t, self.tok.eos_id)  # the end of turn: a target, so the model learns to stop
            ids.append(t)
            mask.append(np.full(len(t), is_response))
        out_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        return out_ids, np.concatenate(mask) if mask else np.zeros(0, bool)

    def encode(self, messages: list[Message], where: str = "record") -> tuple[np.ndarray, np.ndarray]:
        eos = self.tok.eos_id
        eos_after_response = self._template is None
        if self._named is not None:
            rendered = self._named(messages)
            segments, eos_after_response = rendered.segments, rendered.eos_after_response
        elif self._template is not None:
            segments = self._template_segments(messages, where)
        else:
            segments = self._plain_segments(messages)
        out_ids, out_mask = self._tokens(segments, eos_after_response, self._bos_first)
        if len(out_ids) == 0 or out_ids[-1] != eos:
            # A separator for packing, not a target: the template's own end-of-turn marks the stop.
            out_ids = np.append(out_ids, eos)
            out_mask = np.append(out_mask, False)
        return out_ids, out_mask


# ---- files and examples --------------------------------------------------------------------


@dataclass
class Example:
    key: str  # "file:line" (or "file:index" in a .json list): decides the train/val split
    ids: np.ndarray
    mask: np.ndarray  # True on response tokens


def instruct_files(source: str | Path) -> list[tuple[str, Path]]:
    """(relative name, path) of the .jsonl/.json files of a file or directory, sorted."""
    path = Path(os.path.expanduser(str(source)))
    if not path.exists():
        raise ConfigError(FIELD, f"instruction data not found: {path}")
    if path.is_file():
        return [(path.name, path)]
    files = sorted(
        (p.relative_to(path).as_posix(), p)
        for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in SUFFIXES and not any(s.startswith(".") for s in p.parts)
    )
    if not files:
        raise ConfigError(FIELD, f"no {'/'.join(SUFFIXES)} files found under {path}")
    return files


def read_records(path: Path, rel: str | None = None) -> Iterator[tuple[str, Any, int]]:
    """(key, record, size in bytes) of each record of a .jsonl file or a .json list."""
    rel = rel or path.name
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(FIELD, f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, list):
            raise ConfigError(FIELD, f"{path}: a .json file must hold a list of records (or use .jsonl)")
        for n, record in enumerate(data):
            yield f"{rel}:{n}", record, len(json.dumps(record))
        return
    for lineno, record, size in iter_jsonl(path, FIELD):
        yield f"{rel}:{lineno}", record, size


def load_examples(
    source: str | Path,
    tokenizer: Tok,
    max_bytes: int | None = None,
    prompt_template: str = "auto",
    turns: str = "all",
) -> list[Example]:
    """Every conversation under `source`, tokenised with its response mask (the first `max_bytes`
    bytes of records when given); `turns="first"` keeps each one's first exchange only."""
    encoder = ChatEncoder(tokenizer, prompt_template)
    out: list[Example] = []
    budget = float("inf") if max_bytes is None else max_bytes
    for rel, path in instruct_files(source):
        for key, record, size in read_records(path, rel):
            if budget <= 0:
                return out
            budget -= size
            messages = parse_record(record, key)
            if turns == "first":
                messages = first_exchange(messages)
            ids, mask = encoder.encode(messages, key)
            out.append(Example(key, ids, mask))
    return out


def pack(examples: list[Example], vocab_size: int) -> TokenSplit:
    """One token stream and its response mask, conversations back to back."""
    dtype = token_dtype(vocab_size)
    if not examples:
        return TokenSplit(tokens=np.zeros(0, dtype), loss_mask=np.zeros(0, bool))
    return TokenSplit(
        tokens=np.concatenate([e.ids for e in examples]).astype(dtype),
        loss_mask=np.concatenate([e.mask for e in examples]).astype(bool),
        documents=len(examples),
    )


# ---- sequences -----------------------------------------------------------------------------


def padded_sequences(examples: list[Example], seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, targets) [len(examples), seq_len]: one conversation per row, cut to seq_len + 1
    tokens, padded with `pad_id` (inputs) and -100 (targets)."""
    inputs = torch.full((len(examples), seq_len), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), seq_len), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        ids = torch.from_numpy(e.ids[: seq_len + 1].astype(np.int64))
        keep = torch.from_numpy(e.mask[: seq_len + 1].astype(bool))
        n = len(ids) - 1
        if n <= 0:
            continue
        inputs[row, :n] = ids[:-1]
        targets[row, :n] = ids[1:].masked_fill(~keep[1:], IGNORE_INDEX)
    return inputs, targets


class PaddedDataset(Dataset):
    """(input_ids, targets) pairs of instruction data, one conversation per row (`data.packing:
    false`); packed instruction data is the data module's `PackedDataset` over `pack(...)`."""

    def __init__(self, examples: list[Example], seq_len: int, pad_id: int = 0):
        self.inputs, self.targets = padded_sequences(examples, seq_len, pad_id)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[i], self.targets[i]


# ---- the corpus the data module packs ------------------------------------------------------


def build_instruct_corpus(cfg: DataConfig, tokenizer: Tok) -> Corpus:
    """Train/validation streams with response masks for `data.format: instruct`.

    A conversation goes to validation by the hash of its key (as documents do in the text
    corpus); when that leaves a split empty, the last `val_fraction` of the conversations (at
    least one) are validation; `val_fraction: 0` trains on every conversation.
    """
    if cfg.source == "embedded":
        raise ConfigError("data.source", "data.format: instruct needs a local .jsonl/.json file or directory")
    examples = load_examples(cfg.source, tokenizer, cfg.max_bytes, cfg.prompt_template, cfg.turns)
    if not examples:
        raise ConfigError(FIELD, f"{cfg.source}: no conversations found")
    flags = [is_validation(e.key, cfg.val_fraction) for e in examples]
    split = "document"
    if all(flags) or not any(flags):
        split = "position"
        n_val = max(1, round(len(examples) * cfg.val_fraction)) if len(examples) > 1 else 0
        if cfg.val_fraction == 0:
            n_val = 0  # every conversation trains (validation off, or from data.val_source)
        flags = [i >= len(examples) - n_val for i in range(len(examples))]
    train_examples = [e for e, v in zip(examples, flags, strict=True) if not v]
    val_examples = [e for e, v in zip(examples, flags, strict=True) if v]
    style = ChatEncoder(tokenizer, cfg.prompt_template).style
    layout = "packed" if cfg.packing else f"one per row, padded to the {cfg.padding.replace('_', ' ')}"
    return Corpus(
        train=pack(train_examples, tokenizer.vocab_size),
        val=pack(val_examples, tokenizer.vocab_size),
        source=f"instruct: {cfg.source} ({len(examples)} conversations, {style}, {layout})",
        split=split,
        # The conversations themselves, for the unpacked (padded) layout.
        meta={"train_examples": train_examples, "val_examples": val_examples},
    )
