"""LLaMA-MoE v1 (pjlab-sys4nlp/llama-moe, `model_type: llama_moe`): a Llama decoder whose every FFN
is split into `num_experts` SwiGLU experts, routed by `TopKBalancedNoisyGate`.

On disk (per layer `model.layers.{i}.mlp`): the gate network `gate.gate_network.weight` (`linear`)
or `gate.gate_network.{0,2}.weight` (`mlp`: Linear -> Tanh -> Linear), the noise projection
`gate.weight_noise.weight` (when `gate_add_noise`), experts `calculator.experts.weight_{gate,up,down}.{j}`.
Routing: top-k on the (noisy, in training) logits, weights = softmax over the k chosen logits,
expert outputs multiplied by `score_scale_factor`, loss `gate_balance_loss_weight * (CV^2(importance)
+ CV^2(load))` per layer. In moelight that is the `balanced` router with `method: noisy_cv`,
`gate_network`, `route_scale` and `load_membership: noise` (LLaMA-MoE's smooth load compares the
noise term alone against the threshold).

The C2R paper's patch of it adds `top_t` and `collaborative_list` to config.json; such a checkpoint
imports as the `c2r` router with those lists written beside the weights (`profile.path`).
"""

from __future__ import annotations

from typing import Any

from moelight.errors import MoelightError
from moelight.hf.architecture import Architecture, Entry
from moelight.hf.config_fields import (
    blocker,
    common_hf_fields,
    every_layer_moe_fields,
    every_layer_moe_problems,
    head_dim_problem,
    plain_attention_problems,
    present,
    refuse_unexportable,
    require,
)
from moelight.recipe import ModelConfig
from moelight.registry import routers

SRC = "llama_moe config.json"
# Fields whose value moelight implements only as this one setting; anything else changes the model.
FIXED = {
    "gate_type": "TopKBalancedNoisyGate",
    "calculator_type": "UniversalCalculator",
    "multiply_gate_scores": True,
    "gate_use_softmax": True,
    "add_weight_norm": False,
    "attention_bias": False,
}
GATE_NETWORKS = ("linear", "mlp")
EXPORTABLE = ("balanced", "c2r")


def _one_value(value: Any, field: str, what: str) -> Any:
    """A per-layer list must hold one value for all layers (moelight's router is the same in every layer)."""
    if not isinstance(value, list):
        return value
    flat = [v for row in value for v in (row if isinstance(row, list) else [row])]
    if not flat or any(v != flat[0] for v in flat):
        raise MoelightError(
            f"{SRC}: {field} {value if len(str(value)) < 80 else str(value)[:80] + '...'} is not supported: "
            f"moelight needs one {what} for every layer and expert"
        )
    return flat[0]


def _expert_size(cfg: dict[str, Any], num_experts: int) -> int:
    sizes = cfg.get("size_experts")
    if sizes is not None:
        size = _one_value(sizes, "size_experts", "expert size (experts of different sizes)")
    else:
        total = require(cfg, "intermediate_size", SRC)
        if total % num_experts:
            raise MoelightError(
                f"{SRC}: intermediate_size {total} is not divisible by num_experts {num_experts} "
                "and size_experts is not given"
            )
        size = total // num_experts
    return int(size)


