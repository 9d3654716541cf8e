"""Hugging Face MoE checkpoints in and out: parity of logits and routing, export/import round trips.

Tiny random checkpoints are made locally by transformers (`moelight.hf.tiny`); nothing is downloaded.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="moelight[hf] extra not installed")
from safetensors.torch import load_file, save_file  # noqa: E402

from moelight.cli.main import main  # noqa: E402
from moelight.hf.convert_dirs import export_from_checkpoint, import_to_dir  # noqa: E402
from moelight.hf.importer import import_hf  # noqa: E402
from moelight.hf.tiny import TINY_VOCAB, make_tiny_checkpoint  # noqa: E402
from moelight.load import load_init_weights  # noqa: E402
from moelight.model.build import build_model  # noqa: E402
from moelight.recipe import load_recipe  # noqa: E402

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

# Each case: (architecture, config overrides). The second Qwen case covers dense layers
# (decoder_sparse_step), renormalised top-k, tied embeddings and a sharded checkpoint; the
# Mixtral case has a sliding window longer than the test sequences (where ignoring it is exact).
CASES = {
    "qwen2_moe": ("qwen2_moe", {}),
    "qwen2_moe-sparse-step": (
        "qwen2_moe",
        dict(num_hidden_layers=4, decoder_sparse_step=2, norm_topk_prob=True, tie_word_embeddings=True),
    ),
    "mixtral": ("mixtral", dict(sliding_window=64)),
    "olmoe": ("olmoe", {}),
}
SEQ = 24
# fp32: the two implementations differ only in summation order.
ATOL = 2e-5


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """case -> (hf_dir, converted dir, HF model, moelight model); built once per module."""
    out = {}
    for case, (arch, overrides) in CASES.items():
        root = tmp_path_factory.mktemp(case)
        shard = "40KB" if case == "qwen2_moe-sparse-step" else None
        hf_dir = make_tiny_checkpoint(arch, root / "hf", seed=len(case), max_shard_size=shard, **overrides)
        result = import_to_dir(hf_dir, root / "moelight")
        recipe = load_recipe(result.recipe_path)
        model = build_model(recipe).eval()
        load_init_weights(model, recipe.model.init_from)
        hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
        out[case] = (hf_dir, result, hf, model)
    return out


def tokens(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, TINY_VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def capture_hf_routing(hf) -> tuple[list, list, list]:
    """Hooks on every HF router: its inputs [T, d] and (probs-topk) indices [T, k], per MoE layer."""
    inputs, indices = [], []

    def hook(module, args, output):
        inputs.append(args[0].reshape(-1, args[0].shape[-1]).detach())
        indices.append(output[2].detach())

    handles = [
        layer.mlp.gate.register_forward_hook(hook)
        for layer in hf.model.layers
        if hasattr(layer.mlp, "experts")
    ]
    return inputs, indices, handles


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_hf(converted, case):
    _, _, hf, model = converted[case]
    x = tokens()
    with torch.no_grad():
        ref = hf(x).logits
        ours = model(x)
    diff = (ref - ours).abs().max().item()
    print(f"{case}: max |logit diff| = {diff:.3e} (logit scale {ref.abs().max().item():.2f})")
    assert ours.shape == ref.shape
    assert diff < ATOL


@pytest.mark.parametrize("case", list(CASES))
def test_topk_routing_decisions_identical(converted, case):
    _, result, hf, model = converted[case]
    inputs, indices, handles = capture_hf_routing(hf)
    try:
        with torch.no_grad():
            hf(tokens(1))
            model(tokens(1))
    finally:
        for h in handles:
            h.remove()
    layers = model.moe_layers
    assert len(layers) == len(indices) == 2
    for layer, x, ref in zip(layers, inputs, indices, strict=True):
        # The same router input: exactly the same experts, in the same (descending score) order.
        with torch.no_grad():
            routing = layer.router(x)
        assert torch.equal(routing.experts, ref)
        # And the full forward of each model routes every token the same way.
        assert torch.equal(layer.last_routing.experts, ref)


def test_imported_recipe_carries_hf_routing_semantics(converted):
    renorm = {case: converted[case][1].imported.router["renormalize"] for case in CASES}
    assert renorm == {"qwen2_moe": False, "qwen2_moe-sparse-step": True, "mixtral": True, "olmoe": False}
    sparse = converted["qwen2_moe-sparse-step"][1].imported.model
    assert (sparse.moe_every, sparse.tie_embeddings, sparse.n_layers) == (2, True, 4)
    assert converted["olmoe"][1].imported.model.qk_norm
    qwen = converted["qwen2_moe"][1].imported.model
    assert qwen.shared_expert_gate and qwen.shared_expert_ffn_hidden_size == 32 and qwen.qkv_bias
    assert qwen.rope_theta == 1e6
    # Mixtral's window is reported, and written into the recipe as a note.
    notes = converted["mixtral"][1].imported.notes
    assert any("sliding attention window (64 tokens)" in n for n in notes)
    assert "sliding attention window" in converted["mixtral"][1].recipe_path.read_text()


@pytest.mark.parametrize("case", list(CASES))
def test_export_then_import_is_identity(converted, case, tmp_path):
    hf_dir, result, hf, _ = converted[case]
    arch = result.imported.arch.name
    assert (
        main(["convert", "export", str(result.out_dir), "--out", str(tmp_path / "hf"), "--arch", arch]) == 0
    )
    again = import_hf(tmp_path / "hf")
    first = result.imported
    assert again.model == first.model
    assert again.router == first.router
    assert again.state_dict.keys() == first.state_dict.keys()
    for k, v in first.state_dict.items():
        assert torch.equal(again.state_dict[k], v), k
    # The exported files hold exactly the original tensors under the hub's names.
    original = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        original |= load_file(f)
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    if first.model.tie_embeddings:
        original.pop("lm_head.weight", None)
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)
    # transformers loads the export and computes the same logits as the original.
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(tokens()).logits, hf(tokens()).logits, atol=1e-6, rtol=0)


def test_export_from_lightning_checkpoint(converted, tmp_path):
    """A training checkpoint (state_dict keys `model.*`, the recipe in hyper_parameters) exports."""
    _, result, hf, model = converted["olmoe"]
    recipe = load_recipe(result.recipe_path)
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"recipe": recipe.model_dump(mode="json")},
        "global_step": 3,
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    export_from_checkpoint(tmp_path / "last.ckpt", tmp_path / "hf", "olmoe", dtype=torch.bfloat16)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "olmoe" and config["dtype"] == "bfloat16"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        # bf16 weights: the same model up to bf16 rounding.
        assert (reloaded(tokens()).logits - hf(tokens()).logits).abs().max() < 0.3


def test_safetensors_file_with_recipe_exports(converted, tmp_path):
    _, result, _, _ = converted["mixtral"]
    weights = tmp_path / "w.safetensors"
    weights.write_bytes((result.out_dir / "model.safetensors").read_bytes())
    assert (
        main(
            [
                "convert",
                "export",
                str(weights),
                "--out",
                str(tmp_path / "hf"),
                "--arch",
                "mixtral",
                "--recipe",
                str(result.recipe_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_fused_in_memory_layout_imports_too(converted, tmp_path):
    """transformers-5 module names (fused experts.gate_up_proj/down_proj) map to the same tensors."""
    hf_dir, result, hf, _ = converted["qwen2_moe"]
    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "config.json").write_text((hf_dir / "config.json").read_text())
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert any(k.endswith("experts.gate_up_proj") for k in state)
    save_file(state, fused / "model.safetensors")
    again = import_hf(fused)
    for k, v in result.imported.state_dict.items():
        assert torch.equal(again.state_dict[k], v), k


def test_import_copies_tokenizer_and_points_data_at_it(tmp_path):
    from moelight.hf.tiny import make_tiny_tokenizer

    hf_dir = make_tiny_checkpoint("olmoe", tmp_path / "hf")
    make_tiny_tokenizer(hf_dir)
    assert main(["convert", "import", str(hf_dir), "--out", str(tmp_path / "m"), "--dtype", "bfloat16"]) == 0
    recipe = load_recipe(tmp_path / "m" / "recipe.yaml")
    assert recipe.data.tokenizer == str(tmp_path / "m" / "tokenizer")
    assert (tmp_path / "m" / "tokenizer" / "tokenizer.json").is_file()
    assert load_file(tmp_path / "m" / "model.safetensors")["embed.weight"].dtype == torch.bfloat16
    # Export carries the tokenizer along, so the HF directory is complete.
    assert (
        main(["convert", "export", str(tmp_path / "m"), "--out", str(tmp_path / "back"), "--arch", "olmoe"])
        == 0
    )
    assert (tmp_path / "back" / "tokenizer.json").is_file()


EXPORT_MODELS = {
    # A moelight-trained model without q/k/v biases: exported with zero biases (what Qwen2-MoE loads).
    "qwen2_moe": [
        "model.shared_expert_ffn_hidden_size=24",
        "model.shared_expert_gate=true",
        "router.renormalize=true",
    ],
    "mixtral": ["router.renormalize=true", "model.n_kv_heads=2"],
    "olmoe": ["model.qk_norm=true"],
}


@pytest.mark.parametrize("arch", list(EXPORT_MODELS))
def test_moelight_model_exports_with_equal_logits(arch, tmp_path):
    from moelight.hf.exporter import export_hf

    recipe = load_recipe(
        None,
        [
            "model.n_layers=2",
            "model.hidden_size=32",
            "model.n_heads=4",
            "model.num_experts=4",
            "model.expert_ffn_hidden_size=16",
            "model.tie_embeddings=false",
            *EXPORT_MODELS[arch],
        ],
    )
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # unit-scale weights, so that every mapping matters
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.2 * noise if "norm" in name else noise / p.shape[-1] ** 0.5)
    export_hf(model.state_dict(), recipe.model, recipe.router, arch, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, recipe.model.vocab_size, (2, SEQ), generator=gen)
    with torch.no_grad():
        diff = (hf(x).logits - model(x)).abs().max().item()
    assert diff < ATOL
