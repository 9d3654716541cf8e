"""Recipes: one pydantic model tree, loaded from YAML with `extends:` and dotted overrides.

The defaults of this tree ARE the embedded default recipe (`moelight fit` with no file), and
`recipes/quickstart.yaml` spells the same values out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from moelight.errors import ConfigError, MoelightError, validation_message
from moelight.registry import dispatchers, load_plugin_modules, routers


def moe_layer_indices(n_layers: int, moe_every: int) -> list[int]:
    """The MoE layers of a model with an MoE FFN every `moe_every`-th layer: n-1, 2n-1, ..."""
    return [i for i in range(n_layers) if (i + 1) % moe_every == 0]


class Section(BaseModel):
    # inf/NaN are never meaningful recipe values (optim.lr=.inf trains straight to NaN).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelConfig(Section):
    vocab_size: int = Field(260, gt=0, description="byte-level: 256 bytes + specials")
    n_layers: int = Field(4, gt=0)
    hidden_size: int = Field(128, gt=0)
    n_heads: int = Field(4, gt=0)
    n_kv_heads: int | None = Field(None, gt=0, description="grouped-query attention; None = n_heads")
    head_dim: int | None = Field(None, gt=0, description="None = hidden_size / n_heads")
    ffn_hidden_size: int = Field(256, gt=0, description="dense FFN width (non-MoE layers)")
    num_experts: int = Field(8, gt=0)
    top_k: int = Field(2, gt=0)
    expert_ffn_hidden_size: int = Field(128, gt=0)
    moe_every: int = Field(1, gt=0, description="an MoE FFN every n-th layer (the others are dense)")
    shared_expert_ffn_hidden_size: int = Field(0, ge=0, description="0 = no shared expert")
    shared_expert_gate: bool = Field(False, description="sigmoid gate on the shared expert (Qwen2-MoE)")
    tie_embeddings: bool = True
    rope_theta: float = Field(10000.0, gt=0)
    max_position_embeddings: int | None = Field(
        None,
        gt=0,
        description="the context length the model is made for (`convert import` copies the HF config's); "
        "None = data.seq_len, the length it was trained on",
    )
    norm_eps: float = Field(1e-5, gt=0)
    qkv_bias: bool = False
    qk_norm: bool = Field(False, description="RMSNorm on the full q and k projections (OLMoE)")
    init_std: float = Field(0.02, gt=0)
    init_from: str | None = Field(None, description="a moelight checkpoint or converted model to start from")

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must be <= num_experts ({self.num_experts})")
        if self.head_dim is None and self.hidden_size % self.n_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.n_kv_heads and self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        return self

    @property
    def moe_layers(self) -> list[int]:
        return moe_layer_indices(self.n_layers, self.moe_every)

    def is_moe_layer(self, i: int) -> bool:
        return i in self.moe_layers


class DataConfig(Section):
    source: str = Field("embedded", description="'embedded' (the stdlib source) or a local file/directory")
    format: Literal["auto", "text", "jsonl", "instruct"] = "auto"
    text_field: str = "text"
    tokenizer: str = Field("bytes", description="'bytes' or a local Hugging Face tokenizer directory")
    seq_len: int = Field(128, gt=1)
    batch_size: int = Field(16, gt=0)
    val_fraction: float = Field(
        0.02, ge=0, lt=1, description="held out for validation; 0 = train on every row (see val_source)"
    )
    val_source: str | None = Field(
        None,
        description="validation from this separate file/directory (same format), all of it; "
        "needs val_fraction: 0. None with val_fraction: 0 = no validation",
    )
    turns: Literal["all", "first"] = Field(
        "all",
        description="instruct: multi-turn conversations train on every turn (all) or are cut to "
        "their first user/assistant exchange (first)",
    )
    max_bytes: int | None = Field(None, gt=0, description="use only the first n bytes of the corpus")
    cache_dir: str | None = Field(None, description="tokenised-corpus cache; None = ~/.cache/moelight")
    num_workers: int = Field(0, ge=0)
    packing: bool = Field(
        True, description="instruct: pack conversations into seq_len streams; false = one per row, padded"
    )
    padding: Literal["longest", "max_length"] = Field(
        "longest", description="packing: false: pad each batch to its longest row, or always to seq_len"
    )
    prompt_template: Literal["auto", "c2r-instruct", "vicuna"] = Field(
        "auto",
        description="instruct: auto = the tokenizer's chat template (else a plain format); c2r-instruct / "
        "vicuna = the C2R paper's Qwen / LLaMA-MoE fine-tuning prompts",
    )

    @model_validator(mode="after")
    def _validation_source(self) -> DataConfig:
        if self.val_source is not None and self.val_fraction > 0:
            raise ValueError(
                f"val_source replaces the held-out split: set val_fraction: 0 (got {self.val_fraction})"
            )
        return self

    @property
    def has_validation(self) -> bool:
        return self.val_fraction > 0 or self.val_source is not None


class OptimConfig(Section):
    lr: float = Field(3e-3, gt=0)
    schedule: Literal["cosine", "deepspeed_warmup"] = Field(
        "cosine",
        description="cosine: linear warm-up, cosine decay to min_lr_ratio x lr; deepspeed_warmup: "
        "DeepSpeed's WarmupLR (warm-up from min_lr_ratio x lr, then constant lr)",
    )
    warmup_type: Literal["log", "linear"] | None = Field(
        None, description="deepspeed_warmup's warm-up curve (DeepSpeed's warmup_type); None = log"
    )
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="cosine: the end of the decay; deepspeed_warmup: the warm-up's start"
    )
    warmup_steps: int = Field(30, ge=0)
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="> 0: warm up for ceil(ratio x total steps) instead of warmup_steps"
    )
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas, each in [0, 1)")
    eps: float = Field(1e-8, gt=0)
    grad_clip: float | None = Field(
        1.0, gt=0, description="clip the gradient norm (Lightning's trainer.gradient_clip_val); null = off"
    )

    @model_validator(mode="after")
    def _warmup_type(self) -> OptimConfig:
        if self.warmup_type is not None and self.schedule != "deepspeed_warmup":
            raise ValueError(
                f"warmup_type applies to schedule: deepspeed_warmup only (schedule is {self.schedule!r}; "
                "cosine warms up linearly)"
            )
        return self

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"betas[{i}] = {beta} must be in [0, 1) (AdamW)")
        return betas


class TrainerConfig(Section):
    """The recipe's Trainer settings. Fields named like a Lightning Trainer argument ARE that
    argument; `out_dir`, `progress_bar` and `logger` set Lightning's `default_root_dir`,
    `enable_progress_bar` and default `logger`; every other Trainer argument is a `--trainer.*`
    flag of `moelight fit` (see moelight/cli/lightning_cli.py)."""

    max_steps: int = Field(300, gt=0, description="optimizer steps to train (the LR schedule spans them)")
    max_epochs: float | None = Field(
        None, gt=0, description="train for this many passes over the data (sets the steps; max_steps caps it)"
    )
    accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu, ...")
    devices: int | str | list[int] = Field(1, description="devices per node (Lightning)")
    num_nodes: int = Field(1, gt=0)
    precision: str | int = Field("32-true", description="Lightning precision, e.g. 32-true, bf16-mixed")
    accumulate_grad_batches: int = Field(1, gt=0)
    val_check_interval: int = Field(100, gt=0, description="validate every n training steps")
    limit_val_batches: int | float = Field(
        20,
        ge=0,
        description="validation batches (int) or fraction; 0 = no validation (also when data has none)",
    )
    log_every_n_steps: int = Field(10, gt=0)
    out_dir: str = Field(
        "runs/quickstart", description="checkpoints and logs go here (Lightning's default_root_dir)"
    )
    logger: Literal["auto", "csv", "tensorboard", "both", "none"] = Field(
        "auto",
        description="built-in loggers under out_dir (the default of --trainer.logger): auto = CSV, "
        "plus TensorBoard when the tensorboard package is installed",
    )
    progress_bar: bool = Field(True, description="rich progress bar (Lightning's enable_progress_bar)")
    checkpoint_every_n_steps: int = Field(100, gt=0, description="save a checkpoint every n steps")
    plots: bool = Field(
        True,
        description="at the end, draw loss, tokens/s, load balance and devices per token in out_dir/plots/",
    )
    compile: bool = False
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a non-finite loss or gradient norm: stop (exit 3), or skip that optimizer step"
    )
    max_nonfinite_skips: int = Field(3, gt=0, description="with on_nonfinite=skip: stop after n in a row")
    check_routing_values: bool = Field(
        True, description="check router outputs' values (id range, finite weights, duplicates) every step"
    )
    activation_checkpointing: Literal["none", "full", "moe", "attention"] = Field(
        "none",
        description="recompute in backward instead of keeping activations, per transformer block: "
        "full (the block), moe (norm + MoE FFN), attention (norm + attention)",
    )
    loss_chunk_tokens: int = Field(
        1024,
        ge=0,
        description="cross-entropy over chunks of this many tokens, so the full fp32 logits never "
        "exist; 0 = in one piece",
    )
    skip_memory_check: bool = Field(
        False, description="start even when the memory plan says the model or batch cannot fit (also --force)"
    )


class ParallelConfig(Section):
    expert_parallel: int = Field(
        1,
        gt=0,
        description="P: experts are split over P ranks; P > 1 makes the default strategy "
        "expert_parallel (same as --trainer.strategy.expert_parallel P)",
    )
    placement: str = Field("contiguous", description="'contiguous' or a placement file (.json/.npy)")
    fsdp: bool = Field(
        False,
        description="FSDP2: dense parameters sharded over all ranks, experts over the ranks holding "
        "the same experts, on one (edp, ep) mesh; false: dense parameters replicated (DDP)",
    )
    param_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="with fsdp: the dtype parameters are gathered in for compute (master weights, "
        "optimizer state and gradient reduction stay float32)",
    )
    cpu_offload: bool = Field(
        False, description="with fsdp: sharded parameters, gradients and optimizer state live in CPU memory"
    )
    collective_timeout_s: float = Field(
        300.0, gt=0, description="a rank waiting longer than this on the others stops the run"
    )

    @model_validator(mode="after")
    def _fsdp_only(self) -> ParallelConfig:
        if not self.fsdp and self.param_dtype != "float32":
            raise ValueError("param_dtype applies to FSDP only: set parallel.fsdp=true or leave it float32")
        if not self.fsdp and self.cpu_offload:
            raise ValueError("cpu_offload applies to FSDP only: set parallel.fsdp=true or leave it false")
        return self


class ProfileConfig(Section):
    path: str | None = Field(
        None,
        description="collaboration source: a `moelight profile` artifact, or a .npy/.json of "
        "collaborator lists or co-activation counts, shaped [layers, E, E] or [E, E]",
    )


def spelled_out(params: BaseModel) -> dict[str, Any]:
    """A plugin's parameters with every default that applies written out: the fields given, plus
    each default the plugin's own validation accepts as given (a plugin may refuse a parameter
    of another mode being set, e.g. balanced's `method: bias` parameters under `noisy_cv`)."""
    values = params.model_dump(mode="json")
    out = {k: values[k] for k in params.model_fields_set}
    for name in type(params).model_fields:
        if name in out:
            continue
        try:
            type(params).model_validate({**out, name: values[name]})
        except ValidationError:
            continue  # does not apply with these settings
        out[name] = values[name]
    return {name: out[name] for name in type(params).model_fields if name in out}


