"""The memory plan: parameter counts equal the built model's; planned peaks agree with measured
peaks of live bytes on CPU within +-10%; `moelight bench memory` prints and refuses."""

from __future__ import annotations

import json

import pytest

from moelight.cli.main import main
from moelight.memory.measure import measured_step_peak
from moelight.memory.plan import Setup, count_parameters, plan, setup_from_recipe
from moelight.model.build import build_model
from moelight.recipe import load_recipe

SHAPES = {
    "default": [],
    "qwen-like": [
        "model.shared_expert_ffn_hidden_size=256",
        "model.shared_expert_gate=true",
        "model.qkv_bias=true",
        "model.tie_embeddings=false",
    ],
    "gqa-qknorm-dense-layers": ["model.n_kv_heads=2", "model.qk_norm=true", "model.moe_every=2"],
    "llama-moe-gate": [
        "router.name=c2r",
        "router.collaborators=placement",
        "router.top_t=2",
        "router.gate_network=mlp",
        "router.noise=true",
    ],
    "noisy-cv": ["router.name=balanced", "router.method=noisy_cv"],
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_parameter_counts_equal_the_built_model(shape):
    recipe = load_recipe(None, SHAPES[shape])
    model = build_model(recipe)
    assert count_parameters(recipe).total == sum(p.numel() for p in model.parameters())


# (name, overrides): small recipes at N = 1, fp32 on CPU, every checkpointing mode
VALIDATION = {
    "none": [],
    "full": ["trainer.activation_checkpointing=full"],
    "moe": ["trainer.activation_checkpointing=moe"],
    "attention": ["trainer.activation_checkpointing=attention"],
    "vocab-8k-one-piece": ["model.vocab_size=8000", "trainer.loss_chunk_tokens=0"],
    "vocab-8k-chunked": ["model.vocab_size=8000", "trainer.loss_chunk_tokens=128"],
    "qwen-like-full": [*SHAPES["qwen-like"], "trainer.activation_checkpointing=full"],
    "wide-experts": ["model.hidden_size=256", "model.expert_ffn_hidden_size=512", "model.top_k=4"],
}
BASE = ["data.seq_len=128", "data.batch_size=8"]


@pytest.mark.parametrize("case", list(VALIDATION))
def test_plan_agrees_with_the_measured_peak(case):
    recipe = load_recipe(None, [*BASE, *VALIDATION[case]])
    planned = plan(recipe, setup_from_recipe(recipe, device="cpu")).peak
    measured = measured_step_peak(recipe)
    assert 0.9 <= planned / measured <= 1.1, f"plan {planned} vs measured {measured}"


def test_sharding_divides_the_state():
    """FSDP x EP: dense state over N ranks, experts over the N/P holding the same ones (formula
    re-derived here from the parameter counts)."""
    recipe = load_recipe(None, ["model.num_experts=8"])
    counts = count_parameters(recipe)
    for n, p in [(1, 1), (4, 1), (4, 2), (4, 4), (8, 2)]:
        s = Setup(devices=n, expert_parallel=p, fsdp=True, micro_batch=1, seq_len=64)
        expected = int(counts.dense / n + (counts.experts // p) / (n // p))
        assert plan(recipe, s).params == 4 * expected
        ddp = plan(recipe, Setup(devices=n, expert_parallel=p, micro_batch=1, seq_len=64))
        assert ddp.params == 4 * (counts.dense + counts.experts // p)


def test_offload_moves_state_to_the_host():
    recipe = load_recipe(None, [])
    base = Setup(devices=2, fsdp=True, micro_batch=2, seq_len=64)
    on_device = plan(recipe, base)
    opt = plan(recipe, Setup(**{**base.__dict__, "offload": "optimizer"}))
    params = plan(recipe, Setup(**{**base.__dict__, "offload": "params"}))
    assert opt.optimizer == 0 and opt.host == on_device.optimizer
    assert params.params == params.grads == 0
    assert params.host == on_device.optimizer + on_device.params + on_device.grads
    assert params.peak < opt.peak < on_device.peak


def test_mixed_precision_keeps_fp32_master_state():
    recipe = load_recipe(None, [])
    fp32 = plan(recipe, Setup(fsdp=True, devices=2, micro_batch=2, seq_len=64))
    mixed = plan(recipe, Setup(fsdp=True, devices=2, micro_batch=2, seq_len=64, precision="bf16-mixed"))
    assert mixed.params == fp32.params and mixed.optimizer == fp32.optimizer
    assert mixed.activations < fp32.activations


@pytest.mark.parametrize("recipe", ["qwen-moe-c2r-sft.yaml", "llama-moe-c2r-sft.yaml"])
def test_bench_memory_plans_the_paper_models_at_their_true_shapes(recipe, capsys, tmp_path):
    out = tmp_path / "plan.json"
    assert main(["bench", "memory", f"recipes/{recipe}", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "peak" in printed and "GiB" in printed
    data = json.loads(out.read_text())
    total = data["parameters"]["total"]
    # Qwen1.5-MoE-A2.7B has 14.3B parameters, LLaMA-MoE-v1-3.5B 6.7B (their model cards)
    assert abs(total / 1e9 - (14.3 if "qwen" in recipe else 6.7)) < 0.1


def test_bench_memory_refuses_a_plan_over_gpu_memory(capsys):
    code = main(
        ["bench", "memory", "recipes/qwen-moe-c2r-sft.yaml", "--micro-batch", "8", "--gpu-memory", "80"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "exceeds --gpu-memory 80 GiB" in err and "Traceback" not in err


def test_bench_memory_refuses_p_not_dividing_n(capsys):
    code = main(["bench", "memory", "--devices", "3", "--expert-parallel", "2"])
    assert code == 2 and "must divide" in capsys.readouterr().err
