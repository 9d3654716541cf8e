"""`moelight bench`: layer/step benchmarks run and report, hf-loop is a correct MoE, the all2all model is right.

Timing numbers themselves are not tested (they belong in the benchmark output); what is tested
is that the benchmarks run, write the documented JSON, and that the maths behind them is exact.
"""

import itertools
import json
import math

import pytest
import torch

from moelight.api import ExpertWeights, LayerContext, Routing, dispatchers
from moelight.bench import comm
from moelight.bench.presets import PRESETS
from moelight.bench.reference import HFLoopDispatcher
from moelight.bench.timing import quantile, summarize
from moelight.c2r.collaboration import coactivation_counts
from moelight.cli.main import main

TIMING_FIELDS = {"name", "n", "median_ms", "q1_ms", "q3_ms", "iqr_ms", "min_ms", "max_ms", "mean_ms"}
RESULT_FIELDS = TIMING_FIELDS | {"speedup", "speedup_q1", "speedup_q3", "tokens_per_s", "times_ms"}


def run_json(tmp_path, capsys, *argv: str) -> dict:
    out = tmp_path / "out.json"
    assert main([*argv, "--json", str(out)]) == 0, capsys.readouterr().err
    return json.loads(out.read_text())


# ---- bench layer ------------------------------------------------------------------------


def test_bench_layer_writes_documented_json(tmp_path, capsys):
    data = run_json(
        tmp_path,
        capsys,
        *("bench", "layer", "--preset", "cpu-tiny", "--tokens", "64", "--device", "cpu"),
        *("--dispatchers", "sorted,hf-loop,gemm-only", "--baseline", "hf-loop"),
        *("--repeats", "3", "--warmup", "1"),
    )
    printed = capsys.readouterr().out
    assert "speedup vs hf-loop" in printed and "gemm-only" in printed
    assert data["kind"] == "layer" and data["baseline"] == "hf-loop" and data["reference"] == "sorted"
    assert data["shape"] == {**PRESETS["cpu-tiny"].as_dict(), "tokens": 64}
    assert {"date", "cpu", "torch", "torch_threads", "gpu"} <= set(data["env"])
    assert data["command"].startswith("moelight bench layer --preset cpu-tiny")
    assert [r["name"] for r in data["results"]] == ["sorted", "hf-loop", "gemm-only"]
    for r in data["results"]:
        assert RESULT_FIELDS | {"max_rel_err"} <= set(r)
        assert len(r["times_ms"]) == r["n"] == 3
        assert r["min_ms"] <= r["q1_ms"] <= r["median_ms"] <= r["q3_ms"] <= r["max_ms"]
    by_name = {r["name"]: r for r in data["results"]}
    base = by_name["hf-loop"]
    # The baseline's paired ratios are t/t, so exactly 1.
    assert base["speedup"] == base["speedup_q1"] == base["speedup_q3"] == 1.0
    assert by_name["hf-loop"]["max_rel_err"] < 1e-5 and by_name["sorted"]["max_rel_err"] == 0.0
    assert by_name["gemm-only"]["max_rel_err"] is None  # not a full layer: nothing to compare


