"""Instruction data: formats, chat templates, loss only on responses, packing and padding."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from moelight.data.datamodule import PackedDataset
from moelight.data.instruct import (
    IGNORE_INDEX,
    ChatEncoder,
    build_instruct_corpus,
    load_examples,
    pack,
    padded_sequences,
    parse_record,
)
from moelight.data.tokenizer import ByteTokenizer, load_tokenizer
from moelight.errors import ConfigError
from moelight.recipe import DataConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

USER, ASSISTANT = "user", "assistant"


def msgs(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


# ---- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record,expected",
    [
        (
            {"conversations": ["hi", "hello", "how?", "so."]},
            msgs((USER, "hi"), (ASSISTANT, "hello"), (USER, "how?"), (ASSISTANT, "so.")),
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            msgs((USER, "q"), (ASSISTANT, "a")),
        ),
        (
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            msgs(("system", "be brief"), (USER, "q"), (ASSISTANT, "a")),
        ),
        ({"instruction": "add", "input": "1 2", "output": "3"}, msgs((USER, "add\n\n1 2"), (ASSISTANT, "3"))),
        ({"instruction": "say hi", "input": "", "output": "hi"}, msgs((USER, "say hi"), (ASSISTANT, "hi"))),
        ({"prompt": "p", "completion": "c"}, msgs((USER, "p"), (ASSISTANT, "c"))),
        (
            {"system": "s", "prompt": "p", "response": "r"},
            msgs(("system", "s"), (USER, "p"), (ASSISTANT, "r")),
        ),
        # LIMA-style odd count: the unanswered last question is dropped.
        ({"conversations": ["q1", "a1", "q2"]}, msgs((USER, "q1"), (ASSISTANT, "a1"))),
    ],
)
def test_formats(record, expected):
    assert parse_record(record) == expected


@pytest.mark.parametrize(
    "record,needle",
    [
        ({"text": "plain"}, "not instruction data (keys ['text'])"),
        ({"conversations": ["only a question"]}, "no assistant response"),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "must start with a user turn"),
        ({"messages": [{"role": "wizard", "content": "a"}]}, "role 'wizard'"),
        ({"messages": [{"role": "user", "content": 3}]}, "content is int, expected a string"),
        ({"messages": "x"}, "'messages' must be a list of {role, content} objects"),
        ({"messages": [{"role": "user"}]}, "message 0 must be an object with 'role' and 'content'"),
        ({"conversations": 5}, "'conversations' must be a list of {from, value} objects"),
        (
            {"conversations": [{"from": "human"}]},
            "conversation turn 0 must be an object with 'from' and 'value'",
        ),
        (
            {"conversations": [{"from": "elf", "value": "a"}]},
            "conversation turn 0 has from 'elf' (allowed: system,",
        ),
        (
            {"conversations": [{"from": "human", "value": 2}]},
            "conversation turn 0 value is int, expected a string",
        ),
        ({"instruction": "x"}, "needs 'output'"),
        (["not", "an", "object"], "expected a JSON object, got list"),
    ],
)
def test_format_errors(record, needle):
    with pytest.raises(ConfigError, match=None) as err:
        parse_record(record, "data.jsonl:7")
    assert needle in str(err.value) and "data.jsonl:7" in str(err.value)


# ---- rendering: plain format (no chat template) ---------------------------------------------


def targets_text(tok, ids: np.ndarray, mask: np.ndarray) -> str:
    return tok.decode(ids[mask])


def test_plain_format_masks_everything_but_responses():
    tok = ByteTokenizer()
    ids, mask = ChatEncoder(tok).encode(
        msgs((USER, "2+2?"), (ASSISTANT, "4"), (USER, "and 3+3?"), (ASSISTANT, "6"))
    )
    assert tok.decode(ids) == "<|user|>\n2+2?\n<|assistant|>\n4<|user|>\nand 3+3?\n<|assistant|>\n6"
    assert targets_text(tok, ids, mask) == "46"
    # Each response ends with EOS, which is a target (the model learns to stop).
    eos_positions = np.flatnonzero(ids == tok.eos_id)
    assert len(eos_positions) == 2 and mask[eos_positions].all()
    assert ids[-1] == tok.eos_id


# ---- rendering: a local tokenizer's chat template -------------------------------------------


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory):
    pytest.importorskip("transformers", reason="moelight[hf] extra not installed")
    from moelight.hf.tiny import make_tiny_tokenizer

    return load_tokenizer(str(make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))))


def test_chat_template_targets_are_the_responses(chat_tok):
    conversation = msgs((USER, "hé?"), (ASSISTANT, "oui"), (USER, "and?"), (ASSISTANT, "non"))
    enc = ChatEncoder(chat_tok)
    assert enc.uses_template
    ids, mask = enc.encode(conversation)
    rendered = chat_tok.hf_tokenizer.apply_chat_template(conversation, tokenize=False)
    # Segment-wise tokenisation reproduces the whole rendered text, plus one EOS separator.
    assert chat_tok.decode(ids[:-1]) == rendered
    assert ids[-1] == chat_tok.eos_id and not mask[-1]
    # Targets: each response with the template's end-of-turn marker, nothing of the prompts.
    assert targets_text(chat_tok, ids, mask) == "oui<|im_end|>\nnon<|im_end|>\n"
    prompt = chat_tok.decode(ids[~mask])
    assert "You are a helpful assistant." in prompt and "<|im_start|>assistant\n" in prompt


def test_tokenizer_without_template_uses_plain_format(tmp_path):
    pytest.importorskip("transformers", reason="moelight[hf] extra not installed")
    from moelight.hf.tiny import make_tiny_tokenizer

    tok = load_tokenizer(str(make_tiny_tokenizer(tmp_path, chat_template=False)))
    ids, mask = ChatEncoder(tok).encode(msgs((USER, "q"), (ASSISTANT, "a")))
    assert not ChatEncoder(tok).uses_template
    assert targets_text(tok, ids, mask) == "a<|im_end|>"


# ---- sequences -----------------------------------------------------------------------------


def examples_file(tmp_path, n: int = 12):
    lines = [json.dumps({"conversations": [f"question {i}?", f"answer {i}."]}) for i in range(n)]
    path = tmp_path / "lima.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_packed_sequences_loss_only_on_responses(tmp_path):
    """The data module's packing (`pack` + `PackedDataset`) of instruction data."""
    tok = ByteTokenizer()
    examples = load_examples(examples_file(tmp_path), tok)
    split = pack(examples, tok.vocab_size)
    ds = PackedDataset(split.tokens, 16, split.loss_mask)
    inputs = torch.stack([ds[i][0] for i in range(len(ds))])
    targets = torch.stack([ds[i][1] for i in range(len(ds))])
    assert inputs.shape == targets.shape and inputs.shape[1] == 16
    assert len(ds) == (sum(len(e.ids) for e in examples) - 1) // 16
    stream = np.concatenate([e.ids for e in examples])
    mask = np.concatenate([e.mask for e in examples])
    # Sequence i covers stream[i*16 : i*16 + 17]; targets are the next tokens where they are responses.
    for i in range(len(ds)):
        chunk = torch.from_numpy(stream[i * 16 : i * 16 + 17].astype(np.int64))
        keep = torch.from_numpy(mask[i * 16 + 1 : i * 16 + 17])
        assert torch.equal(inputs[i], chunk[:-1])
        assert torch.equal(targets[i][keep], chunk[1:][keep])
        assert (targets[i][~keep] == IGNORE_INDEX).all()
    kept = tok.decode(targets[targets != IGNORE_INDEX].numpy())
    assert "answer 1." in kept and "question" not in kept


