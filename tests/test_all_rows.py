"""`data.val_fraction: 0` trains on every row; `data.val_source` validates on a separate file;
`data.turns` picks every turn or the first exchange of multi-turn conversations."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from moelight.cli.fit import fit
from moelight.cli.main import main
from moelight.data.datamodule import MoEDataModule
from moelight.data.instruct import ChatEncoder
from moelight.data.tokenizer import ByteTokenizer
from moelight.recipe import DataConfig, load_recipe

TOK = ByteTokenizer()


def lima(tmp_path, n: int = 20, name: str = "lima.jsonl"):
    """n conversations; every fifth has a second exchange (LIMA's multi-turn rows)."""
    rows = []
    for i in range(n):
        turns = [f"question {i}?", f"answer {i}."]
        if i % 5 == 0:
            turns += [f"follow-up {i}?", f"second answer {i}."]
        rows.append(json.dumps({"conversations": turns}))
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n")
    return path


def instruct(tmp_path, **changes) -> MoEDataModule:
    cfg = DataConfig(
        source=str(lima(tmp_path)),
        format="instruct",
        seq_len=64,
        batch_size=2,
        packing=False,
        prompt_template="c2r-instruct",
        val_fraction=0.0,
    ).model_copy(update=changes)
    return MoEDataModule(cfg, seed=0)


def test_val_fraction_zero_trains_on_every_conversation(tmp_path):
    dm = instruct(tmp_path)
    keys = [e.key for e in dm.corpus.meta["train_examples"]]
    assert keys == [f"lima.jsonl:{i}" for i in range(1, 21)]  # every line, in order
    assert dm.corpus.meta["val_examples"] == []
    # The held-out default loses rows: the same file at val_fraction 0.1 trains on fewer.
    held = instruct(tmp_path, val_fraction=0.1)
    assert len(held.corpus.meta["train_examples"]) < 20


def test_val_fraction_zero_on_a_text_corpus_keeps_every_token(tmp_path, run_env):
    text = tmp_path / "a.txt"
    text.write_text("abcdefgh" * 500)
    cfg = DataConfig(source=str(text), seq_len=32, val_fraction=0.0)
    dm = MoEDataModule(cfg)
    tokens = TOK.encode_bytes(text.read_bytes())
    assert len(dm.corpus.train.tokens) == len(tokens) + 1  # the document and its EOS
    assert len(dm.corpus.val.tokens) == 0
    assert "val: none" in dm.describe()


def test_val_source_is_all_of_another_file(tmp_path):
    other = lima(tmp_path, n=6, name="held.jsonl")
    dm = instruct(tmp_path, val_source=str(other))
    assert len(dm.corpus.meta["train_examples"]) == 20
    val_keys = [e.key for e in dm.corpus.meta["val_examples"]]
    assert val_keys == [f"held.jsonl:{i}" for i in range(1, 7)]
    assert len(dm.val_dataset) == 6


def test_val_source_with_a_held_out_split_is_refused():
    with pytest.raises(ValueError, match="val_source replaces the held-out split"):
        DataConfig(val_source="x.jsonl", val_fraction=0.1)


def test_turns_first_keeps_the_first_exchange(tmp_path):
    first = instruct(tmp_path, turns="first").corpus.meta["train_examples"]
    every = instruct(tmp_path, turns="all").corpus.meta["train_examples"]
    encoder = ChatEncoder(TOK, "c2r-instruct")
    for i, (f, a) in enumerate(zip(first, every, strict=True)):
        want_first, _ = encoder.encode(
            [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}."}]
        )
        assert np.array_equal(f.ids, want_first)
        assert (len(a.ids) > len(f.ids)) == (i % 5 == 0)  # only multi-turn rows differ


def read_metrics(run_dir) -> list[dict]:
    rows = []
    for path in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        rows += list(csv.DictReader(path.open()))
    return rows


def test_fit_without_validation_and_with_val_source(tiny, tmp_path):
    """A run on every row logs no validation; with val_source it validates on that file."""
    text = tmp_path / "train.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 400)
    held = tmp_path / "held.txt"
    held.write_text("class A:\n    pass\n" * 100)
    base = tiny + [
        f"data.source={text}",
        "data.val_fraction=0",
        "trainer.logger=csv",
        "trainer.log_every_n_steps=1",
    ]
    assert fit(load_recipe(None, base)) == 0
    rows = read_metrics(tmp_path / "run")
    assert any(r.get("train/loss") for r in rows)
    assert not any(r.get("val/loss") for r in rows)
    out2 = f"trainer.out_dir={tmp_path / 'run2'}"
    assert fit(load_recipe(None, [*base, f"data.val_source={held}", out2])) == 0
    assert any(r.get("val/loss") for r in read_metrics(tmp_path / "run2"))


def test_bad_val_source_is_one_line(tmp_path, run_env, capsys):
    code = main(["fit", "data.val_source=x.txt", "data.val_fraction=0.1", "trainer.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "val_source replaces the held-out split" in err and "Traceback" not in err


def test_asking_for_validation_without_data_names_the_fix(tmp_path):
    from moelight.errors import ConfigError

    dm = instruct(tmp_path)
    with pytest.raises(
        ConfigError, match=r"no validation data .* data.val_source=PATH or data.val_fraction > 0"
    ):
        dm.val_dataloader()
