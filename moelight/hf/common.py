"""Hugging Face MoE checkpoints in and out: the converter shared by every architecture.

Import reads `config.json` and the `*.safetensors` files of a local checkpoint directory directly
(never the in-memory transformers modules, which fuse the experts), maps every tensor to its
moelight name and checks it against the shape the converted `ModelConfig` implies. Export runs
the same name table backwards and writes the hub's on-disk layout (one tensor per expert).

The architecture-specific parts (config translation, module prefixes, expert and router tensor
names) live in one module per architecture (`qwen2_moe.py`, `mixtral.py`, `olmoe.py`,
`llama_moe.py`); the name table below is shared, because all of them are Llama-style decoders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from moelight.errors import MoelightError, validation_message
from moelight.model.init_from import _first, read_checkpoint
from moelight.recipe import ModelConfig

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# Tensors some checkpoints carry that hold no learned state (rotary tables).
IGNORED_HF = re.compile(r".*\.rotary_emb\.inv_freq$")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---- architectures -------------------------------------------------------------------------


class Architecture:
    """What differs between HF MoE architectures. Subclasses live in one module each."""

    name: str  # the config.json `model_type`
    hf_class: str  # the config.json `architectures` entry
    moe_module: str = "mlp"  # `model.layers.{i}.<moe_module>.gate / .experts.{j}...`
    expert_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")  # w1, v1, w2

    def to_moelight(self, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        """HF config -> (ModelConfig fields, router section, notes for the user)."""
        raise NotImplementedError

    def to_hf(self, model: ModelConfig, router: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """moelight model + router -> (config.json fields, warnings); MoelightError if inexpressible."""
        raise NotImplementedError

    def prepare_export(
        self, model: ModelConfig, state: dict[str, torch.Tensor]
    ) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
        """Adjust model and tensors to what the HF class always builds (e.g. zero biases)."""
        return model, state

    def router_entries(self, mlp: str, ours: str, router: dict[str, Any] | None) -> list[Entry]:
        """The router's tensors of one MoE layer (`mlp`: its HF prefix, `ours`: `blocks.{i}.ffn`)."""
        return [Entry(f"{ours}.router.gate.weight", (f"{mlp}.gate.weight",))]

    def collaborator_lists(self, cfg: dict[str, Any]) -> list | None:
        """Collaborator lists [layers][E][E] a C2R checkpoint's config.json carries for its router."""
        return None

    def shape_router(self, router: dict[str, Any] | None) -> dict[str, Any]:
        """A router section with the same parameter names as `router`, buildable without a profile."""
        return {"name": "topk"}

    def expert_key(self, mlp: str, hf_name: str, expert: int) -> str:
        return f"{mlp}.experts.{expert}.{hf_name}.weight"

    fused_experts: bool = True  # transformers-5 fused `experts.gate_up_proj` accepted on import


def architectures() -> dict[str, Architecture]:
    from moelight.hf.llama_moe import LlamaMoe
    from moelight.hf.mixtral import Mixtral
    from moelight.hf.olmoe import Olmoe
    from moelight.hf.qwen2_moe import Qwen2Moe

    return {a.name: a for a in (Qwen2Moe(), Mixtral(), Olmoe(), LlamaMoe())}


def get_architecture(name: str | None, where: str = "") -> Architecture:
    archs = architectures()
    if name not in archs:
        what = f"{where}: " if where else ""
        raise MoelightError(
            f"{what}unsupported architecture {name!r}; supported: {', '.join(archs)} "
            "(Qwen2-MoE / Qwen1.5-MoE, Mixtral, OLMoE, LLaMA-MoE v1)"
        )
    return archs[name]


# ---- config helpers shared by the architectures ---------------------------------------------


def require(cfg: dict[str, Any], key: str, source: str) -> Any:
    if cfg.get(key) is None:
        raise MoelightError(f"{source}: config.json has no {key!r}")
    return cfg[key]


