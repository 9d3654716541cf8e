"""The plugin author's kit on CUDA: the bundled plugins pass `check_router` / `check_dispatcher` there too."""

from __future__ import annotations

import pytest
import torch

from moelight.testing import check_dispatcher, check_router

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("spec", [("topk", {}), ("balanced", {"method": "bias"}), ("c2r", {"top_t": 3})])
def test_bundled_routers_on_cuda(spec):
    check_router(*spec, device="cuda")


@pytest.mark.parametrize(
    "spec", [("sorted", {}), ("grouplocal", {"kernels": "triton"}), ("grouplocal", {"rows": "per_expert"})]
)
def test_bundled_dispatchers_on_cuda(spec):
    check_dispatcher(*spec, device="cuda")
