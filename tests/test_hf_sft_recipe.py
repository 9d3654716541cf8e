"""recipes/qwen-moe-c2r-sft.yaml and its top-k baseline: the paper's Qwen setup, and runs of them with
tiny stand-ins for the user's inputs (a converted Qwen2-MoE, its tokenizer, instruction data,
collaborator lists)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from moelight.cli.main import main
from moelight.recipe import load_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE = RECIPES / "qwen-moe-c2r-sft.yaml"
BASELINE = RECIPES / "qwen-moe-topk-sft.yaml"
PLACEHOLDER = "REPLACE_ME"


def test_recipe_is_the_paper_setup_with_marked_placeholders():
    recipe = load_recipe(RECIPE)
    assert recipe.router["name"] == "c2r" and recipe.router["top_t"] == 30
    p = recipe.router_params()
    assert p.renormalize is False and p.aux_loss_coef == 0.0 and p.score == "softmax"
    assert (recipe.model.num_experts, recipe.model.top_k) == (60, 4)
    # Qwen-MoE/train.sh: LIMA, 2 epochs, 8 per device x 4 GPUs x 2 accumulated, lr 2e-5 cosine, 10 warm-up.
    assert recipe.optim.lr == 2e-5 and recipe.optim.min_lr_ratio == 0.0 and recipe.optim.warmup_steps == 10
    assert recipe.optim.warmup_ratio == 0.0 and recipe.optim.weight_decay == 0.0
    assert recipe.trainer.max_epochs == 2
    assert recipe.data.batch_size * recipe.trainer.devices * recipe.trainer.accumulate_grad_batches == 64
    assert recipe.data.seq_len == 2048 and recipe.data.format == "instruct"
    assert recipe.data.packing is False and recipe.data.prompt_template == "c2r-instruct"
    assert recipe.trainer.precision == "bf16-mixed"
    assert Path(recipe.profile.path).is_file()  # the shipped paper lists
    for value in (recipe.model.init_from, recipe.data.source, recipe.data.tokenizer):
        assert value.startswith(PLACEHOLDER)


def test_baseline_differs_only_in_routing():
    c2r, topk = load_recipe(RECIPE).model_dump(), load_recipe(BASELINE).model_dump()
    assert topk["router"] == {
        "name": "topk",
        "score": "softmax",
        "renormalize": False,
        "aux_loss_coef": 0.0,
        "z_loss_coef": 0.0,
    }
    assert topk["profile"]["path"] is None
    for section in ("model", "data", "optim", "parallel", "seed"):
        assert c2r[section] == topk[section], section
    assert {k: v for k, v in c2r["trainer"].items() if k != "out_dir"} == {
        k: v for k, v in topk["trainer"].items() if k != "out_dir"
    }


@pytest.fixture()
def sft_standins(tmp_path, run_env, c2r_data) -> list[str]:
    """Overrides that replace the recipe's user inputs with tiny local stand-ins.

    Keeps the recipe's router (c2r, T = 30), its 60 experts / top-4 and its data format; shrinks
    the model to a tiny random Qwen2-MoE converted by `moelight convert import`.
    """
    transformers = pytest.importorskip("transformers", reason="moelight[hf] extra not installed")
    transformers.utils.logging.disable_progress_bar()
    from moelight.hf.tiny import make_tiny_checkpoint, make_tiny_tokenizer

    hf_dir = make_tiny_checkpoint("qwen2_moe", tmp_path / "hf", num_experts=60, num_experts_per_tok=4)
    make_tiny_tokenizer(hf_dir)
    assert main(["convert", "import", str(hf_dir), "--out", str(tmp_path / "qwen-moe")]) == 0
    model = load_recipe(tmp_path / "qwen-moe" / "recipe.yaml").model
    # The paper's lists for as many layers as the stand-in has.
    lists = np.load(c2r_data / "qwen1.5_moe_a2.7b_collaborative_list.npy")[: model.n_layers]
    np.save(tmp_path / "lists.npy", lists)
    lines = [
        json.dumps({"conversations": [f"What is {i} + {i}?", f"{i} + {i} = {2 * i}."]}) for i in range(80)
    ] + [
        json.dumps(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
        )
    ]
    (tmp_path / "sft.jsonl").write_text("\n".join(lines) + "\n")
    shape = [
        f"model.{k}={'null' if v is None else v}"
        for k, v in model.model_dump(mode="json").items()
        if k not in ("init_from", "init_std")
    ]
    return shape + [
        f"model.init_from={tmp_path / 'qwen-moe'}",
        f"data.tokenizer={tmp_path / 'qwen-moe' / 'tokenizer'}",
        f"data.source={tmp_path / 'sft.jsonl'}",
        f"profile.path={tmp_path / 'lists.npy'}",
        "data.seq_len=256",
        "data.batch_size=2",
        "data.val_fraction=0.1",
        "trainer.devices=1",
        "parallel.expert_parallel=1",
        "trainer.accumulate_grad_batches=1",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "trainer.checkpoint_every_n_steps=3",
        "trainer.progress_bar=false",
        f"trainer.out_dir={tmp_path / 'run'}",
    ]


@pytest.mark.slow
def test_baseline_recipe_trains_with_standins(sft_standins, tmp_path):
    standins = [a for a in sft_standins if not a.startswith("profile.path")]
    assert main(["fit", str(BASELINE), *standins]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_sft_recipe_trains_with_standins(sft_standins, tmp_path):
    recipe = load_recipe(RECIPE, sft_standins)
    assert recipe.router["top_t"] == 30 and recipe.model.num_experts == 60
    assert main(["fit", str(RECIPE), *sft_standins]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    # The fine-tuned checkpoint exports back to the Hugging Face layout, routed by top-k on request.
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = ["--out", str(tmp_path / "hf-out"), "--arch", "qwen2_moe"]
    assert main(["convert", "export", str(ckpt), *out, "--router", "topk"]) == 0
    assert (tmp_path / "hf-out" / "model.safetensors").is_file()
    assert (tmp_path / "hf-out" / "tokenizer.json").is_file()