def rope_theta(cfg: dict[str, Any], source: str, default: float) -> float:
    """rope_theta from transformers 5 (`rope_parameters`) or 4 (`rope_theta`/`rope_scaling`)."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise MoelightError(
            f"{source}: rope type {rope_type!r} is not supported (moelight implements plain RoPE only)"
        )
    return float(params.get("rope_theta") or cfg.get("rope_theta") or default)


def check_silu(cfg: dict[str, Any], source: str) -> None:
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise MoelightError(f"{source}: hidden_act {act!r} is not supported (moelight's experts are SwiGLU)")


def head_dim_field(cfg: dict[str, Any]) -> int | None:
    """config.json head_dim, or None where it is the default hidden_size / num_attention_heads."""
    head_dim = cfg.get("head_dim")
    if head_dim is None or head_dim * cfg["num_attention_heads"] == cfg["hidden_size"]:
        return None
    return int(head_dim)


def common_model_fields(cfg: dict[str, Any], source: str, rope_default: float) -> dict[str, Any]:
    """The ModelConfig fields every Llama-style decoder spells the same way."""
    check_silu(cfg, source)
    heads = require(cfg, "num_attention_heads", source)
    return {
        "vocab_size": require(cfg, "vocab_size", source),
        "n_layers": require(cfg, "num_hidden_layers", source),
        "hidden_size": require(cfg, "hidden_size", source),
        "n_heads": heads,
        "n_kv_heads": cfg.get("num_key_value_heads") or heads,
        "head_dim": head_dim_field(cfg),
        "rope_theta": rope_theta(cfg, source, rope_default),
        "norm_eps": cfg.get("rms_norm_eps", 1e-6),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
    }


def every_layer_moe_fields(
    cfg: dict[str, Any], source: str, *, rope_default: float, experts_key: str, qk_norm: bool
) -> dict[str, Any]:
    """ModelConfig fields of a decoder that is MoE in every layer, without a shared expert or
    attention biases (Mixtral, OLMoE); `experts_key` is the config.json name of the expert count."""
    fields = common_model_fields(cfg, source, rope_default)
    k = require(cfg, "num_experts_per_tok", source)
    ffn = require(cfg, "intermediate_size", source)
    fields.update(
        ffn_hidden_size=ffn,  # unused: every layer is MoE
        num_experts=require(cfg, experts_key, source),
        top_k=k,
        expert_ffn_hidden_size=ffn,
        moe_every=1,
        shared_expert_ffn_hidden_size=0,
        shared_expert_gate=False,
        qkv_bias=False,
        qk_norm=qk_norm,
    )
    return fields


def common_hf_fields(model: ModelConfig) -> dict[str, Any]:
    head_dim = model.head_dim or model.hidden_size // model.n_heads
    return {
        "vocab_size": model.vocab_size,
        "hidden_size": model.hidden_size,
        "num_hidden_layers": model.n_layers,
        "num_attention_heads": model.n_heads,
        "num_key_value_heads": model.n_kv_heads or model.n_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": model.norm_eps,
        "tie_word_embeddings": model.tie_embeddings,
        # Both spellings: transformers 5 reads rope_parameters, 4.x reads rope_theta.
        "rope_theta": model.rope_theta,
        "rope_parameters": {"rope_theta": model.rope_theta, "rope_type": "default"},
        "max_position_embeddings": 4096,
        "initializer_range": model.init_std,
        "attention_dropout": 0.0,
        "use_cache": True,
    }


def aux_coef_to_moelight(hf_coef: float, top_k: int, n_moe_layers: int) -> float:
    """HF's load-balancing loss counts k assignments per token and averages over layers; moelight's
    counts shares of the T*k assignments and sums over layers: equal totals need this factor."""
    return float(hf_coef) * top_k / max(n_moe_layers, 1)


def aux_coef_to_hf(coef: float, top_k: int, n_moe_layers: int) -> float:
    return float(coef) * max(n_moe_layers, 1) / top_k


EXPORTABLE_ROUTERS = ("topk",)


def topk_router_of(
    router: dict[str, Any], arch: str, top_k: int, *, renormalize_fixed: bool | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Check a router section can be expressed as HF's softmax top-k; return (params, warnings)."""
    from moelight.registry import routers

    name = router.get("name")
    if name not in EXPORTABLE_ROUTERS:
        from moelight.hf.router_swap import refuse_routing_change

        refuse_routing_change(name, arch, top_k)
    _, params = routers.params(router, "router")
    values = params.model_dump()
    warnings: list[str] = []
    if values.get("score", "softmax") != "softmax":
        raise MoelightError(f"--arch {arch}: the router scores with {values['score']}; {arch} uses softmax")
    if renormalize_fixed is not None and bool(values.get("renormalize", False)) != renormalize_fixed:
        raise MoelightError(
            f"--arch {arch}: {arch} always uses renormalize={renormalize_fixed} for the top-k weights, "
            f"the model's router has renormalize={values.get('renormalize')}"
        )
    values.setdefault("renormalize", False)
    values.setdefault("aux_loss_coef", 0.0)
    return values, warnings


