"""recipes/llama-moe-c2r-sft.yaml and its top-k baseline: the paper's LLaMA-MoE setup, and runs of them
with tiny stand-ins (a converted tiny LLaMA-MoE in the official layout, a tokenizer, deita-style
ShareGPT data, the paper's collaborator lists)."""

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
RECIPE = RECIPES / "llama-moe-c2r-sft.yaml"
BASELINE = RECIPES / "llama-moe-topk-sft.yaml"
GATE = {  # LLaMA-MoE-v1-3_5B-2_8's TopKBalancedNoisyGate, as `moelight convert import` maps it
    "gate_network": "mlp",
    "route_scale": 4.0,
    "noise": True,
    "noise_epsilon": 0.01,
    "balance_loss_coef": 0.01,
    "load_membership": "noise",
    "z_loss_coef": 0.0,
}


def test_recipe_is_the_paper_setup():
    recipe = load_recipe(RECIPE)
    p = recipe.router_params()
    assert recipe.router["name"] == "c2r" and 1 <= p.top_t <= 6 and p.renormalize and p.aux_loss_coef == 0.0
    assert {k: getattr(p, k) for k in GATE} == GATE
    assert (recipe.model.num_experts, recipe.model.top_k, recipe.model.n_layers) == (8, 2, 32)
    # LLaMA-MoE/train.sh: deita-6k, 2 epochs, 4 per device x 4 GPUs x 8 = 128, lr 2e-5, 3% warm-up, cosine.
    assert recipe.data.batch_size * recipe.trainer.devices * recipe.trainer.accumulate_grad_batches == 128
    assert recipe.optim.lr == 2e-5 and recipe.optim.warmup_ratio == 0.03 and recipe.optim.min_lr_ratio == 0.0
    assert recipe.optim.weight_decay == 0.0 and recipe.trainer.max_epochs == 2 and recipe.seed == 12306
    assert recipe.data.packing is False and recipe.data.padding == "max_length"
    assert recipe.data.prompt_template == "vicuna" and recipe.data.seq_len == 2048
    assert np.load(recipe.profile.path).shape == (32, 8, 8)


def test_baseline_is_llama_moe_own_gate_with_the_same_schedule():
    c2r, base = load_recipe(RECIPE).model_dump(), load_recipe(BASELINE)
    assert base.router["name"] == "balanced" and base.router_params().method == "noisy_cv"
    assert {k: getattr(base.router_params(), k) for k in GATE} == GATE
    assert base.profile.path is None
    dumped = base.model_dump()
    for section in ("model", "data", "optim", "parallel", "seed"):
        assert c2r[section] == dumped[section], section


@pytest.fixture()
def standins(tmp_path, run_env) -> list[str]:
    pytest.importorskip("transformers", reason="moelight[hf] extra not installed")
    from moelight.hf.tiny import make_tiny_llama_moe_checkpoint, make_tiny_tokenizer

    hf_dir = make_tiny_llama_moe_checkpoint(tmp_path / "hf")
    make_tiny_tokenizer(hf_dir, chat_template=False)
    assert main(["convert", "import", str(hf_dir), "--out", str(tmp_path / "llama-moe")]) == 0
    model = load_recipe(tmp_path / "llama-moe" / "recipe.yaml").model
    lists = np.load(Path(load_recipe(RECIPE).profile.path))[: model.n_layers]
    np.save(tmp_path / "lists.npy", lists)

    def turns(i: int) -> list[dict[str, str]]:
        return [{"from": "human", "value": f"What is {i} + {i}?"}, {"from": "gpt", "value": f"{2 * i}."}]

    lines = [json.dumps({"id": str(i), "conversations": turns(i)}) for i in range(60)]
    (tmp_path / "deita.jsonl").write_text("\n".join(lines) + "\n")
    shape = [
        f"model.{k}={'null' if v is None else v}"
        for k, v in model.model_dump(mode="json").items()
        if k not in ("init_from", "init_std")
    ]
    return (
        shape
        + [
            f"model.init_from={tmp_path / 'llama-moe'}",
            f"data.tokenizer={tmp_path / 'llama-moe' / 'tokenizer'}",
            f"data.source={tmp_path / 'deita.jsonl'}",
            "data.seq_len=64",
            "data.batch_size=2",
            "data.val_fraction=0.1",
            "trainer.devices=1",
            "parallel.expert_parallel=1",
            "trainer.accumulate_grad_batches=1",
            "trainer.max_steps=3",  # caps the recipe's 2 epochs
            "trainer.val_check_interval=3",
            "trainer.limit_val_batches=1",
            "trainer.checkpoint_every_n_steps=3",
            "trainer.progress_bar=false",
            f"trainer.out_dir={tmp_path / 'run'}",
        ]
        + [f"profile.path={tmp_path / 'lists.npy'}"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [RECIPE, BASELINE], ids=["c2r", "topk-baseline"])
def test_recipe_trains_and_exports_with_standins(standins, tmp_path, recipe):
    if recipe == BASELINE:
        standins = [a for a in standins if not a.startswith("profile.path")]
    assert main(["fit", str(recipe), *standins]) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    # The fine-tuned checkpoint goes back to the official layout.
    assert (
        main(["convert", "export", str(ckpt), "--out", str(tmp_path / "hf-out"), "--arch", "llama_moe"]) == 0
    )
    cfg = json.loads((tmp_path / "hf-out" / "config.json").read_text())
    assert (
        cfg["model_type"] == "llama_moe" and cfg["gate_network"] == "mlp" and cfg["score_scale_factor"] == 4.0
    )
    assert ("top_t" in cfg) == (recipe == RECIPE)


def test_profile_shape_not_matching_the_model_exits_2(standins, capsys):
    """The paper's 32-layer lists against the 2-layer stand-in: one message, exit status 2."""
    standins = [a for a in standins if not a.startswith("profile.path")]  # the recipe's own 32 x 8 x 8
    assert main(["fit", str(RECIPE), *standins]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "profile.path" in err and "32" in err and "Traceback" not in err
