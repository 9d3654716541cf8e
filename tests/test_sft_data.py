"""Fine-tuning as the paper ran it: the official prompt templates, one conversation per padded row
(padding invisible to every real token), and epoch-based steps with a warm-up ratio."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from moelight.data.datamodule import MoEDataModule, trim_to_longest
from moelight.data.instruct import IGNORE_INDEX, ChatEncoder
from moelight.data.prompt_templates import C2R_SYSTEM
from moelight.data.tokenizer import ByteTokenizer
from moelight.recipe import DataConfig, OptimConfig, Recipe, TrainerConfig
from moelight.training.epochs import resolve_max_steps
from moelight.training.optim import build_optimizer

TOK = ByteTokenizer()


def encode(template: str, messages: list[dict]) -> tuple[str, str]:
    """(the whole rendered conversation, the target text) as the byte tokenizer sees them."""
    ids, mask = ChatEncoder(TOK, template).encode(messages)
    return TOK.decode(ids[ids < 256]), TOK.decode(ids[mask & (ids < 256)])


def test_c2r_instruct_is_the_official_qwen_prompt():
    messages = [{"role": "user", "content": "  Name a prime. "}, {"role": "assistant", "content": "7"}]
    text, target = encode("c2r-instruct", messages)
    # UNITES-Lab/c2r-moe Qwen-MoE/finetune.py: build_instruction_prompt(instruction) + f"{output}\n<|EOT|>".
    prompt = f"{C2R_SYSTEM}\n### Instruction:\nName a prime.\n### Response:\n"
    assert text == prompt + "7\n<|EOT|>"
    assert target == "7\n<|EOT|>"
    ids, mask = ChatEncoder(TOK, "c2r-instruct").encode(messages)
    assert ids[0] != TOK.bos_id and not mask[: len(prompt)].any()


def test_vicuna_is_llama_moe_sft_layout():
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
    ]
    ids, mask = ChatEncoder(TOK, "vicuna").encode(messages)
    # llama-moe train_sft.py: Conversation(vicuna_v1.1) with system "" and sep2 = EOS, BOS first.
    assert ids[0] == TOK.bos_id and not mask[0]
    text = TOK.decode(ids[(ids < 256)])
    assert text == " USER: hi ASSISTANT: hello" + "USER: bye ASSISTANT: ciao"
    eos_positions = np.flatnonzero(ids == TOK.eos_id)
    assert mask[eos_positions].all() and len(eos_positions) == 2  # each answer's EOS is a target
    assert TOK.decode(ids[mask & (ids < 256)]) == " hello ciao"


def conversations(tmp_path, n: int = 30):
    lines = [
        json.dumps({"conversations": [f"q{i}" + "?" * (i % 7), f"answer number {i}" + "!" * i]})
        for i in range(n)
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def datamodule(tmp_path, **changes) -> MoEDataModule:
    cfg = DataConfig(
        source=str(conversations(tmp_path)),
        format="instruct",
        seq_len=256,
        batch_size=4,
        val_fraction=0.1,
        packing=False,
        prompt_template="c2r-instruct",
    ).model_copy(update=changes)
    return MoEDataModule(cfg, seed=0)


def test_unpacked_rows_hold_one_conversation_each(tmp_path):
    dm = datamodule(tmp_path)
    train = dm.corpus.meta["train_examples"]
    assert len(dm.train_dataset) == len(train)  # one row per conversation
    for row, e in enumerate(train):
        x, y = dm.train_dataset[row]
        n = min(len(e.ids) - 1, 256)
        assert torch.equal(x[:n], torch.from_numpy(e.ids[:n].astype(np.int64)))
        assert (x[n:] == TOK.pad_id).all() and (y[n:] == IGNORE_INDEX).all()
        assert TOK.decode(y[y != IGNORE_INDEX].numpy()).startswith("answer number")


def test_batches_are_cut_to_their_longest_row_or_kept_at_seq_len(tmp_path):
    x, y = next(iter(datamodule(tmp_path).train_dataloader()))
    last = max(int((row != IGNORE_INDEX).nonzero()[-1]) for row in y)
    assert x.shape == y.shape == (4, last + 1) and last + 1 < 256
    x, y = next(iter(datamodule(tmp_path, padding="max_length").train_dataloader()))
    assert x.shape == (4, 256)
    assert trim_to_longest([(torch.zeros(5), torch.full((5,), IGNORE_INDEX))])[0].shape == (1, 1)


@pytest.mark.slow
def test_padding_and_neighbours_are_invisible_to_a_conversation(tmp_path):
    """Each row's logits at its real tokens equal the conversation's logits alone (batch of one,
    no padding): no conversation sees another or its padding."""
    from moelight.model.build import build_model

    dm = datamodule(tmp_path, padding="max_length")
    recipe = Recipe.model_validate(
        {
            "model": {
                "n_layers": 2,
                "hidden_size": 32,
                "n_heads": 2,
                "expert_ffn_hidden_size": 16,
                "vocab_size": 260,
            }
        }
    )
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    x, y = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        batch = model(x)
        for row in range(x.shape[0]):
            n = int((x[row] != TOK.pad_id).sum())
            alone = model(x[row : row + 1, :n])
            torch.testing.assert_close(batch[row, :n], alone[0], rtol=1e-5, atol=1e-5)


def test_max_epochs_sets_the_steps_and_warmup_ratio_the_warmup():
    cfg = TrainerConfig(max_epochs=2)
    assert resolve_max_steps(cfg, num_rows=1030, global_batch=64) == math.ceil(2 * 1030 / 64) == 33
    assert resolve_max_steps(TrainerConfig(max_epochs=2, max_steps=10), 1030, 64) == 10  # explicit cap
    assert resolve_max_steps(TrainerConfig(max_steps=10), 1030, 64) == 10
    model = torch.nn.Linear(2, 2)
    sched = build_optimizer(model, OptimConfig(lr=1.0, warmup_ratio=0.03, min_lr_ratio=0.0), 100)[
        "lr_scheduler"
    ]
    factors = [sched["scheduler"].lr_lambdas[0](s) for s in range(6)]
    # ceil(0.03 x 100) = 3 warm-up steps, then the cosine starts from the full rate.
    assert factors[2] < 1.0 and factors[3] == pytest.approx(1.0)


@pytest.mark.slow
def test_fit_with_max_epochs_runs_exactly_that_many_passes(tmp_path, run_env):
    from moelight.cli.main import main

    source = conversations(tmp_path, 40)
    args = [
        "fit",
        "model.n_layers=1",
        "model.hidden_size=32",
        "model.n_heads=2",
        "model.expert_ffn_hidden_size=16",
        f"data.source={source}",
        "data.format=instruct",
        "data.packing=false",
        "data.seq_len=200",
        "data.batch_size=4",
        "data.val_fraction=0.1",
        "trainer.max_epochs=2",
        "trainer.accumulate_grad_batches=2",
        "trainer.val_check_interval=100",
        "trainer.progress_bar=false",
        "trainer.logger=csv",
        f"trainer.out_dir={tmp_path / 'run'}",
    ]
    assert main(args) == 0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    train_rows = len(
        MoEDataModule(
            DataConfig(source=str(source), format="instruct", packing=False, seq_len=200, val_fraction=0.1)
        ).train_dataset
    )
    assert ckpt["global_step"] == math.ceil(2 * train_rows / 8)  # global batch 4 x accumulate 2


def test_answers_before_the_first_question_are_dropped():
    from moelight.data.instruct import parse_record

    record = {
        "conversations": [
            {"from": "gpt", "value": "Hi!"},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
        ]
    }
    assert parse_record(record) == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
