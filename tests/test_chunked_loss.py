"""Chunked cross-entropy: the loss and gradients of plain F.cross_entropy, without full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moelight.memory.live_bytes import peak_bytes
from moelight.model.build import build_model
from moelight.model.loss import chunked_cross_entropy
from moelight.recipe import load_recipe


def plain(h, w, t):
    return F.cross_entropy((h @ w.t()).float().view(-1, w.shape[0]), t.reshape(-1), ignore_index=-100)


def loss_and_grads(fn, h, w, t):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = fn(h, w, t)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [0, 1, 7, 16, 64, 1000])
def test_equals_plain_cross_entropy(chunk):
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(3, 21, 16, generator=g), torch.randn(50, 16, generator=g)
    t = torch.randint(0, 50, (3, 21), generator=g)
    t[0, :5] = -100  # ignored positions (padding) carry no loss
    ref = loss_and_grads(plain, h, w, t)
    out = loss_and_grads(lambda a, b, c: chunked_cross_entropy(a, b, c, chunk), h, w, t)
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_equals_plain_under_bf16_autocast():
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(64, 32, generator=g), torch.randn(300, 32, generator=g)
    t = torch.randint(0, 300, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = loss_and_grads(plain, h, w, t)
        out = loss_and_grads(lambda a, b, c: chunked_cross_entropy(a, b, c, 10), h, w, t)
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)


def test_never_holds_the_full_logits():
    T, d, V = 1024, 32, 4000
    h = torch.randn(T, d, requires_grad=True)
    w = torch.randn(V, d, requires_grad=True)
    t = torch.randint(0, V, (T,))
    logits_bytes = 4 * T * V

    def run(chunk):
        def work():
            chunked_cross_entropy(h, w, t, chunk).backward()
            h.grad = w.grad = None

        return peak_bytes(work)

    assert run(0) >= logits_bytes  # the plain loss does allocate them
    assert run(64) < 0.25 * logits_bytes  # a chunk is 1/16 of them: its logits, recompute, gradient


def test_the_model_loss_is_cross_entropy_of_its_logits():
    torch.manual_seed(0)
    recipe = load_recipe(None, ["model.n_layers=2", "model.tie_embeddings=false"])
    model = build_model(recipe)
    x = torch.randint(0, 260, (2, 24))
    y = torch.randint(0, 260, (2, 24))
    torch.manual_seed(3)
    ref = F.cross_entropy(model(x).float().view(-1, 260), y.view(-1))
    torch.manual_seed(3)
    out = model(x, targets=y, loss_chunk_tokens=5)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
