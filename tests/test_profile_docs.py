"""`moelight profile --docs N --tokens-per-doc L`: the first L tokens of N long documents, as the
C2R paper's profiling.py profiled 200 LongBench contexts x 1024 tokens (a generated corpus here)."""

from __future__ import annotations

import json
import random

import torch
from test_profile import LAYERS, K, tiny_model, tiny_recipe

from moelight.c2r.profile_file import read_profile
from moelight.c2r.profiling import profile_model
from moelight.cli.main import main
from moelight.data.tokenizer import ByteTokenizer
from moelight.load import load_checkpoint
from moelight.recipe import validate_recipe

SEED = 5


def write_checkpoint(path, instruct: bool = False):
    # test_profile's tiny model (its router scores spread so routings vary), saved as a checkpoint
    recipe = {**tiny_recipe(), "data": {"batch_size": 2, "seq_len": 16}, "seed": SEED}
    model = tiny_model(recipe)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"recipe": validate_recipe(recipe).model_dump(mode="json")},
        },
        path,
    )
    return path


def corpus(tmp_path):
    """Documents of 20 ... 290 bytes (byte tokens): 10 of them have at least 200 tokens."""
    gen = random.Random(0)
    docs = ["".join(gen.choice("abcdefgh \n") for _ in range(20 + 10 * i)) for i in range(28)]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path, docs


def test_profile_docs_profiles_the_first_tokens_of_sampled_long_documents(tmp_path):
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt")
    path, docs = corpus(tmp_path)
    out = tmp_path / "profile"
    argv = ["profile", str(ckpt), "--out", str(out), "--data", str(path), "--docs", "4"]
    assert main([*argv, "--tokens-per-doc", "200"]) == 0
    meta = json.loads((out / "profile.json").read_text())
    assert meta["tokens"] == 4 * 200
    assert meta["data"]["docs"] == 4 and meta["data"]["tokens_per_doc"] == 200
    tensors, _ = read_profile(out)
    # The reference: the documents chosen by hand (at least 200 byte tokens, a seeded sample of 4
    # with the recipe's seed), cut to 200 tokens, profiled in one batch.
    tok = ByteTokenizer()
    long_ones = [[int(t) for t in tok.encode_bytes(d.encode())][:200] for d in docs if len(d.encode()) >= 200]
    assert len(long_ones) == 10
    rows = torch.tensor(random.Random(SEED).sample(long_ones, 4))
    model = load_checkpoint(ckpt).model
    want = profile_model(model, [rows])
    assert torch.equal(tensors["coactivation"], want.coactivation)
    assert int(tensors["coactivation"].sum()) == LAYERS * 4 * 200 * K * (K - 1)


def test_profile_docs_errors_are_one_line(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt")
    path, _ = corpus(tmp_path)
    base = ["profile", str(ckpt), "--out", str(tmp_path / "p"), "--data", str(path)]
    assert main([*base, "--docs", "20", "--tokens-per-doc", "200"]) == 2
    err = capsys.readouterr().err
    assert "10 of 28 documents with at least 200 tokens" in err and "Traceback" not in err
    assert main([*base, "--docs", "3"]) == 2
    assert "--docs and --tokens-per-doc go together" in capsys.readouterr().err
    assert main([*base, "--docs", "3", "--tokens-per-doc", "20", "--max-tokens", "5"]) == 2
    assert "give one" in capsys.readouterr().err
