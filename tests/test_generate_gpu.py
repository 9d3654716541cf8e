"""`moelight generate` on a GPU: bf16 chosen by default, and the KV cache agreeing with the full
forward within bf16 rounding. Skipped, with the reason shown by `pytest -ra`, without CUDA."""

from __future__ import annotations

import pytest
import torch
from random_checkpoint import ROOT, TINY_MODEL, save_random_checkpoint

from moelight.eval.model import load_eval_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs CUDA: run on a machine with an NVIDIA GPU (pytest -m gpu)",
    ),
]


@pytest.mark.parametrize("recipe", ["quickstart.yaml", "c2r.yaml"])
def test_bf16_by_default_and_cached_forward_matches(tmp_path, recipe):
    ckpt = save_random_checkpoint(ROOT / "recipes" / recipe, tmp_path / "m.ckpt", TINY_MODEL)
    m = load_eval_model(ckpt)  # auto device and dtype
    if torch.cuda.is_bf16_supported():
        assert m.dtype == torch.bfloat16 and m.device.type == "cuda"
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(0)).to(m.device)
    with torch.no_grad():
        full = m.model(ids).float()
        cache = m.model.new_cache()
        parts = [m.model.forward_cached(ids[:, :8], cache)]
        parts += [m.model.forward_cached(ids[:, i : i + 1], cache) for i in range(8, 24)]
    cached = torch.cat(parts, dim=1).float()
    # bf16: both paths round differently, but the same logits up to bf16 noise
    assert (cached - full).abs().max().item() < 0.1 * full.abs().max().item()