class LlamaMoe(Architecture):
    name = "llama_moe"
    hf_class = "LlamaMoEForCausalLM"
    expert_names = ("weight_gate", "weight_up", "weight_down")
    fused_experts = False

    def expert_key(self, mlp: str, hf_name: str, expert: int) -> str:
        return f"{mlp}.calculator.experts.{hf_name}.{expert}"

    def router_entries(self, mlp: str, ours: str, router: dict[str, Any] | None) -> list[Entry]:
        params = _router_params(router)
        gate = f"{mlp}.gate.gate_network"
        if params["gate_network"] == "linear":
            entries = [Entry(f"{ours}.router.gate.weight", (f"{gate}.weight",))]
        else:
            entries = [Entry(f"{ours}.router.gate.{i}.weight", (f"{gate}.{i}.weight",)) for i in (0, 2)]
        if params["noise"]:
            entries.append(Entry(f"{ours}.router.noise.weight", (f"{mlp}.gate.weight_noise.weight",)))
        return entries

    def collaborator_lists(self, cfg: dict[str, Any]) -> list | None:
        if cfg.get("top_t") is None:
            return None
        lists = cfg.get("collaborative_list")
        if not isinstance(lists, list):
            raise MoelightError(
                f"{SRC}: top_t is set but collaborative_list is missing (the C2R paper's patch has both)"
            )
        return lists

    def shape_router(self, router: dict[str, Any] | None) -> dict[str, Any]:
        params = _router_params(router)
        return {"name": "balanced", "gate_network": params["gate_network"], "noise": params["noise"]}

    def to_moelight(self, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        for field, value in FIXED.items():
            if field in cfg and cfg[field] != value:
                raise MoelightError(
                    f"{SRC}: {field} {cfg[field]!r} is not supported (moelight implements {field}: {value!r})"
                )
        if cfg.get("rope_scaling"):
            raise MoelightError(
                f"{SRC}: rope_scaling {cfg['rope_scaling']!r} is not supported (plain RoPE only)"
            )
        gate_network = cfg.get("gate_network", "mlp")
        if gate_network not in GATE_NETWORKS:
            raise MoelightError(
                f"{SRC}: gate_network {gate_network!r} is not supported (allowed: {', '.join(GATE_NETWORKS)})"
            )
        num_experts = int(require(cfg, "num_experts", SRC))
        fields = every_layer_moe_fields(
            cfg,
            SRC,
            rope_default=10000.0,
            experts_key="num_experts",
            top_k_key="num_selects",
            qk_norm=False,
            expert_size=_expert_size(cfg, num_experts),
        )
        scale = float(_one_value(cfg.get("score_scale_factor", 1.0), "score_scale_factor", "score scale"))
        use_balance = cfg.get("gate_use_balance", True)
        router: dict[str, Any] = {
            "name": "balanced",
            "method": "noisy_cv",
            "gate_network": gate_network,
            "route_scale": scale,
            "noise": bool(cfg.get("gate_add_noise", True)),
            "noise_epsilon": float(cfg.get("gate_noise_epsilon", 1e-2)),
            "balance_loss_coef": float(cfg.get("gate_balance_loss_weight", 1e-2)) if use_balance else 0.0,
            "load_membership": "noise",
            "z_loss_coef": 0.0,
        }
        notes: list[str] = []
        if cfg.get("top_t") is not None:
            router = c2r_router(router, int(cfg["top_t"]))
            notes.append(
                f"config.json carries the C2R paper's top_t ({cfg['top_t']}) and collaborative_list: imported "
                "as the c2r router with those lists (profile.path)"
            )
        return fields, router, notes

    def blockers(self, model: ModelConfig, router: dict[str, Any]) -> list[str]:
        problems = plain_attention_problems(model, "LLaMA-MoE") | every_layer_moe_problems(model, "LLaMA-MoE")
        problems |= head_dim_problem(model)
        problems[
            blocker("tied embeddings", "LLaMA-MoE has its own lm_head", "model.tie_embeddings=false")
        ] = model.tie_embeddings
        found = present(problems)
        if router.get("name") not in EXPORTABLE:
            return found + [
                blocker(
                    f"the {router.get('name')!r} router",
                    "LLaMA-MoE routes with its noisy top-k gate; exportable: balanced (method: noisy_cv, exact), "
                    "c2r (exact with the C2R paper's modeling file, which reads top_t and collaborative_list)",
                    "router.name=balanced router.method=noisy_cv",
                )
            ]
        params = _router_params(router)
        name = router["name"]
        problems = {
            blocker(
                f"router.method: {params.get('method')}",
                "LLaMA-MoE's gate is noisy_cv",
                "router.method=noisy_cv",
            ): name == "balanced" and params.get("method", "noisy_cv") != "noisy_cv",
            blocker(
                f"router.score: {params.get('score')}",
                "LLaMA-MoE weights the k chosen experts by a softmax over their logits",
                "router.score=softmax",
            ): name == "c2r" and params.get("score") != "softmax",
            blocker(
                "router.renormalize: false",
                "LLaMA-MoE weights the k chosen experts by a softmax over their logits",
                "router.renormalize=true",
            ): name == "c2r" and not params.get("renormalize"),
            blocker(
                f"router.bias_update_rate: {params.get('bias_update_rate')}",
                "load-aware C2R's selection bias is not part of LLaMA-MoE's gate: the export would route differently",
                "router.bias_update_rate=0",
            ): name == "c2r" and bool(params.get("bias_update_rate")),
            # soft, online and per-layer C2R are not the paper's rule (one top_t, fixed lists, hard mask)
            blocker(
                f"router.penalty: {params.get('penalty')}",
                "soft C2R is not the C2R paper's hard mask: the export would route differently",
                "router.penalty=null",
            ): name == "c2r" and params.get("penalty") is not None,
            blocker(
                "router.collaborators: online",
                "online C2R's lists change while training: the export would route differently",
                "router.collaborators=profile",
            ): name == "c2r" and params.get("collaborators") == "online",
            blocker(
                f"router.layer_top_t: {params.get('layer_top_t')}",
                "LLaMA-MoE's C2R patch has one top_t: the export would route differently",
                "router.layer_top_t=null",
            ): name == "c2r" and params.get("layer_top_t") is not None,
        }
        return found + present(problems)

    def to_hf(self, model: ModelConfig, router: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        arch = self.name
        refuse_unexportable(arch, self.blockers(model, router))
        params = _router_params(router)
        warnings: list[str] = []
        if params.get("z_loss_coef") or params.get("aux_loss_coef"):
            warnings.append(
                "LLaMA-MoE has no z-loss or Switch load-balancing loss: those coefficients are dropped"
            )
        if params["load_membership"] != "noise":
            warnings.append(
                "LLaMA-MoE's smooth load decides membership on the noise term alone (load_membership: noise); "
                "the exported model's balance loss differs in training"
            )
        n = model.num_experts
        config = common_hf_fields(model) | {
            "auto_map": {
                "AutoConfig": "configuration_llama_moe.LlamaMoEConfig",
                "AutoModel": "modeling_llama_moe_hf.LlamaMoEModel",
                "AutoModelForCausalLM": "modeling_llama_moe_hf.LlamaMoEForCausalLM",
            },
            "intermediate_size": model.expert_ffn_hidden_size * n,
            "num_experts": n,
            "num_selects": model.top_k,
            "size_experts": [[model.expert_ffn_hidden_size] * n for _ in range(model.n_layers)],
            "gate_type": "TopKBalancedNoisyGate",
            "gate_network": params["gate_network"],
            "gate_use_softmax": True,
            "gate_use_balance": bool(params["balance_loss_coef"]),
            "gate_balance_loss_weight": float(params["balance_loss_coef"]),
            "gate_add_noise": bool(params["noise"]),
            "gate_noise_epsilon": float(params["noise_epsilon"]),
            "calculator_type": "UniversalCalculator",
            "multiply_gate_scores": True,
            "score_scale_factor": float(params["route_scale"]),
            "add_weight_norm": False,
            "drop_tokens": True,
            "dropped_padding": "zero",
            "capacity_factor": 1.25,
            "pretraining_tp": 1,
            "rope_scaling": None,
        }
        if router["name"] == "c2r":
            config["top_t"] = int(params["top_t"])
            warnings.append(
                "c2r: config.json gets top_t; add collaborative_list (the recipe's profile.path lists) and the "
                "C2R paper's modeling_llama_moe_hf.py to route as the paper does"
            )
        warnings.append(
            "copy configuration_llama_moe.py and modeling_llama_moe_hf.py from the original LLaMA-MoE download "
            "into the exported directory (config.json's auto_map names them)"
        )
        return config, warnings


def _router_params(router: dict[str, Any] | None) -> dict[str, Any]:
    """The router section with its plugin's defaults filled in (gate_network, noise, ...)."""
    if router is None:
        router = {"name": "balanced"}
    name = router.get("name")
    if name not in EXPORTABLE:
        return {"gate_network": "linear", "noise": False, **router}
    values = routers.params(router, "router")[1].model_dump()
    values.setdefault("noise", False)
    return values


def c2r_router(balanced: dict[str, Any], top_t: int) -> dict[str, Any]:
    """The c2r router section that routes as the C2R paper's patched LLaMA-MoE gate."""
    keep = ("gate_network", "route_scale", "noise", "noise_epsilon", "balance_loss_coef", "load_membership")
    return {
        "name": "c2r",
        "top_t": top_t,
        "collaborators": "profile",
        "score": "softmax",
        "renormalize": True,
        "aux_loss_coef": 0.0,
        "z_loss_coef": 0.0,
    } | {k: balanced[k] for k in keep}
