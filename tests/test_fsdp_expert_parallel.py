"""The `fsdp_expert_parallel` strategy (parallel.fsdp=true) on CPU: FSDP2 x expert parallelism, gloo.

- 20 steps at N=2 (P=2), N=4 (P=2: experts sharded over 2 replicas), N=2 (P=1: plain FSDP2,
  `sorted`) and N=4 (P=4, C2R) give the losses and the pre-clipping gradient norms of one process
  holding the whole batch (fp32 tolerance): FSDP's gradient reduction and the global-norm
  clipping over both meshes equal single-process training;
- parallel.param_dtype=bfloat16 with cpu_offload computes in bf16 and keeps fp32 master weights;
- the N=2 checkpoint consolidates to the single process's final state, and resumes with exactly
  the saved weights and optimizer state at N=4, and on the DDP path, whose checkpoint resumes
  exactly under FSDP at P=1;
- bad FSDP settings exit 2 with one message.
Run helper: tests/ep_train_worker.py (Lightning launches the other ranks).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_expert_parallel import RECIPE, assert_restores_exactly, assert_same_state, losses, moelight, train

from moelight.parallel.checkpoint import MARKER_FILE, read_tensors, write_consolidated
from moelight.parallel.fsdp_checkpoint import shard_rows

STEPS, BATCH = 20, 8  # BATCH: the global batch (per rank: BATCH / N)
TOL = 1e-4  # fp32 over 20 steps of different reduction orders


def norms(run: Path) -> list[float]:
    import json

    return json.loads((run / "norms.json").read_text())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fsdp")


@pytest.fixture(scope="module")
def coactivation(root) -> Path:
    """A fixed co-activation count matrix for C2R (collaborators: profile), the same on every rank."""
    counts = np.random.default_rng(0).integers(0, 100, size=(8, 8))
    path = root / "coactivation.npy"
    np.save(path, (counts + counts.T) * (1 - np.eye(8, dtype=np.int64)))
    return path


def run(root: Path, name: str, *flags: str, **options) -> Path:
    return train(root / name, root / "cache", *flags, **options)


@pytest.fixture(scope="module")
def ref(root) -> Path:
    return run(root, "ref", ep=1, devices=1, batch=BATCH, steps=STEPS, dispatcher="sorted")


@pytest.fixture(scope="module")
def ref_c2r(root, ref, coactivation) -> Path:  # after ref: it fills the corpus cache
    return run(
        root,
        "ref-c2r",
        ep=1,
        devices=1,
        batch=BATCH,
        steps=STEPS,
        dispatcher="sorted",
        c2r_profile=coactivation,
    )


CASES = {  # name: (N, P, dispatcher, C2R)
    "N2-P2-grouplocal": (2, 2, "grouplocal", False),
    "N4-P2-grouplocal": (4, 2, "grouplocal", False),
    "N2-P1-sorted": (2, 1, "sorted", False),
    "N4-P4-grouplocal-c2r": (4, 4, "grouplocal", True),
}


@pytest.fixture(scope="module")
def fsdp_run(root, ref, coactivation):
    """`fsdp_run(case)`: the case's run directory, trained once per module (on first use)."""
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            n, p, dispatcher, c2r = CASES[name]
            extra = {"c2r_profile": coactivation} if c2r else {}
            done[name] = run(
                root,
                name,
                "--fsdp",
                ep=p,
                devices=n,
                batch=BATCH // n,
                steps=STEPS,
                dispatcher=dispatcher,
                **extra,
            )
        return done[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_fsdp_trains_like_one_process(case, fsdp_run, ref, request):
    single = request.getfixturevalue("ref_c2r") if CASES[case][3] else ref
    got = fsdp_run(case)
    assert len(losses(got)) == STEPS
    assert losses(got) == pytest.approx(losses(single), rel=TOL)
    # the norm of the whole model's gradient before clipping, over dense and expert shards
    assert norms(got) == pytest.approx(norms(single), rel=TOL)
    assert norms(got)[0] == pytest.approx(norms(single)[0], rel=2e-6)  # no drift yet: tight
    assert max(norms(single)) > 0.5, "grad_clip=0.5 must actually clip for the test to mean anything"


@pytest.fixture(scope="module")
def bf16_offload(root, ref) -> Path:
    return run(
        root,
        "N2-P2-bf16-offload",
        "--fsdp",
        ep=2,
        devices=2,
        batch=BATCH // 2,
        steps=STEPS,
        param_dtype="bfloat16",
        cpu_offload="true",
    )


@pytest.mark.slow
def test_bf16_compute_keeps_fp32_master_weights_with_cpu_offload(bf16_offload, ref):
    got, single = losses(bf16_offload), losses(ref)
    assert got != pytest.approx(single, rel=1e-6), "parameters must be gathered in bf16 for compute"
    assert got == pytest.approx(single, rel=2e-2)  # and still train like fp32, within bf16 precision
    saved = read_tensors(bf16_offload / "final.ckpt")  # master weights and AdamW state
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float32}