def moe_layers(n_layers: int, moe_every: int) -> list[int]:
    return [i for i in range(n_layers) if (i + 1) % moe_every == 0]


def validate_model(fields: dict[str, Any], source: str) -> ModelConfig:
    try:
        return ModelConfig.model_validate(fields)
    except ValidationError as err:
        raise MoelightError(
            f"{source}: the converted model section is invalid:\n{validation_message(err, 'model')}"
        ) from None


# ---- the name table ------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One moelight tensor and the HF tensor(s) it comes from.

    One HF key: copied as is. Several: the per-expert tensors, stacked along a new dim 0 in
    expert order. `fused`: the transformers-5 in-memory layout (`experts.gate_up_proj` /
    `experts.down_proj`), accepted on import when the per-expert tensors are absent.
    """

    ours: str
    hf: tuple[str, ...]
    fused: tuple[str, str] | None = None  # (hf key, "gate" | "up" | "down")

    @property
    def stacked(self) -> bool:
        return len(self.hf) > 1 or self.fused is not None


def weight_map(model: ModelConfig, arch: Architecture, router: dict[str, Any] | None = None) -> list[Entry]:
    """Every tensor of the moelight model (all experts) with its HF source, in model order."""
    entries = [Entry("embed.weight", ("model.embed_tokens.weight",))]
    linears = ["q_proj", "k_proj", "v_proj", "o_proj"]
    for i in range(model.n_layers):
        hf, ours = f"model.layers.{i}", f"blocks.{i}"
        entries.append(Entry(f"{ours}.attn_norm.weight", (f"{hf}.input_layernorm.weight",)))
        for name in linears:
            entries.append(Entry(f"{ours}.attn.{name}.weight", (f"{hf}.self_attn.{name}.weight",)))
            if model.qkv_bias and name != "o_proj":
                entries.append(Entry(f"{ours}.attn.{name}.bias", (f"{hf}.self_attn.{name}.bias",)))
        if model.qk_norm:
            for name in ("q_norm", "k_norm"):
                entries.append(Entry(f"{ours}.attn.{name}.weight", (f"{hf}.self_attn.{name}.weight",)))
        entries.append(Entry(f"{ours}.ffn_norm.weight", (f"{hf}.post_attention_layernorm.weight",)))
        if model.is_moe_layer(i):
            mlp = f"{hf}.{arch.moe_module}"
            entries += arch.router_entries(mlp, f"{ours}.ffn", router)
            for param, hf_name, part in zip(
                ("w1", "v1", "w2"), arch.expert_names, ("gate", "up", "down"), strict=True
            ):
                per_expert = tuple(arch.expert_key(mlp, hf_name, e) for e in range(model.num_experts))
                fused_key = f"{mlp}.experts.{'down_proj' if part == 'down' else 'gate_up_proj'}"
                fused = (fused_key, part) if arch.fused_experts else None
                entries.append(Entry(f"{ours}.ffn.experts.{param}", per_expert, fused))
            if model.shared_expert_ffn_hidden_size:
                for name in ("gate_proj", "up_proj", "down_proj"):
                    entries.append(
                        Entry(
                            f"{ours}.ffn.shared_expert.{name}.weight", (f"{mlp}.shared_expert.{name}.weight",)
                        )
                    )
                if model.shared_expert_gate:
                    entries.append(
                        Entry(f"{ours}.ffn.shared_expert_gate.weight", (f"{mlp}.shared_expert_gate.weight",))
                    )
        else:
            for name in ("gate_proj", "up_proj", "down_proj"):
                entries.append(Entry(f"{ours}.ffn.{name}.weight", (f"{hf}.mlp.{name}.weight",)))
    entries.append(Entry("norm.weight", ("model.norm.weight",)))
    if not model.tie_embeddings:
        entries.append(Entry("lm_head.weight", ("lm_head.weight",)))
    return entries


def expected_shapes(model: ModelConfig, router: dict[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """The moelight state-dict shapes `model` (and the router's gate) imply (all experts), from a
    model on the meta device."""
    from moelight.model.build import build_model, layer_contexts
    from moelight.recipe import Recipe

    recipe = Recipe(model=model, router=router or {"name": "topk"})
    contexts = layer_contexts(recipe)
    with torch.device("meta"):
        built = build_model(recipe, contexts=contexts)
    return {k: tuple(v.shape) for k, v in built.state_dict().items()}


def _fmt(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


# ---- reading a checkpoint directory ----------------------------------------------------------


@dataclass
class HFCheckpoint:
    """A local HF checkpoint directory: its config.json and its safetensors tensors (read lazily)."""

    path: Path
    config: dict[str, Any]
    files: dict[str, Path]  # tensor name -> file
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> HFCheckpoint:
        path = Path(path)
        if not path.is_dir():
            raise MoelightError(f"Hugging Face checkpoint directory not found: {path}")
        config_path = path / "config.json"
        if not config_path.is_file():
            raise MoelightError(f"{path}: no config.json (expected a Hugging Face checkpoint directory)")
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise MoelightError(f"{config_path}: cannot read: {exc}") from None
        if not isinstance(config, dict):
            raise MoelightError(f"{config_path}: expected a JSON object")
        files: dict[str, Path] = {}
        handles: dict[Path, Any] = {}
        index = path / INDEX_NAME
        if index.is_file():
            try:
                weight_map_ = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise MoelightError(f"{index}: cannot read the shard index: {exc}") from None
            missing = sorted({f for f in weight_map_.values() if not (path / f).is_file()})
            if missing:
                raise MoelightError(
                    f"{path}: missing weight files named in {INDEX_NAME}: {', '.join(missing[:5])}"
                    + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
                )
            files = {name: path / f for name, f in weight_map_.items()}
        else:
            shards = sorted(path.glob("*.safetensors"))
            if not shards:
                other = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
                hint = (
                    f" (found {', '.join(other[:3])}: only safetensors are read; re-save with "
                    "save_pretrained(..., safe_serialization=True))"
                    if other
                    else ""
                )
                raise MoelightError(f"{path}: missing weight files: no *.safetensors{hint}")
            for shard in shards:
                # Kept open: the tensors are read from the same handles later.
                handles[shard] = _safe_open(shard)
                files.update(dict.fromkeys(handles[shard].keys(), shard))
        return cls(path, config, files, handles)

    def has(self, name: str) -> bool:
        return name in self.files

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name)

    def _handle(self, name: str) -> Any:
        file = self.files[name]
        if file not in self._handles:
            self._handles[file] = _safe_open(file)
        return self._handles[file]


def _safe_open(file: Path) -> Any:
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="pt")
    except Exception as exc:  # safetensors raises its own error types
        raise MoelightError(f"{file}: not a readable safetensors file: {exc}") from None


# ---- import --------------------------------------------------------------------------------


@dataclass
class Imported:
    arch: Architecture
    model: ModelConfig
    router: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    notes: list[str]
    collaborators: list | None = None  # a C2R checkpoint's lists, written as the recipe's profile


def _read_entry(ckpt: HFCheckpoint, entry: Entry, expected: tuple[int, ...]) -> torch.Tensor:
    source = ckpt.path
    if not entry.stacked:
        (key,) = entry.hf
        shape = ckpt.shape(key)
        if shape != expected:
            raise MoelightError(
                f"{source}: shape mismatch: {key} is {_fmt(shape)}, but config.json implies {_fmt(expected)} "
                f"(moelight {entry.ours})"
            )
        return ckpt.get(key)
    per_expert = expected[1:]
    if ckpt.has(entry.hf[0]) or entry.fused is None or not ckpt.has(entry.fused[0]):
        parts = []
        for key in entry.hf:
            shape = ckpt.shape(key)
            if shape != per_expert:
                raise MoelightError(
                    f"{source}: shape mismatch: {key} is {_fmt(shape)}, but config.json implies "
                    f"{_fmt(per_expert)} per expert (moelight {entry.ours} {_fmt(expected)})"
                )
            parts.append(ckpt.get(key))
        return torch.stack(parts)
    # The fused transformers-5 layout: gate_up_proj [E, 2*ffn, d] (gate rows first), down_proj [E, d, ffn].
    key, part = entry.fused
    shape = ckpt.shape(key)
    want = (expected[0], 2 * expected[1], expected[2]) if part != "down" else expected
    if shape != want:
        raise MoelightError(
            f"{source}: shape mismatch: {key} is {_fmt(shape)}, but config.json implies {_fmt(want)}"
        )
    tensor = ckpt.get(key)
    if part == "down":
        return tensor
    ffn = expected[1]
    return (tensor[:, :ffn] if part == "gate" else tensor[:, ffn:]).contiguous()


def import_hf(hf_dir: str | Path) -> Imported:
    """Read a local HF MoE checkpoint into a moelight ModelConfig, router section and state dict."""
    ckpt = HFCheckpoint.open(hf_dir)
    model_type = ckpt.config.get("model_type")
    arch = get_architecture(model_type, f"{ckpt.path}/config.json model_type")
    fields, router, notes = arch.to_moelight(ckpt.config)
    model = validate_model(fields, str(ckpt.path))
    shapes = expected_shapes(model, arch.shape_router(router))
    entries = weight_map(model, arch, router)

    # All missing tensors at once: a wrong config usually misses many, and the list says which.
    missing = []
    for e in entries:
        fused_ok = e.fused is not None and ckpt.has(e.fused[0])
        if not fused_ok:
            missing += [k for k in e.hf if not ckpt.has(k)]
    if missing:
        raise MoelightError(
            f"{ckpt.path}: missing weights for the architecture config.json describes: {_first(missing)}"
        )

    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for e in entries:
        if e.ours not in shapes:  # a name-table bug, not a user error
            raise AssertionError(f"weight_map names {e.ours}, which the moelight model does not have")
        state[e.ours] = _read_entry(ckpt, e, shapes[e.ours])
        used.update(e.hf)
        if e.fused is not None:
            used.add(e.fused[0])
    not_mapped = sorted(set(shapes) - set(state))
    if not_mapped:
        raise AssertionError(f"weight_map misses moelight tensors {not_mapped[:5]}")

    ignorable = {"lm_head.weight"} if model.tie_embeddings else set()
    unexpected = [k for k in ckpt.files if k not in used and k not in ignorable and not IGNORED_HF.match(k)]
    if unexpected:
        raise MoelightError(
            f"{ckpt.path}: tensors the config.json does not account for: {_first(sorted(unexpected))} "
            "(is config.json from the same model?)"
        )
    return Imported(arch, model, router, state, notes, arch.collaborator_lists(ckpt.config))


# ---- export --------------------------------------------------------------------------------


def export_state_dict(
    state: dict[str, torch.Tensor],
    model: ModelConfig,
    arch: Architecture,
    dtype: torch.dtype | None = None,
    router: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """moelight state dict (all experts) -> HF tensors in the hub layout, shapes checked."""
    shapes = expected_shapes(model, arch.shape_router(router))
    entries = weight_map(model, arch, router)
    wanted = {e.ours for e in entries}
    missing = [e.ours for e in entries if e.ours not in state]
    if missing:
        raise MoelightError(f"the checkpoint lacks tensors the model section implies: {_first(missing)}")
    unexpected = sorted(set(state) - wanted)
    if unexpected:
        raise MoelightError(f"the checkpoint has tensors the model section does not: {_first(unexpected)}")
    out: dict[str, torch.Tensor] = {}
    for e in entries:
        t = state[e.ours]
        if tuple(t.shape) != shapes[e.ours]:
            raise MoelightError(
                f"shape mismatch: {e.ours} is {_fmt(t.shape)}, but the model section implies {_fmt(shapes[e.ours])}"
            )
        if dtype is not None:
            t = t.to(dtype)
        if e.stacked:
            for key, part in zip(e.hf, t.unbind(0), strict=True):
                out[key] = part.contiguous()
        else:
            out[e.hf[0]] = t.contiguous()
    return out


def export_hf(
    state: dict[str, torch.Tensor],
    model: ModelConfig,
    router: dict[str, Any],
    arch_name: str,
    out_dir: str | Path,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """Write config.json + model.safetensors (hub layout) for `arch_name`; returns warnings."""
    from safetensors.torch import save_file

    arch = get_architecture(arch_name, "--arch")
    config, warnings = arch.to_hf(model, router)
    model, state = arch.prepare_export(model, state)
    tensors = export_state_dict(state, model, arch, dtype, router)
    first = next(iter(tensors.values()))
    config = {
        "architectures": [arch.hf_class],
        "model_type": arch.name,
        **config,
        "dtype": str(first.dtype).removeprefix("torch."),
        "torch_dtype": str(first.dtype).removeprefix("torch."),  # the transformers-4 spelling
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return warnings


# ---- directories: what `moelight convert` reads and writes ------------------------------------

TOKENIZER_FILES = {
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
}
TOKENIZER_DIR = "tokenizer"
PROFILE_NAME = "collaborators.npy"


def tokenizer_files(directory: Path) -> list[Path]:
    """The tokenizer files of an HF directory (tokenizer.json, vocab, merges, chat template...)."""
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file()
        and (
            p.name.startswith("tokenizer") or p.name in TOKENIZER_FILES or p.suffix in (".tiktoken", ".model")
        )
    )


def _copy_files(files: list[Path], dest: Path) -> None:
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dest / f.name)


def _refuse_overwrite(out: Path, names: tuple[str, ...], force: bool) -> None:
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise MoelightError(f"{out} already holds {', '.join(existing)}; pass --force to overwrite")


@dataclass
class ImportResult:
    imported: Imported
    out_dir: Path
    recipe_path: Path
    weights_path: Path
    tokenizer: Path | None


def import_to_dir(
    hf_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None, force: bool = False
) -> ImportResult:
    """`moelight convert import`: DIR/model.safetensors (moelight names) + DIR/recipe.yaml (model
    section, `topk` router with the HF routing semantics, `model.init_from: model.safetensors`) and,
    when the HF directory has a tokenizer, DIR/tokenizer/ with `data.tokenizer` pointing at it."""
    import yaml
    from safetensors.torch import save_file

    from moelight.recipe import load_recipe

    out = Path(out_dir)
    _refuse_overwrite(out, (WEIGHTS_NAME, "recipe.yaml"), force)
    imported = import_hf(hf_dir)
    state = imported.state_dict
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_NAME
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(weights),
        metadata={
            "format": "pt",
            "moelight_source": str(Path(hf_dir).resolve()),
            "hf_arch": imported.arch.name,
        },
    )
    tok_files = tokenizer_files(Path(hf_dir))
    tok_dir = None
    if tok_files:
        tok_dir = out / TOKENIZER_DIR
        _copy_files(tok_files, tok_dir)

    model = imported.model.model_dump(mode="json") | {"init_from": WEIGHTS_NAME}
    recipe: dict[str, Any] = {"model": model, "router": imported.router}
    if imported.collaborators is not None:
        import numpy as np

        np.save(out / PROFILE_NAME, np.asarray(imported.collaborators, dtype=np.int16))
        recipe["profile"] = {"path": PROFILE_NAME}
    if tok_dir is not None:
        recipe["data"] = {"tokenizer": TOKENIZER_DIR}
    header = [
        f"# Imported by `moelight convert import` from {Path(hf_dir).resolve()} ({imported.arch.name}).",
        "# Relative paths are resolved against this file. Train from it with `moelight fit` and",
        "# overrides, or start another recipe from it with `extends: <this file>`.",
        "# The router reproduces the HF model's routing; switch it (e.g. router.name=c2r) to fine-tune.",
    ]
    header += [f"# NOTE: {n}" for n in imported.notes]
    recipe_path = out / "recipe.yaml"
    recipe_path.write_text("\n".join(header) + "\n" + yaml.safe_dump(recipe, sort_keys=False))
    load_recipe(recipe_path)  # what we wrote must load: a bug here should not reach the user's run
    return ImportResult(imported, out, recipe_path, weights, tok_dir)


def export_from_checkpoint(
    source: str | Path,
    out_dir: str | Path,
    arch: str,
    recipe_path: str | Path | None = None,
    dtype: torch.dtype | None = None,
    force: bool = False,
    replace_router: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[str]:
    """`moelight convert export`: a converted directory, .safetensors or Lightning .ckpt -> an HF
    directory (config.json + model.safetensors in the hub layout, plus the tokenizer if known).
    `replace_router` maps the checkpoint's router section to the one exported (`--router`)."""
    from moelight.recipe import load_recipe, validate_recipe

    get_architecture(arch, "--arch")  # before reading a possibly large checkpoint
    out = Path(out_dir)
    _refuse_overwrite(out, ("config.json", WEIGHTS_NAME), force)
    state, recipe_dict = read_checkpoint(source)
    if recipe_path is not None:
        recipe = load_recipe(recipe_path)
    elif recipe_dict is not None:
        recipe = validate_recipe(recipe_dict)
    else:
        raise MoelightError(
            f"{source} carries no recipe: pass --recipe RECIPE (the recipe whose model section it was trained with)"
        )
    router = recipe.router if replace_router is None else replace_router(recipe.router)
    warnings = export_hf(state, recipe.model, router, arch, out, dtype)
    tok = recipe.data.tokenizer
    if tok != "bytes" and Path(tok).is_dir():
        _copy_files(tokenizer_files(Path(tok)), out)
    elif tok == "bytes":
        warnings.append(
            "no tokenizer exported (the recipe's data.tokenizer is 'bytes'): copy the model's "
            f"Hugging Face tokenizer files into {out}"
        )
    return warnings
