"""`moelight profile`: counts against brute force, the artifact, the CLI, and C2R routing from it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from moelight.c2r.collaboration import collaborators_from_counts, load_collaboration
from moelight.c2r.placement import load_placement
from moelight.c2r.profile_file import read_profile
from moelight.c2r.profiling import (
    profile_model,
    save_profile,
    write_placements,
)
from moelight.cli.main import main
from moelight.data.datamodule import MoEDataModule
from moelight.load import load_checkpoint
from moelight.model.build import build_model
from moelight.recipe import validate_recipe

ROOT = Path(__file__).resolve().parents[1]
E, K, LAYERS = 6, 2, 2


def tiny_recipe(**router) -> dict:
    return {
        "model": {
            "n_layers": LAYERS,
            "hidden_size": 32,
            "n_heads": 2,
            "ffn_hidden_size": 32,
            "num_experts": E,
            "top_k": K,
            "expert_ffn_hidden_size": 16,
        },
        "router": router or {"name": "topk"},
        "seed": 0,
    }


def tiny_model(recipe_dict: dict):
    torch.manual_seed(0)
    model = build_model(validate_recipe(recipe_dict))
    with torch.no_grad():  # spread the router scores so routings vary between tokens
        for layer in model.moe_layers:
            layer.router.gate.weight.normal_(0, 1.0)
    return model.eval()


def batches(n: int = 4, b: int = 3, s: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randint(0, 256, (b, s), generator=gen), torch.randint(0, 256, (b, s), generator=gen))
        for _ in range(n)
    ]


def recorded_routings(model, data) -> list[list[list[int]]]:
    """Per MoE layer, every token's experts in order, captured by forward hooks on the routers."""
    per_layer: list[list[list[int]]] = [[] for _ in model.moe_layers]
    hooks = [
        layer.router.register_forward_hook(
            lambda mod, inp, out, j=j: per_layer[j].extend(out.experts.tolist())
        )
        for j, layer in enumerate(model.moe_layers)
    ]
    with torch.no_grad():
        for x, _ in data:
            model(x)
    for h in hooks:
        h.remove()
    return per_layer


@pytest.fixture(scope="module")
def tiny_profile():
    model = tiny_model(tiny_recipe())
    data = batches()
    return model, data, profile_model(model, data)


@pytest.mark.parametrize("max_tokens", [None, 100])
def test_profiler_counts_equal_brute_force(max_tokens):
    model = tiny_model(tiny_recipe())
    data = batches()
    profile = profile_model(model, data, max_tokens=max_tokens)
    routings = recorded_routings(model, data)
    total = sum(x.numel() for x, _ in data)
    n = total if max_tokens is None else max_tokens  # 100 cuts the third batch mid-way
    assert profile.tokens == n
    for j, tokens in enumerate(routings):
        tokens = tokens[:n]
        co = torch.zeros(E, E, dtype=torch.long)
        load = torch.zeros(E, dtype=torch.long)
        for experts in tokens:
            for a in experts:
                load[a] += 1
                for b in experts:
                    if a != b:
                        co[a, b] += 1
        assert torch.equal(profile.coactivation[j], co)
        assert torch.equal(profile.load[j], load)
        assert profile.set_histogram[j] == Counter(tuple(sorted(t)) for t in tokens)
    assert profile.coactivation.sum() > 0 and len(profile.set_histogram[0]) > 3  # not degenerate


def test_artifact_round_trip(tmp_path, tiny_profile):
    _, _, profile = tiny_profile
    out = save_profile(profile, tmp_path / "prof", {"checkpoint": "none"})
    tensors, meta = read_profile(out)
    assert torch.equal(tensors["coactivation"], profile.coactivation)
    assert torch.equal(tensors["collaborators"], collaborators_from_counts(profile.coactivation))
    assert tensors["concentration"].shape == (LAYERS, E - 1) and tensors["specialization"].shape == (
        LAYERS,
        E,
    )
    assert meta["format"] == "moelight-profile" and meta["tokens"] == profile.tokens
    assert len(meta["summary"]["concentration"]) == E - 1
    # The c2r router's reader takes the directory or the safetensors file.
    for path in (out, out / "profile.safetensors"):
        lists, counts = load_collaboration(str(path), LAYERS, E)
        assert torch.equal(lists, tensors["collaborators"])
        assert torch.equal(counts, profile.coactivation.float())
    # The placement step reads the artifact.
    stats = write_placements(out, [2, 3])
    assert load_placement(str(out / "placement-3.json"), LAYERS, E, 3).shape == (LAYERS, E)
    assert stats["2"]["kept_share"] >= stats["2"]["contiguous_kept_share"]
    assert json.loads((out / "profile.json").read_text())["placements"]["3"]["file"] == "placement-3.json"