def test_bench_layer_default_candidates_include_every_available_dispatcher(tmp_path, capsys):
    data = run_json(
        tmp_path,
        capsys,
        *("bench", "layer", "--preset", "cpu-tiny", "--tokens", "32", "--device", "cpu"),
        *("--repeats", "1", "--warmup", "0", "--no-check"),
    )
    names = [r["name"] for r in data["results"]]
    assert names[-1] == "hf-loop" and data["baseline"] == "hf-loop"
    assert "sorted" in names
    if not torch.cuda.is_available():
        assert "megablocks" not in names  # unavailable plugins are left out of the default set


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dispatchers", "sorted,nope"], "unknown dispatcher 'nope'; allowed: "),
        (["--preset", "huge"], "--preset: invalid value 'huge' (allowed: cpu-tiny, cpu-small"),
        (["--baseline", "grouplocal", "--dispatchers", "sorted"], "--baseline 'grouplocal' must be one of"),
        (["--dtype", "fp8"], "--dtype: invalid value 'fp8' (allowed: fp32"),
        (["--top-k", "9", "--experts", "4"], "--top-k (9) must be <= --experts (4)"),
        (["--router", "nope"], "unknown router 'nope'"),
        (["--dispatchers", "sorted:bogus=1"], "bogus"),
    ],
)
def test_bench_layer_user_errors_exit_2(capsys, argv, message):
    assert main(["bench", "layer", "--preset", "cpu-tiny", *argv]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err
    if "unknown dispatcher" in message:
        assert "sorted" in err and "hf-loop" in err and "gemm-only" in err


def test_unknown_bench_subcommand(capsys):
    assert main(["bench", "nope"]) == 2
    assert "allowed: layer, step, comm" in capsys.readouterr().err


# ---- hf-loop is a correct MoE -------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hf_loop_equals_sorted_forward_and_backward(k):
    gen = torch.Generator().manual_seed(k)
    t, d, f, e = 53, 16, 24, 6
    ctx = LayerContext(hidden_size=d, num_experts=e, top_k=k, layer_index=0, expert_hidden_size=f)
    experts = ExpertWeights(list(range(e)), d, f, init_std=0.3)
    scores = torch.rand(t, e, generator=gen)
    scores[:, 4] = -1  # expert 4 gets no tokens
    routing = Routing(scores.topk(k, dim=1).indices, torch.rand(t, k, generator=gen), torch.zeros(t, e))
    x = torch.randn(t, d, generator=gen)
    grad_out = torch.randn(t, d, generator=gen)
    params = [experts.w1, experts.v1, experts.w2]

    outs, grads = [], []
    for disp in (dispatchers.build({"name": "sorted"}, ctx, experts), HFLoopDispatcher(ctx, experts)):
        xi = x.clone().requires_grad_()
        wi = routing.weights.clone().requires_grad_()
        y = disp(xi, Routing(routing.experts, wi, routing.logits))
        outs.append(y)
        grads.append(torch.autograd.grad(y, [xi, wi, *params], grad_out))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---- timing statistics ------------------------------------------------------------------


def test_summary_statistics():
    s = summarize([4.0, 1.0, 3.0, 2.0, 100.0])
    assert (s.median_ms, s.min_ms, s.max_ms, s.n) == (3.0, 1.0, 100.0, 5)
    assert (s.q1_ms, s.q3_ms, s.iqr_ms) == (2.0, 4.0, 2.0)  # robust to the outlier
    assert quantile([1.0, 2.0], 0.5) == 1.5


# ---- bench step -------------------------------------------------------------------------


def test_bench_step_runs_a_small_model(tmp_path, capsys):
    data = run_json(
        tmp_path,
        capsys,
        *("bench", "step", "--dispatchers", "sorted,hf-loop", "--device", "cpu"),
        *("--repeats", "2", "--warmup", "1"),
        *("model.n_layers=1", "model.hidden_size=32", "model.n_heads=2", "model.expert_ffn_hidden_size=32"),
        *("data.batch_size=2", "data.seq_len=16"),
    )
    assert data["kind"] == "step" and data["baseline"] == "sorted"
    assert data["batch_size"] == 2 and data["seq_len"] == 16 and data["precision"] == "32-true"
    for r in data["results"]:
        assert RESULT_FIELDS <= set(r) and len(r["times_ms"]) == 2
    assert data["results"][0]["speedup"] == 1.0


def test_bench_step_rejects_gemm_only(capsys):
    assert main(["bench", "step", "--dispatchers", "gemm-only"]) == 2
    assert "'gemm-only' times expert GEMMs alone" in capsys.readouterr().err


# ---- expected distinct devices: formulas vs brute force -------------------------------------


def brute_force_uniform(num_experts: int, device_of: torch.Tensor, k: int) -> float:
    """Mean distinct devices over every k-subset of experts (uniform-random routing)."""
    subsets = list(itertools.combinations(range(num_experts), k))
    return sum(len({int(device_of[e]) for e in s}) for s in subsets) / len(subsets)


@pytest.mark.parametrize(
    "e, p, k", [(8, 2, 2), (8, 4, 2), (8, 4, 3), (6, 3, 4), (9, 3, 3), (7, 3, 2), (10, 4, 3)]
)
def test_hypergeometric_formula_equals_brute_force(e, p, k):
    dev = comm.contiguous_devices(e, p)
    assert sorted(comm.group_sizes(dev)) == sorted(len(g) for g in torch.arange(e).tensor_split(p))
    formula = comm.expected_devices_random_placement(e, comm.group_sizes(dev), k)
    assert formula == pytest.approx(brute_force_uniform(e, dev, k), abs=1e-12)


def test_random_placement_formula_equals_averaging_over_placements():
    """Any fixed routing, averaged over every balanced placement: the same closed form."""
    e, p, k = 6, 3, 2
    routing = torch.tensor([[0, 1], [0, 1], [2, 5], [3, 4]])  # deliberately skewed
    values = []
    for perm in itertools.permutations(range(e)):
        dev = torch.empty(e, dtype=torch.long)
        dev[list(perm)] = comm.contiguous_devices(e, p)
        values.append(comm.expected_devices_routing(routing, dev))
    assert sum(values) / len(values) == pytest.approx(comm.expected_devices_random_placement(e, [2, 2, 2], k))


def test_large_e_limit_approaches_the_exact_formula():
    for p, k in [(4, 2), (8, 4), (16, 4)]:
        exact = comm.expected_devices_random_placement(p * 64, [64] * p, k)
        assert exact == pytest.approx(comm.expected_devices_large_e(p, k), rel=2e-2)
        # k distinct experts share a device less often than k independent uniform draws would.
        assert exact > comm.expected_devices_large_e(p, k)


def test_monte_carlo_matches_exact_formulas():
    e, p, k = 12, 4, 3
    dev = comm.contiguous_devices(e, p)
    mc = comm.monte_carlo_devices(comm.uniform_model(e, k), dev, 100_000, seed=1)
    assert mc == pytest.approx(comm.expected_devices_random_placement(e, comm.group_sizes(dev), k), abs=0.01)


def test_pair_counts_formula_equals_counting_routings():
    gen = torch.Generator().manual_seed(0)
    e, t = 8, 5000
    # A skewed top-2 routing: pairs drawn from a few favourite combinations.
    logits = torch.randn(t, e, generator=gen) + torch.tensor([3.0, 2.5, 0, 0, 1.0, 0, 0, 2.0])
    experts = logits.topk(2, dim=1).indices
    counts = coactivation_counts(experts, e)
    for p in (2, 4, 8):
        dev = comm.contiguous_devices(e, p)
        exact = comm.expected_devices_routing(experts, dev)
        assert comm.expected_devices_pairs(counts, dev) == pytest.approx(exact, abs=1e-12)
        mc = comm.monte_carlo_devices(comm.pairwise_model(counts, 2), dev, 50_000, seed=2)
        assert mc == pytest.approx(exact, abs=0.015)  # the pairwise model is exact in law for k = 2


def test_c2r_profile_model_picks_from_the_first_t_collaborators():
    lists = torch.stack([torch.roll(torch.arange(8), -i) for i in range(8)]).flip(1)  # i last in row i
    sample = comm.c2r_profile_model(lists, 3, 2)(2000, torch.Generator().manual_seed(0))
    for row in sample.tolist():
        first, others = row[0], row[1:]
        allowed = [c for c in lists[first].tolist() if c != first][:2]
        assert sorted(others) == sorted(allowed)


# ---- the projection and the performance goal ------------------------------------------------


def llama_like(k: int = 2, latency: bool = True, meta: int = 8):
    source = comm.RoutingSource("synthetic", None, 8, k, 4)
    setup = comm.Setup(
        tokens_per_device=4096,
        hidden=1024,
        dtype_bytes=2,
        layers=4,
        top_k=k,
        meta_bytes_per_expert=meta,
        meta_grad_bytes_per_expert=meta // 2,  # the weights' half of the metadata comes back
    )
    ic = comm.INTERCONNECTS["infiniband"]
    if not latency:
        ic = comm.Interconnect("ideal", ic.bandwidth_gbs, 0.0, "no latency")
    return source, setup, ic


@pytest.mark.parametrize("k", [2, 4])
def test_c2r_placement_sends_one_row_and_per_expert_k(k):
    source, setup, ic = llama_like(k)
    result = comm.project(source, setup, [2, 4, 8, 16], [ic], samples=2000)
    rows = {s["key"]: s["rows"] for s in result["scenarios"]}
    for p in (2, 4) if k == 2 else (2,):  # C2R placement needs k experts on a device
        assert rows[comm.C2R_PLACEMENT][p] == 1.0  # measured through the c2r router
        assert rows[comm.PER_EXPERT][p] == k
    assert rows[comm.C2R_PLACEMENT][8] is None and 8 in result["skipped"]  # E/P = 1 < k
    assert 16 in result["skipped"] and 16 not in rows[comm.PER_EXPERT]  # P > E
    goal = result["goal"]
    assert goal["rows_goal_met"] and goal["payload_goal_met"]
    assert all(v == pytest.approx((k - 1) / k) for v in goal["row_bytes_reduction"].values())


def test_projected_time_falls_by_at_least_k_minus_1_over_k_on_bandwidth():
    k = 2
    source, setup, ic = llama_like(k, latency=False, meta=0)
    result = comm.project(source, setup, [2, 4], [ic], samples=2000)
    goal = result["goal"]
    assert goal["time_goal_met"] and goal["min_time_reduction"] >= (k - 1) / k - 1e-12
    # The latency of each call and grouplocal's routing metadata do not shrink with fewer rows,
    # which the default model says plainly: a little short of (k-1)/k.
    source, setup, ic = llama_like(k)
    goal = comm.project(source, setup, [2, 4], [ic], samples=2000)["goal"]
    assert 0 < goal["min_time_reduction"] < (k - 1) / k


def test_time_model_by_hand():
    setup = comm.Setup(tokens_per_device=1000, hidden=100, dtype_bytes=2, layers=3, top_k=2)
    ic = comm.Interconnect("x", 1.0, 5.0, "")  # 1 GB/s, 5 us
    # per-expert, P = 4: 2 rows x 3/4 remote x 1000 tokens x 200 B x 4 transfers = 1.2 MB per layer
    assert setup.time_ms(2.0, 4, ic, grouplocal=False) == pytest.approx(3 * (5 * 5e-3 + 1.2e6 / 1e9 * 1e3))
    meta = 0.75 * 1000 * 2 * (8 + 4)  # remote rows x k x (8 B forward + 4 B weight gradient)
    want = 3 * (5 * 5e-3 + (0.6e6 + meta) / 1e9 * 1e3)  # 5 calls: metadata rides with the rows
    assert setup.time_ms(1.0, 4, ic, grouplocal=True) == pytest.approx(want)


def test_bench_comm_cli_on_the_papers_llama_counts(c2r_data, tmp_path, capsys):
    data = run_json(
        tmp_path,
        capsys,
        *("bench", "comm", "--preset", "llama-moe-3.5b"),
        *("--profile", str(c2r_data / "llama_moe_base_collaboration.npy")),
        *("--devices", "2,4,8,16", "--samples", "2000"),
    )
    printed = " ".join(capsys.readouterr().out.split())
    assert (
        "assumptions" in printed and "(P-1)/P" in printed and "nvlink" in printed and "infiniband" in printed
    )
    assert data["source"]["kind"] == "counts" and data["setup"]["layers"] == 32
    rows = {s["key"]: s for s in data["scenarios"]}
    contiguous = rows["grouplocal top-k contiguous"]
    assert "exact from pairwise" in contiguous["method"]
    assert 1 < contiguous["rows"]["2"] < 2  # json keys are strings
    assert data["goal"]["rows_goal_met"] and data["goal"]["c2r_rows_per_token"] == {"2": 1.0, "4": 1.0}


def test_bench_comm_cli_on_the_papers_qwen_lists(c2r_data, tmp_path, capsys):
    data = run_json(
        tmp_path,
        capsys,
        *("bench", "comm", "--preset", "qwen1.5-moe-a2.7b", "--interconnect", "nvlink"),
        *("--profile", str(c2r_data / "qwen1.5_moe_a2.7b_collaborative_list.npy"), "--top-t", "30"),
        *("--devices", "2,4", "--samples", "2000"),
    )
    rows = {s["key"]: s for s in data["scenarios"]}
    assert "uniform-random routing" in rows["grouplocal top-k contiguous"]["method"]
    e, k = 60, 4
    assert rows["grouplocal top-k contiguous"]["rows"]["4"] == pytest.approx(
        4 * (1 - math.comb(e - 15, k) / math.comb(e, k))
    )
    assert "grouplocal c2r-profile contiguous" in rows
    assert data["goal"]["c2r_rows_per_token"] == {"2": 1.0, "4": 1.0}


def test_bench_comm_counts_recorded_routings(tmp_path, capsys):
    import numpy as np

    path = tmp_path / "routing.npy"
    np.save(path, np.array([[0, 1], [0, 7], [2, 3], [4, 6]]))
    data = run_json(
        tmp_path, capsys, "bench", "comm", "--routing", str(path), "--devices", "2,4", "--samples", "100"
    )
    contiguous = next(s for s in data["scenarios"] if s["key"] == "grouplocal top-k contiguous")
    assert contiguous["rows"] == {"2": 1.25, "4": 1.5}  # counted: P=2 -> 1,2,1,1; P=4 -> 1,2,1,2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--profile", "/nonexistent.npy"], "file not found"),
        (
            ["--interconnect", "pigeon"],
            "--interconnect: invalid value 'pigeon' (allowed: nvlink, infiniband)",
        ),
        (["--devices", "2,x"], "--devices: invalid value '2,x' (expected comma-separated integers"),
        (["--preset", "nope"], "--preset: invalid value 'nope' (allowed: cpu-tiny"),
    ],
)
def test_bench_comm_user_errors_exit_2(capsys, argv, message):
    assert main(["bench", "comm", *argv]) == 2
    assert message in " ".join(capsys.readouterr().err.split())  # rich wraps long lines


def test_collaborative_placement_groups_co_activated_experts():
    counts = torch.zeros(8, 8)
    for group in ([0, 5], [1, 6], [2, 7], [3, 4]):  # tokens only ever pair within these groups
        counts[group[0], group[1]] = counts[group[1], group[0]] = 10 + group[0]
    dev = comm.collaborative_devices(counts, 4)
    assert comm.group_sizes(dev) == [2, 2, 2, 2]
    assert comm.expected_devices_pairs(counts, dev) == 1.0
    assert comm.expected_devices_pairs(counts, comm.contiguous_devices(8, 4)) == 2.0