@pytest.mark.slow
def test_fsdp_checkpoint_consolidates_to_the_single_process_state(fsdp_run, ref):
    ckpt = fsdp_run("N2-P2-grouplocal") / "final.ckpt"
    assert (ckpt / MARKER_FILE).is_file(), "FSDP saves a sharded directory"
    single = torch.load(ref / "final.ckpt", weights_only=False)
    sharded = torch.load(write_consolidated(ckpt, ckpt.parent / "full.ckpt"), weights_only=False)
    assert sharded["global_step"] == single["global_step"] == STEPS
    assert_same_state(sharded, single, tol=TOL)


@pytest.fixture(scope="module")
def resumed(root, fsdp_run) -> dict[str, Path]:
    """FSDP N=2 @20 -> FSDP N=4 P=2 @22; FSDP N=2 @20 -> DDP N=2 P=2 @22 -> FSDP N=2 P=1 @23."""
    ckpt = root / "fsdp-n2.ckpt"
    shutil.copytree(fsdp_run("N2-P2-grouplocal") / "final.ckpt", ckpt)
    out = {"checkpoint": ckpt}
    out["fsdp-n4"] = run(
        root, "r-fsdp-n4", "--fsdp", "--dump", ep=2, devices=4, batch=BATCH // 4, steps=STEPS + 2, resume=ckpt
    )
    out["ddp-n2"] = run(
        root, "r-ddp-n2", "--dump", ep=2, devices=2, batch=BATCH // 2, steps=STEPS + 2, resume=ckpt
    )
    ddp_ckpt = root / "ddp-n2.ckpt"
    shutil.copytree(out["ddp-n2"] / "final.ckpt", ddp_ckpt)
    out["ddp-checkpoint"] = ddp_ckpt
    out["fsdp-p1"] = run(
        root,
        "r-fsdp-p1",
        "--fsdp",
        "--dump",
        ep=1,
        devices=2,
        batch=BATCH // 2,
        steps=STEPS + 3,
        dispatcher="sorted",
        resume=ddp_ckpt,
    )
    return out


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_exactly_at_another_n(resumed):
    assert_restores_exactly(resumed["fsdp-n4"], resumed["checkpoint"])


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_exactly_on_the_ddp_path_and_back(resumed):
    assert_restores_exactly(resumed["ddp-n2"], resumed["checkpoint"])
    assert_restores_exactly(resumed["fsdp-p1"], resumed["ddp-checkpoint"])


@pytest.mark.slow
def test_resumed_runs_continue_alike(resumed):
    assert len(losses(resumed["fsdp-n4"])) == 2
    assert losses(resumed["fsdp-n4"]) == pytest.approx(losses(resumed["ddp-n2"]), rel=TOL)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9])
@pytest.mark.parametrize("shards", [1, 2, 3, 4])
def test_shard_rows_are_torch_chunk(n, shards):
    chunks = torch.arange(n).chunk(shards) if n else []
    for i in range(shards):
        expect = chunks[i].tolist() if i < len(chunks) else []
        assert list(shard_rows(n, i, shards)) == expect


# A dispatcher plugin that declares it cannot run on FSDP2 shards (megablocks does, but on a CPU
# machine its missing CUDA packages are reported first).
NOT_FSDP = """
from moelight.api import dispatchers
from moelight_plugins.dispatchers.grouplocal import GroupLocalDispatcher


@dispatchers.register("pinned_weights")
class PinnedWeights(GroupLocalDispatcher):
    fsdp_compatible = False
"""

BAD = {
    "dispatcher that cannot run under fsdp": (
        ["parallel.fsdp=true", "dispatcher.name=pinned_weights", "plugins=[PLUGIN]"],
        "'pinned_weights' does not run under parallel.fsdp=true; allowed: ",
    ),
    "param_dtype without fsdp": (["parallel.param_dtype=bfloat16"], "param_dtype applies to FSDP only"),
    "cpu_offload without fsdp": (["parallel.cpu_offload=true"], "cpu_offload applies to FSDP only"),
    "P not dividing N": (["parallel.fsdp=true", "trainer.devices=3"], "must divide the world size 3"),
    "P not dividing E": (
        ["parallel.fsdp=true", "parallel.expert_parallel=3", "trainer.devices=3"],
        "must divide model.num_experts",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD)
def test_bad_fsdp_input_exits_2_with_one_message(tmp_path, case):
    args, message = BAD[case]
    plugin = tmp_path / "not_fsdp.py"
    plugin.write_text(NOT_FSDP)
    args = [a.replace("PLUGIN", str(plugin)) for a in args]
    proc = moelight("fit", str(RECIPE), *args, f"trainer.out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.count("error:") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists(), "nothing is written before the error"
