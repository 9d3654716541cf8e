"""`model.init_from`: converted directories, .safetensors files and Lightning checkpoints, strictly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from moelight.errors import MoelightError
from moelight.load import load_init_weights
from moelight.model.build import build_model, layer_contexts
from moelight.model.init_from import read_checkpoint
from moelight.moe.experts import ExpertWeights
from moelight.recipe import load_recipe

SMALL = [
    "model.n_layers=2",
    "model.hidden_size=32",
    "model.n_heads=2",
    "model.num_experts=4",
    "model.expert_ffn_hidden_size=16",
    "model.ffn_hidden_size=32",
    "model.moe_every=2",
    "model.shared_expert_ffn_hidden_size=8",
    "model.shared_expert_gate=true",
]


def make(seed: int, *extra: str):
    torch.manual_seed(seed)
    recipe = load_recipe(None, SMALL + list(extra))
    return recipe, build_model(recipe)


def same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture()
def source(tmp_path):
    _, model = make(0)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    return model, tmp_path / "w.safetensors"


def test_safetensors_file_and_converted_directory(source, tmp_path):
    model, path = source
    _, target = make(1)
    assert not same(model, target)
    load_init_weights(target, str(path))
    assert same(model, target)
    # A converted directory: model.safetensors (+ recipe.yaml, which is returned alongside).
    d = tmp_path / "conv"
    d.mkdir()
    (d / "model.safetensors").write_bytes(path.read_bytes())
    (d / "recipe.yaml").write_text("model:\n  n_layers: 2\n  init_from: model.safetensors\n")
    _, target = make(2)
    load_init_weights(target, str(d))
    assert same(model, target)
    _, recipe = read_checkpoint(d)
    assert recipe["model"]["init_from"] == str(d / "model.safetensors")


def test_lightning_checkpoint_with_model_prefix(source, tmp_path):
    model, _ = source
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}
        | {"val_loss.total": torch.zeros(())},
        "hyper_parameters": {"recipe": {"model": {}}},
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    _, target = make(3)
    load_init_weights(target, str(tmp_path / "last.ckpt"))
    assert same(model, target)


def test_bf16_file_into_fp32_model(source, tmp_path):
    model, _ = source
    save_file({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}, tmp_path / "bf16.safetensors")
    _, target = make(4)
    load_init_weights(target, str(tmp_path / "bf16.safetensors"))
    assert target.embed.weight.dtype == torch.float32
    assert torch.equal(target.embed.weight, model.embed.weight.to(torch.bfloat16).float())


def test_meta_device_model_is_materialised(source):
    model, path = source
    recipe = load_recipe(None, SMALL)
    contexts = layer_contexts(recipe)
    with torch.device("meta"):
        target = build_model(recipe, contexts=contexts)
    load_init_weights(target, str(path))
    assert same(model, target)


def test_strict_missing_unexpected_and_shape(source, tmp_path):
    model, _ = source
    state = model.state_dict()
    _, target = make(5)

    def fails(st: dict, name: str) -> str:
        save_file(st, tmp_path / name)
        with pytest.raises(MoelightError) as err:
            load_init_weights(target, str(tmp_path / name))
        return str(err.value)

    missing = {k: v for k, v in state.items() if k != "blocks.1.ffn.router.gate.weight"}
    assert "missing 1 weight(s): blocks.1.ffn.router.gate.weight" in fails(missing, "a.safetensors")
    extra = state | {"blocks.0.ffn.router.gate.weight": torch.zeros(4, 32)}
    assert "1 unexpected weight(s): blocks.0.ffn.router.gate.weight" in fails(extra, "b.safetensors")
    bad = state | {"embed.weight": torch.zeros(100, 32)}
    assert "shape mismatch: embed.weight [100, 32] vs model [260, 32]" in fails(bad, "c.safetensors")


def test_missing_router_buffers_keep_their_init(source):
    """A balancing router's running bias is state, not a weight: an imported model has none."""
    model, path = source
    _, target = make(6, "router.name=balanced", "router.method=bias")
    load_init_weights(target, str(path))
    assert torch.equal(target.blocks[1].ffn.router.gate.weight, model.blocks[1].ffn.router.gate.weight)
    assert torch.equal(target.blocks[1].ffn.router.expert_bias, torch.zeros(4))


def test_expert_parallel_rank_takes_its_rows(tmp_path):
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = ExpertWeights([4, 5, 6, 7], 8, 6)

    full = {name: torch.randn(8, *shape) for name, shape in (("w1", (6, 8)), ("v1", (6, 8)), ("w2", (8, 6)))}
    save_file({f"experts.{k}": v for k, v in full.items()}, tmp_path / "e.safetensors")
    holder = Holder()
    load_init_weights(holder, str(tmp_path / "e.safetensors"))
    for k, v in full.items():
        assert torch.equal(getattr(holder.experts, k), v[4:8])


@pytest.mark.parametrize(
    "name,needle",
    [
        ("nothing.safetensors", "checkpoint not found"),
        ("weights.bin", "unknown checkpoint type '.bin'"),
    ],
)
def test_bad_paths(tmp_path, name, needle):
    if name.endswith(".bin"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(MoelightError, match=needle):
        read_checkpoint(tmp_path / name)
    empty = tmp_path / "dir"
    empty.mkdir(exist_ok=True)
    with pytest.raises(MoelightError, match="no model.safetensors"):
        read_checkpoint(empty)


def test_training_module_starts_from_init_from(source):
    from moelight.training.module import MoELanguageModel

    model, path = source
    recipe = load_recipe(None, SMALL + [f"model.init_from={path}"])
    module = MoELanguageModel(recipe)
    module.configure_model()
    assert same(model, module.model)
