"""The shipped exportable recipe round-trips through transformers (logits, tokenizer, generate);
an export that cannot work lists every blocker with its fix; exported files are readable by all."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from random_checkpoint import ROOT, TINY_MODEL, save_random_checkpoint

from moelight.cli.main import main
from moelight.data.tokenizer import ByteTokenizer
from moelight.eval.model import load_eval_model
from moelight.generate.decoder import Decoder
from moelight.generate.loop import generate
from moelight.generate.sampling import Sampler, Sampling

transformers = pytest.importorskip("transformers", reason="moelight[hf] extra not installed")
transformers.utils.logging.set_verbosity_error()

RECIPE = ROOT / "recipes" / "mixtral-exportable.yaml"
TEXT = "def parse(line):\n    return l\u00e9n(line)  # \u00e9\u00e8\n"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixtral")
    ckpt = save_random_checkpoint(RECIPE, d / "last.ckpt", TINY_MODEL)
    assert main(["convert", "export", str(ckpt), "--arch", "mixtral", "--out", str(d / "hf")]) == 0
    return ckpt, d / "hf"


def test_export_of_the_shipped_recipe_has_transformers_logits(exported):
    ckpt, hf_dir = exported
    ours = load_eval_model(ckpt, device="cpu", dtype="float32").model
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = torch.tensor([list(TEXT.encode())])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=0, atol=2e-5)


def test_exported_tokenizer_is_moelights_byte_tokenizer(exported):
    _, hf_dir = exported
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    byte = ByteTokenizer()
    assert tok(TEXT)["input_ids"] == byte.encode(TEXT).tolist()  # byte values, no BOS added
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (byte.EOS, byte.PAD, byte.BOS)
    assert tok.decode(byte.encode(TEXT).tolist() + [byte.EOS], skip_special_tokens=True) == TEXT
    config = json.loads((hf_dir / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"]) == (byte.EOS, byte.PAD)


def test_transformers_generate_on_the_export_equals_moelight_generate(exported):
    ckpt, hf_dir = exported
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    inputs = tok("import os\n", return_tensors="pt")
    out = hf.generate(**inputs, max_new_tokens=24, do_sample=False)
    theirs = out[0, inputs["input_ids"].shape[1] :].tolist()
    if theirs and theirs[-1] == ByteTokenizer.EOS:
        theirs = theirs[:-1]
    m = load_eval_model(ckpt, device="cpu", dtype="float32")
    prompt = m.tokenizer.encode("import os\n").tolist()
    ours = generate(Decoder(m.model, m.device), m.tokenizer, prompt, Sampler(Sampling(temperature=0)), 24)
    assert theirs == ours.tokens and len(ours.tokens) > 0
    assert tok.decode(theirs) == ours.text


def test_exported_files_follow_the_umask(tmp_path):
    ckpt = save_random_checkpoint(RECIPE, tmp_path / "last.ckpt", TINY_MODEL)
    old = os.umask(0o022)
    try:
        assert main(["convert", "export", str(ckpt), "--arch", "mixtral", "--out", str(tmp_path / "a")]) == 0
        os.umask(0o077)
        assert main(["convert", "export", str(ckpt), "--arch", "mixtral", "--out", str(tmp_path / "b")]) == 0
    finally:
        os.umask(old)
    files_a = sorted(p for p in (tmp_path / "a").iterdir())
    assert {p.name for p in files_a} >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files_a} == {p.name: 0o644 for p in files_a}
    files_b = sorted(p for p in (tmp_path / "b").iterdir())
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files_b} == {p.name: 0o600 for p in files_b}


def test_export_error_lists_every_blocker_with_its_fix(tmp_path, capsys):
    overrides = [*TINY_MODEL, "model.qkv_bias=true", "model.moe_every=2", "router.score=sigmoid"]
    ckpt = save_random_checkpoint(ROOT / "recipes" / "quickstart.yaml", tmp_path / "q.ckpt", overrides)
    code = main(["convert", "export", str(ckpt), "--arch", "mixtral", "--out", str(tmp_path / "hf")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    for fix in (
        "model.qkv_bias=false",
        "model.moe_every=1",
        "router.score=softmax",
        "router.renormalize=true",
    ):
        assert f"fix: {fix}" in err
    assert "(4)" in err and "(5)" not in err
    # ...and what each other architecture would need
    assert (
        "olmoe: model.qk_norm=true + model.qkv_bias=false + model.moe_every=1 + router.score=softmax" in err
    )
    assert "llama_moe:" in err and "qwen2_moe:" in err and "recipes/mixtral-exportable.yaml" in err
    assert not (tmp_path / "hf").exists()


def test_the_quickstart_needs_exactly_the_change_the_exportable_recipe_makes(tmp_path, capsys):
    ckpt = save_random_checkpoint(ROOT / "recipes" / "quickstart.yaml", tmp_path / "q.ckpt", TINY_MODEL)
    assert main(["convert", "export", str(ckpt), "--arch", "mixtral", "--out", str(tmp_path / "hf")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "(1) router.renormalize: false" in err and "(2)" not in err
    assert "fix: router.renormalize=true" in err