def test_padded_sequences(tmp_path):
    tok = ByteTokenizer()
    examples = load_examples(examples_file(tmp_path, 3), tok)
    inputs, targets = padded_sequences(examples, seq_len=64, pad_id=tok.pad_id)
    assert inputs.shape == (3, 64)
    for row, e in enumerate(examples):
        n = len(e.ids) - 1
        assert torch.equal(inputs[row, :n], torch.from_numpy(e.ids[:-1].astype(np.int64)))
        assert (inputs[row, n:] == tok.pad_id).all() and (targets[row, n:] == IGNORE_INDEX).all()
        answer = tok.decode(targets[row][targets[row] != IGNORE_INDEX].numpy())
        assert answer == f"answer {row}."
    # Truncation keeps the first seq_len + 1 tokens.
    short_inputs, _ = padded_sequences(examples, seq_len=4, pad_id=0)
    assert torch.equal(short_inputs[0], torch.from_numpy(examples[0].ids[:4].astype(np.int64)))


def test_directory_of_json_and_jsonl(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n\n")
    (tmp_path / "b.json").write_text(json.dumps([{"messages": msgs((USER, "q"), (ASSISTANT, "a"))}]))
    (tmp_path / "notes.txt").write_text("ignored")
    examples = load_examples(tmp_path, ByteTokenizer())
    assert [e.key for e in examples] == ["a.jsonl:1", "b.json:0"]


def test_bad_json_line_names_file_and_line(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n{oops\n")
    with pytest.raises(ConfigError, match=r"d.jsonl:2: not valid JSON"):
        load_examples(tmp_path / "d.jsonl", ByteTokenizer())


# ---- the corpus the data module packs ------------------------------------------------------


def test_instruct_corpus_splits_and_masks(tmp_path):
    cfg = DataConfig(source=str(examples_file(tmp_path, 40)), format="instruct", seq_len=16, val_fraction=0.1)
    corpus = build_instruct_corpus(cfg, ByteTokenizer())
    assert corpus.train.documents + corpus.val.documents == 40
    assert corpus.val.documents >= 1 and corpus.train.documents >= 1
    for split in (corpus.train, corpus.val):
        assert split.loss_mask is not None and len(split.loss_mask) == len(split.tokens)
        assert 0 < split.loss_mask.mean() < 1
    with pytest.raises(ConfigError, match="needs a local"):
        build_instruct_corpus(DataConfig(format="instruct"), ByteTokenizer())


def test_datamodule_format_instruct(tmp_path):
    from moelight.data.datamodule import MoEDataModule

    cfg = DataConfig(
        source=str(examples_file(tmp_path, 60)),
        format="instruct",
        seq_len=16,
        batch_size=4,
        val_fraction=0.1,
        cache_dir=str(tmp_path / "cache"),
    )
    dm = MoEDataModule(cfg, seed=0)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 16)
    assert (y == IGNORE_INDEX).any() and (y != IGNORE_INDEX).any()
    text = ByteTokenizer().decode(y[y != IGNORE_INDEX].numpy())
    assert "question" not in text
