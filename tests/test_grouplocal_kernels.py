"""The group-local dispatch's Triton kernels equal their torch references (forward and backward).

Triton's CPU interpreter must be on (TRITON_INTERPRET=1) before triton is first imported, and
pytest's process has imported it long before (lightning does): so the checks run in a fresh
process, tests/grouplocal_kernel_checks.py, once for the module, and each test reads its
result. On a CUDA machine the same checks also run compiled (`gpu` marker).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moelight.kernels import select_impl

SCRIPT = Path(__file__).with_name("grouplocal_kernel_checks.py")
CHECKS = [
    "token_slots",
    "counting_sort",
    "row_plan",
    "gather_rows",
    "combine_rows",
    "dispatcher_triton_matches_sorted",
]


def run_checks(tmp: Path, *flags: str) -> dict[str, str]:
    out = tmp / "kernel_checks.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *flags], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict[str, str]:
    return run_checks(tmp_path_factory.mktemp("kernels"))


@pytest.mark.slow
@pytest.mark.parametrize("check", CHECKS)
def test_triton_kernel_matches_torch_reference(interpreted, check):
    assert interpreted[check] == "ok", interpreted[check]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_kernels_compiled_on_cuda(tmp_path):
    results = run_checks(tmp_path, "--cuda")
    assert all(v == "ok" for v in results.values()), results


def test_auto_picks_torch_on_cpu_and_triton_on_cuda():
    assert select_impl("auto", torch.device("cpu")) == "torch"
    assert select_impl("auto", torch.device("cuda")) == "triton"
    assert select_impl("torch", torch.device("cuda")) == "torch"
