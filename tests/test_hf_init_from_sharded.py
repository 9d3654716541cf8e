"""`model.init_from=HF_DIR`: a Hugging Face directory converted tensor by tensor, each rank reading
only its experts' per-expert tensors. Checked against plain whole-file reading of the HF tensors
(safetensors.load_file, the name table, stacking / splitting by hand) at P=1 and at each rank of
EP P=2; the conversions themselves are checked against transformers in test_hf_convert.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")

from moelight.hf.checkpoint_dir import HFCheckpoint  # noqa: E402
from moelight.hf.importer import HFSource  # noqa: E402
from moelight.hf.name_table import weight_map  # noqa: E402
from moelight.hf.tiny import make_tiny_checkpoint, make_tiny_llama_moe_checkpoint  # noqa: E402
from moelight.load import load_init_weights  # noqa: E402
from moelight.model.build import build_model, layer_contexts  # noqa: E402
from moelight.model.meta_params import parameters_on_meta  # noqa: E402
from moelight.moe.dispatch import ExpertParallelContext  # noqa: E402
from moelight.moe.experts import named_expert_parameters  # noqa: E402
from moelight.recipe import validate_recipe  # noqa: E402

CASES = ["qwen2_moe", "mixtral", "olmoe", "llama_moe", "qwen2_moe-fused"]


def fuse_experts(hf_dir: Path, num_experts: int) -> None:
    """Rewrite a per-expert Qwen2-MoE file in the transformers-5 fused layout (gate_up_proj / down_proj)."""
    f = hf_dir / "model.safetensors"
    state = load_file(f)
    prefixes = sorted({k.split(".experts.")[0] for k in state if ".experts.0.gate_proj" in k})
    for p in prefixes:
        pick = [
            state.pop(f"{p}.experts.{e}.{n}.weight")
            for e in range(num_experts)
            for n in ("gate_proj", "up_proj", "down_proj")
        ]
        gate, up, down = pick[0::3], pick[1::3], pick[2::3]
        state[f"{p}.experts.gate_up_proj"] = torch.stack([torch.cat([g, u]) for g, u in zip(gate, up)])
        state[f"{p}.experts.down_proj"] = torch.stack(down)
    save_file(state, f, metadata={"format": "pt"})


@pytest.fixture(scope="module", params=CASES)
def hf_dir(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(request.param) / "hf"
    if request.param == "llama_moe":
        return make_tiny_llama_moe_checkpoint(out, num_experts=4)
    make_tiny_checkpoint(request.param.removesuffix("-fused"), out, seed=3)
    if request.param.endswith("-fused"):
        fuse_experts(out, HFSource(out).model.num_experts)
    return out


def reference(source: HFSource, name: str, rows: list[int] | None) -> torch.Tensor:
    """Whole-file reading: every HF tensor in memory, then stacked / split by hand."""
    hf = {}
    for file in sorted(source.path.glob("*.safetensors")):
        hf.update(load_file(file))
    entry = {e.ours: e for e in weight_map(source.model, source.arch, source.router)}[name]
    if not entry.stacked:
        return hf[entry.hf[0]]
    rows = list(range(source.model.num_experts)) if rows is None else rows
    if entry.hf[0] in hf:
        return torch.stack([hf[entry.hf[g]] for g in rows])
    key, part = entry.fused
    t = hf[key][rows]
    ffn = source.model.expert_ffn_hidden_size
    return t if part == "down" else (t[:, :ffn] if part == "gate" else t[:, ffn:])


@pytest.mark.parametrize("ep", [(0, 1), (0, 2), (1, 2)], ids=["p1", "ep2-rank0", "ep2-rank1"])
def test_hf_directory_loads_each_ranks_part(hf_dir, ep, monkeypatch):
    rank, size = ep
    source = HFSource(hf_dir)
    extra = {"parallel": {"expert_parallel": size}}
    if size > 1:
        extra["dispatcher"] = {"name": "grouplocal"}
    recipe = validate_recipe(source.recipe | extra)
    contexts = layer_contexts(recipe)
    with parameters_on_meta():
        model = build_model(recipe, ExpertParallelContext(rank=rank, size=size), contexts)
    read: list[str] = []
    original = HFCheckpoint.read
    monkeypatch.setattr(
        HFCheckpoint, "read", lambda self, name, index=None: read.append(name) or original(self, name, index)
    )
    load_init_weights(model, str(hf_dir))
    experts = {name: owner.global_ids for name, _, owner in named_expert_parameters(model)}
    for name, value in model.state_dict().items():
        want = reference(source, name, experts.get(name))
        assert torch.equal(value, want.to(value.dtype)), name
    # Per-expert HF tensors: only this rank's experts were read.
    local = set(next(iter(experts.values())))
    entries = [e for e in weight_map(source.model, source.arch, source.router) if len(e.hf) > 1]
    others = {e.hf[g] for e in entries for g in range(len(e.hf)) if g not in local}
    mine = {e.hf[g] for e in entries for g in local}
    assert not others & set(read), sorted(others & set(read))[:3]
    if hf_dir.parent.name.startswith("qwen2_moe-fused"):
        assert not mine & set(read)  # fused tensors instead: their local rows are sliced
    else:
        assert mine <= set(read)
    if size > 1:
        assert len(local) == source.model.num_experts // 2


def test_eval_loader_reads_an_hf_directory_like_transformers(tmp_path):
    """`moelight eval` / `profile` load through the same reader: an HF directory gives the
    logits transformers computes from it (fp32; summation order only)."""
    import transformers

    from moelight.load import load_checkpoint

    hf_dir = make_tiny_checkpoint("qwen2_moe", tmp_path / "hf", seed=1)
    loaded = load_checkpoint(hf_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    idx = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded.model.eval()(idx), hf(idx).logits, atol=2e-5, rtol=0)