def test_c2r_router_from_artifact_picks_top1_and_first_t_collaborators(tmp_path, tiny_profile):
    _, _, profile = tiny_profile
    out = save_profile(profile, tmp_path / "prof")
    lists = profile.collaborators
    for top_t in (1, 2):
        recipe = tiny_recipe(name="c2r", top_t=top_t)
        recipe["profile"] = {"path": str(out)}
        model = tiny_model(recipe)
        differs = 0
        with torch.no_grad():
            model(batches(1, 4, 32)[0][0])
        for j, layer in enumerate(model.moe_layers):
            routing = layer.last_routing
            assert torch.equal(routing.experts[:, 0], routing.logits.argmax(-1))
            for e0, rest in zip(routing.experts[:, 0].tolist(), routing.experts[:, 1:].tolist(), strict=True):
                allowed = [c for c in lists[j, e0].tolist() if c != e0][:top_t]
                assert set(rest) <= set(allowed)
            plain = routing.logits.topk(K, -1).indices.sort(-1).values
            differs += int((plain != routing.experts.sort(-1).values).any(-1).sum())
        assert differs > 0  # the constraint is active


def test_profile_artifact_of_the_wrong_shape_is_a_clean_error(tmp_path, tiny_profile, capsys):
    _, _, profile = tiny_profile  # 2 MoE layers x 6 experts
    out = save_profile(profile, tmp_path / "prof")
    common = ["fit", str(ROOT / "recipes" / "quickstart.yaml"), "router.name=c2r", "router.top_t=1"]
    common += [f"profile.path={out}", f"trainer.out_dir={tmp_path / 'run'}", "trainer.max_steps=1"]
    code = main([*common, "model.num_experts=6"])  # 4 MoE layers (quickstart) vs 2
    err = capsys.readouterr().err
    assert code == 2
    assert "profile.path" in err and "2 MoE layers x 6 experts" in err and "4 MoE layers x 6 experts" in err
    assert "Traceback" not in err
    code = main([*common, "model.n_layers=2"])  # 8 experts (quickstart) vs 6
    err = capsys.readouterr().err
    assert code == 2 and "2 MoE layers x 8 experts" in err and "Traceback" not in err


def test_profile_cli_end_to_end(tmp_path):
    recipe = tiny_recipe()
    recipe["data"] = {
        "seq_len": 16,
        "batch_size": 4,
        "val_fraction": 0.5,
        "cache_dir": str(tmp_path / "cache"),
    }
    model = tiny_model(recipe)
    ckpt = tmp_path / "tiny.ckpt"
    # What Lightning writes for MoELanguageModel: the recipe in hyper_parameters, "model." keys.
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"recipe": validate_recipe(recipe).model_dump(mode="json")},
        },
        ckpt,
    )
    text = tmp_path / "corpus.txt"
    text.write_text("def add(a, b):\n    return a + b\n" * 80)
    out = tmp_path / "profile"
    argv = ["profile", str(ckpt), "--data", str(text), "--max-tokens", "300", "--devices", "2"]
    assert main([*argv, "--devices", "3", "--out", str(out)]) == 0
    for name in ("profile.safetensors", "profile.json", "placement-2.json", "placement-3.json"):
        assert (out / name).is_file(), name
    for name in ("coactivation.png", "concentration.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((out / "profile.json").read_text())
    assert meta["tokens"] == 300 and meta["data"]["source"] == str(text.resolve())
    assert set(meta["placements"]) == {"2", "3"}
    assert meta["loss"] > 0
    # The checkpoint's model, profiled again in-process on the same validation split, agrees.
    loaded = load_checkpoint(ckpt, [f"data.source={text}"])
    assert loaded.recipe.model.num_experts == E
    datamodule = MoEDataModule(loaded.recipe.data, seed=loaded.recipe.seed)
    datamodule.setup("validate")
    again = profile_model(loaded.model, datamodule.val_dataloader(), max_tokens=300)
    tensors, _ = read_profile(out)
    assert torch.equal(tensors["coactivation"], again.coactivation)
    assert int(tensors["coactivation"].sum()) == LAYERS * 300 * K * (K - 1)
    # Bad requests are clean errors (exit 2).
    assert main(["profile", str(ckpt), "--out", str(tmp_path / "x"), "--devices", "4"]) == 2
    assert main(["profile", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")]) == 2
    assert main(["profile", str(ckpt)]) == 2


def test_shipped_profile_fits_the_c2r_recipes():
    from moelight.recipe import load_recipe

    for name in ("c2r.yaml", "c2r-finetune.yaml"):
        recipe = load_recipe(ROOT / "recipes" / name)
        assert recipe.router["name"] == "c2r"
        assert Path(recipe.profile.path).is_dir()
        lists, counts = load_collaboration(recipe.profile.path, 4, 8)
        assert counts is not None and counts.sum() > 0
        build_model(recipe)  # the router accepts the artifact's lists


def test_expert_parallel_recipe_is_profiled_in_one_process_with_its_routing():
    """A checkpoint trained with experts on 2 devices: all experts are built here, and the
    c2r router keeps its device-local candidates (collaborators: placement)."""
    from moelight.load import single_process_model

    recipe = tiny_recipe(name="c2r", top_t=2, collaborators="placement")
    recipe["parallel"] = {"expert_parallel": 2}  # contiguous: experts 0-2 and 3-5
    torch.manual_seed(0)
    model = single_process_model(validate_recipe(recipe)).eval()
    assert all(layer.experts.num_local == E for layer in model.moe_layers)
    with torch.no_grad():
        model(batches(1)[0][0])
    for layer in model.moe_layers:
        device = layer.last_routing.experts // 3
        assert (device == device[:, :1]).all()
