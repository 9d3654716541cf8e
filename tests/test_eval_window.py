"""`moelight eval`'s window: the model's context length (`model.max_position_embeddings`, which
`convert import` copies from the HF config, as lm-eval's HF model reads it), else a
moelight-trained model's `data.seq_len`; `--max-length` / `max_length=` overrides both."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from random_checkpoint import ROOT, TINY_MODEL, save_random_checkpoint  # noqa: E402

from moelight.cli.main import main  # noqa: E402
from moelight.eval.adapter import MoelightLM  # noqa: E402
from moelight.eval.model import load_eval_model  # noqa: E402
from moelight.hf.convert_dirs import import_to_dir  # noqa: E402
from moelight.hf.tiny import make_tiny_checkpoint  # noqa: E402
from moelight.recipe import load_recipe  # noqa: E402

CONTEXT = 300  # the tiny HF model's max_position_embeddings: longer than the imported data.seq_len (128)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("window")
    hf = make_tiny_checkpoint("mixtral", root / "hf", seed=3, max_position_embeddings=CONTEXT)
    return import_to_dir(hf, root / "moelight")


def test_convert_import_records_the_context_length(imported):
    recipe = load_recipe(imported.recipe_path)
    assert recipe.model.max_position_embeddings == CONTEXT
    assert recipe.data.seq_len < CONTEXT  # the old window would have cut at data.seq_len


def test_imported_model_is_scored_in_its_context_length(imported):
    loaded = load_eval_model(str(imported.out_dir), device="cpu")
    lm = MoelightLM(model=loaded)
    assert lm.max_length == CONTEXT
    assert MoelightLM(model=loaded, max_length=64).max_length == 64
    # A 250-token context is scored whole (no left cut), as the model scores the full sequence.
    gen = torch.Generator().manual_seed(0)
    context = torch.randint(0, 250, (250,), generator=gen).tolist()
    continuation = [5, 6, 7]
    [(got, _)] = lm._loglikelihood_tokens([(("", ""), context, continuation)], disable_tqdm=True)
    tokens = context + continuation
    with torch.no_grad():
        logits = loaded.model(torch.tensor([tokens]))[0].double()
    logp = F.log_softmax(logits, -1)[:-1].gather(-1, torch.tensor(tokens[1:])[:, None]).squeeze(-1)
    assert got == pytest.approx(float(logp[-3:].sum()), abs=1e-4)
    # With the old window (data.seq_len) the context would have been cut: a different score.
    [(cut, _)] = MoelightLM(model=loaded, max_length=loaded.recipe.data.seq_len)._loglikelihood_tokens(
        [(("", ""), context, continuation)], disable_tqdm=True
    )
    assert cut != pytest.approx(got, abs=1e-4)


def test_moelight_checkpoint_is_scored_in_its_training_length(tmp_path):
    ckpt = save_random_checkpoint(ROOT / "recipes" / "c2r.yaml", tmp_path / "c2r.ckpt", TINY_MODEL)
    loaded = load_eval_model(str(ckpt), device="cpu")
    assert loaded.recipe.model.max_position_embeddings is None
    assert MoelightLM(model=loaded).max_length == loaded.recipe.data.seq_len


def test_cli_reports_the_window_and_takes_max_length(imported, tmp_path, capsys):
    argv = ["eval", str(imported.out_dir), "--tasks", "moelight_python_mc", "--limit", "2", "--device", "cpu"]
    assert main(argv) == 0
    assert f"window: {CONTEXT} tokens (the model's context length)" in capsys.readouterr().out
    assert main([*argv, "--max-length", "64"]) == 0
    assert "window: 64 tokens" in capsys.readouterr().out