def _default_router() -> dict[str, Any]:
    return {"name": "topk"}


def _default_dispatcher() -> dict[str, Any]:
    return {"name": "sorted"}


class Recipe(Section):
    model: ModelConfig = ModelConfig()
    router: dict[str, Any] = Field(default_factory=_default_router)
    dispatcher: dict[str, Any] = Field(default_factory=_default_dispatcher)
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    parallel: ParallelConfig = ParallelConfig()
    profile: ProfileConfig = ProfileConfig()
    seed: int = 1337
    plugins: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        if self.model.num_experts % self.parallel.expert_parallel:
            raise ValueError(
                f"parallel.expert_parallel ({self.parallel.expert_parallel}) must divide "
                f"model.num_experts ({self.model.num_experts})"
            )
        return self

    def router_params(self):
        return routers.params(self.router, "router")[1]

    def dispatcher_params(self):
        return dispatchers.params(self.dispatcher, "dispatcher")[1]

    def full_dump(self) -> dict[str, Any]:
        """`model_dump(mode="json")` with the router's and dispatcher's parameters spelled out
        (the plugins' defaults included), so that a saved recipe reads back as the same run even
        when the file named only `name:`."""
        data = self.model_dump(mode="json")
        for section, params in (("router", self.router_params()), ("dispatcher", self.dispatcher_params())):
            data[section] = {"name": data[section]["name"], **spelled_out(params)}
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.full_dump(), sort_keys=False)


