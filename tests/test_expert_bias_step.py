"""The aux-loss-free expert bias moves once per optimizer step, from that step's whole load.

Every router that balances with the bias (`balanced` method bias, `c2r` and `device_limited`
with `bias_update_rate`) is checked against a plain-torch reference of DeepSeek-V3's rule:
bias += rate * sign(mean(load) - load), load = the expert counts of all micro-batches of the
step on all ranks.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from probe_plugin import probe_module, write_probe

from moelight.api import LayerContext, routers
from moelight.cli.main import main
from moelight.training.router_hooks import discard_router_step

D, E, K, T = 16, 8, 2, 64
RATE = 0.01

ROUTERS = {
    "balanced": {"name": "balanced", "method": "bias", "bias_update_rate": RATE},
    "c2r": {"name": "c2r", "top_t": 3, "collaborators": "placement", "bias_update_rate": RATE},
    "device_limited": {
        "name": "device_limited",
        "groups": "blocks",
        "num_groups": 4,
        "max_groups": 2,
        "bias_update_rate": RATE,
    },
}


def build(kind: str):
    torch.manual_seed(0)
    ctx = LayerContext(
        hidden_size=D, num_experts=E, top_k=K, layer_index=0, placement=torch.arange(E) // (E // 2)
    )
    router = routers.build(ROUTERS[kind], ctx)
    with torch.no_grad():
        router.gate.weight.normal_(0, 0.5)  # a skewed gate: the load is far from uniform
    return router


def reference_update(bias: torch.Tensor, micro_batch_experts: list[torch.Tensor]) -> torch.Tensor:
    """DeepSeek-V3's update from the summed load of a step's micro-batches, written out here."""
    load = torch.zeros(E)
    for experts in micro_batch_experts:
        for e in experts.flatten().tolist():
            load[e] += 1
    return bias + RATE * torch.sign(load.mean() - load)


@pytest.mark.parametrize("kind", sorted(ROUTERS))
def test_bias_moves_once_per_step_from_all_micro_batches(kind):
    router = build(kind).train()
    for step in range(3):
        router.begin_step(step)
        start = router.expert_bias.clone()
        chosen = []
        for _ in range(2):  # two micro-batches: the bias must not move between them
            chosen.append(router(torch.randn(T, D)).experts)
            assert torch.equal(router.expert_bias, start)
        router.after_optimizer_step()
        expected = reference_update(start, chosen)
        assert not torch.equal(expected, start)
        torch.testing.assert_close(router.expert_bias, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind", sorted(ROUTERS))
def test_forwards_without_an_optimizer_step_leave_the_bias_alone(kind):
    router = build(kind)
    router.expert_bias.copy_(torch.linspace(-0.1, 0.1, E))
    frozen = router.expert_bias.clone()
    x = torch.randn(T, D)
    router.eval()(x)
    router.after_optimizer_step()  # an optimizer step whose step ran no training forward
    assert torch.equal(router.expert_bias, frozen)
    router.train()
    for _ in range(3):
        router(x)
    assert torch.equal(router.expert_bias, frozen)


def test_a_step_without_optimizer_step_leaves_no_load_behind():
    """Load recorded under one step number that never reached `after_optimizer_step` does not
    count in the update of a step with another number."""
    router = build("balanced").train()
    router.begin_step(3)
    router(torch.randn(T, D) + 3.0)  # this step is skipped
    router.begin_step(4)
    start = router.expert_bias.clone()
    chosen = [router(torch.randn(T, D)).experts]
    router.after_optimizer_step()
    torch.testing.assert_close(router.expert_bias, reference_update(start, chosen), rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind", sorted(ROUTERS))
def test_a_dropped_step_leaves_no_load_behind(kind):
    """A step dropped by `on_nonfinite: skip` keeps the step number (no update was taken): the
    trainer discards the routers' step, and the next update counts only the next step's forwards."""
    router = build(kind).train()
    router.begin_step(3)
    router(torch.randn(T, D) + 3.0)  # this step goes non-finite and is dropped
    discard_router_step([SimpleNamespace(router=router)])  # what the trainer calls on a dropped step
    router.begin_step(3)  # the same number: updates taken did not advance
    start = router.expert_bias.clone()
    chosen = [router(torch.randn(T, D)).experts]
    router.after_optimizer_step()
    torch.testing.assert_close(router.expert_bias, reference_update(start, chosen), rtol=0, atol=1e-7)


def _rank_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        router = build("c2r").train()
        router.begin_step(0)
        torch.manual_seed(100 + rank)  # each rank routes its own tokens
        chosen = [router(torch.randn(T, D) + rank).experts for _ in range(2)]
        router.after_optimizer_step()
        torch.save({"experts": chosen, "bias": router.expert_bias}, f"{out}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_load_is_summed_over_ranks(tmp_path):
    """Two gloo ranks, two micro-batches each: both apply the update of all four micro-batches."""
    out = str(tmp_path / "bias")
    mp.spawn(_rank_worker, args=(_free_port(), out), nprocs=2)
    results = [torch.load(f"{out}.rank{r}.pt") for r in range(2)]
    expected = reference_update(torch.zeros(E), results[0]["experts"] + results[1]["experts"])
    local = reference_update(torch.zeros(E), results[0]["experts"])
    assert not torch.equal(expected, local)  # the ranks' loads differ: the sum matters
    for r in results:
        torch.testing.assert_close(r["bias"], expected, rtol=0, atol=1e-7)


PROBE = """
from moelight_plugins.routers.balanced import BalancedRouter

from moelight.api import routers

EVENTS = []  # in order: ("forward", training, experts, bias seen) and ("step", bias after)


@routers.register("bias_probe")
class BiasProbe(BalancedRouter):
    def forward(self, x):
        routing = super().forward(x)
        EVENTS.append(("forward", self.training, routing.experts.detach().clone(), self.expert_bias.clone()))
        return routing

    def after_optimizer_step(self):
        super().after_optimizer_step()
        EVENTS.append(("step", self.expert_bias.clone()))
"""


@pytest.mark.slow
def test_training_with_gradient_accumulation_updates_once_per_optimizer_step(tiny, tmp_path, monkeypatch):
    probe = write_probe(PROBE, tmp_path, monkeypatch)
    args = [
        *tiny,
        "model.n_layers=1",
        f"model.num_experts={E}",
        f"model.top_k={K}",
        f"plugins=[{probe}]",
        "router.name=bias_probe",
        "router.method=bias",
        f"router.bias_update_rate={RATE}",
        "trainer.accumulate_grad_batches=2",
        "trainer.max_steps=3",
    ]
    assert main(["fit", *args]) == 0
    events = probe_module(probe).EVENTS
    # Replay the run with the reference rule: every forward (training or validation) must see the
    # bias of the last optimizer step, and each step must apply its two micro-batches' load.
    bias, micro, steps, evals = torch.zeros(E), [], 0, 0
    for event in events:
        if event[0] == "forward":
            _, training, experts, seen = event
            torch.testing.assert_close(seen, bias, rtol=0, atol=1e-7)
            if training:
                micro.append(experts)
            else:
                evals += 1
        else:
            assert len(micro) == 2  # accumulate_grad_batches=2
            bias = reference_update(bias, micro)
            torch.testing.assert_close(event[1], bias, rtol=0, atol=1e-7)
            micro, steps = [], steps + 1
    assert steps == 3 and not micro and evals > 0
    assert bias.abs().sum() > 0
