"""Checkpoint state as JSON (moelight/checkpoint/json_state.py): the values Lightning keeps beside
the tensors come back with their types, and nothing in the file is ever imported."""

from __future__ import annotations

import json
import math

import pytest
import torch

from moelight.checkpoint import json_state


def same(a, b) -> bool:
    """Equal values of equal types, recursively (tensors: dtype, shape and values)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def test_lightning_like_state_round_trips():
    state = {
        "epoch": 0,
        "global_step": 40,
        "pytorch-lightning_version": "2.6.6",
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 1}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': None}": {
                "best_model_score": None,
                "kth_value": torch.tensor(float("inf")),
                "best_k_models": {},
                "dirpath": "/x/checkpoints",
            }
        },
        "optimizer_states": [{"param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8}]}],
        "lr_schedulers": [{"base_lrs": [0.001], "_last_lr": [0.0005], "lr_lambdas": [None]}],
        "by_int": {0: "a", 3: (1, 2)},
        "dtype": torch.bfloat16,
        "nan": float("nan"),
        "bf16": torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16),
        "ints": torch.arange(6).reshape(2, 3),
        "scalar": torch.tensor(7),
        "tagged_name": {json_state.TAG: "not ours"},
    }
    back = json_state.loads(json_state.dumps(state))
    assert same(back, state)


def test_unsupported_values_are_refused_naming_where():
    with pytest.raises(TypeError, match=r"callbacks\.cb\.fn: a function"):
        json_state.dumps({"callbacks": {"cb": {"fn": lambda: None}}})


def test_reading_never_imports_names():
    text = json.dumps({json_state.TAG: "dtype", "name": "os.system"})
    with pytest.raises(ValueError, match="unknown dtype"):
        json_state.loads(text)
    with pytest.raises(ValueError, match="unknown tagged value"):
        json_state.loads(json.dumps({json_state.TAG: "object", "module": "os", "name": "system"}))