# ---- loading -------------------------------------------------------------------------

PLUGIN_SECTIONS = {"router": routers, "dispatcher": dispatchers}


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, list | dict):
                continue  # unhashable: SafeLoader's own error names it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (lines {seen[key]} and {line})",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message in one line: the problem and where it is."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem and "(lines" in problem:  # a duplicate key: it says both lines
        return problem
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MoelightError(f"recipe not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MoelightError(
            f"{path}: a recipe must be UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start} is not); "
            "is it a binary file?"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise MoelightError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise MoelightError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `over` into `base`. A plugin section that names another plugin replaces the base's."""
    out = dict(base)
    for key, value in over.items():
        replaces_plugin = (
            key in PLUGIN_SECTIONS
            and isinstance(value, dict)
            and isinstance(out.get(key), dict)
            and "name" in value
            and value["name"] != out[key].get("name")
        )
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not replaces_plugin:
            if key in PLUGIN_SECTIONS:  # a parameter's old name and its new one must land on one value
                registry, name = PLUGIN_SECTIONS[key], value.get("name", out[key].get("name"))
                out[key], value = (
                    registry.canonical_keys(name, out[key]),
                    registry.canonical_keys(name, value),
                )
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# Input files named in a recipe are found relative to the recipe file, so a recipe runs from
# any working directory; keywords (the value on the right) are left alone. Outputs
# (trainer.out_dir) stay relative to where the user runs.
INPUT_PATHS = {
    ("data", "source"): "embedded",
    ("data", "tokenizer"): "bytes",
    ("profile", "path"): None,
    ("parallel", "placement"): "contiguous",
    ("model", "init_from"): None,
    ("data", "val_source"): None,
}


def _resolve_inputs(data: dict[str, Any], base: Path) -> None:
    for (section, key), keyword in INPUT_PATHS.items():
        node = data.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str) and node[key] != keyword:
            candidate = base / node[key]
            if not Path(node[key]).is_absolute() and candidate.exists():
                node[key] = str(candidate)
    plugins = data.get("plugins")
    if isinstance(plugins, list):
        data["plugins"] = [
            str(base / p) if isinstance(p, str) and p.endswith(".py") and (base / p).exists() else p
            for p in plugins
        ]


def read_recipe_dict(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe file, resolving `extends:` and input paths relative to the file."""
    path = Path(path).resolve()
    if path in _seen:
        raise MoelightError(f"recipe extends itself: {' -> '.join(map(str, _seen + (path,)))}")
    data = _read_yaml(path)
    _resolve_inputs(data, path.parent)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise MoelightError(f"{path}: extends: must name one recipe file, got {parent!r}")
    return merge(read_recipe_dict(path.parent / parent, _seen + (path,)), data)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`a.b=value` and `--a.b value` (or `--a.b=value`); values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key = arg[2:]
            if "=" in key:
                key, raw = key.split("=", 1)
            else:
                if i + 1 >= len(args):
                    raise MoelightError(f"override {arg} needs a value")
                raw = args[i + 1]
                i += 1
        elif "=" in arg:
            key, raw = arg.split("=", 1)
        else:
            raise MoelightError(f"cannot read override {arg!r}: use key.path=value or --key.path value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MoelightError(f"override {key!r} conflicts with another override")
        node[parts[-1]] = value
        i += 1
    return out


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read, merge, override and validate a recipe; plugin sections are validated by their plugin."""
    data = read_recipe_dict(path) if path is not None else {}
    # Overrides like `router.jitter=0.1` refine the default plugin when the file names none.
    data.setdefault("router", _default_router())
    data.setdefault("dispatcher", _default_dispatcher())
    data = merge(data, parse_overrides(overrides or []))
    return validate_recipe(data)


def validate_recipe(data: dict[str, Any]) -> Recipe:
    plugins = data.get("plugins") or []
    if isinstance(plugins, list):
        load_plugin_modules([str(p) for p in plugins])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise ConfigError("", validation_message(err)) from None
    recipe.router_params()
    recipe.dispatcher_params()
    return recipe
