"""`moelight convert` mistakes: one clear message, exit status 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="moelight[hf] extra not installed")

from moelight.cli.main import main  # noqa: E402
from moelight.hf.tiny import make_tiny_checkpoint  # noqa: E402

transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return make_tiny_checkpoint("qwen2_moe", tmp_path_factory.mktemp("qwen") / "hf")


def copy_with_config(src, dest, **changes):
    """A copy of an HF directory whose config.json has `changes` applied (None deletes a key)."""
    dest.mkdir()
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def error_of(capsys, *argv: str) -> str:
    assert main(["convert", *argv]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return " ".join(captured.err.split())  # rich wraps long lines


def test_unsupported_architecture_names_the_supported_ones(qwen_dir, tmp_path, capsys):
    llama = copy_with_config(qwen_dir, tmp_path / "llama", model_type="llama")
    err = error_of(capsys, "import", str(llama), "--out", str(tmp_path / "out"))
    assert "unsupported architecture 'llama'" in err
    assert "supported: qwen2_moe, mixtral, olmoe, llama_moe" in err


def test_export_to_unsupported_architecture(qwen_dir, tmp_path, capsys):
    assert main(["convert", "import", str(qwen_dir), "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    err = error_of(
        capsys, "export", str(tmp_path / "m"), "--out", str(tmp_path / "x"), "--arch", "deepseek_v3"
    )
    assert "unsupported architecture 'deepseek_v3'; supported: qwen2_moe, mixtral, olmoe" in err


def test_export_to_an_architecture_that_cannot_hold_the_model(qwen_dir, tmp_path, capsys):
    assert main(["convert", "import", str(qwen_dir), "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    err = error_of(capsys, "export", str(tmp_path / "m"), "--out", str(tmp_path / "x"), "--arch", "mixtral")
    assert "--arch mixtral: the model cannot be exported as mixtral: (1) model.qkv_bias: true" in err
    assert "a shared expert" in err and "fix: model.shared_expert_ffn_hidden_size=0" in err
    err = error_of(capsys, "export", str(tmp_path / "m"), "--out", str(tmp_path / "x"), "--arch", "olmoe")
    assert "no QK-norm (OLMoE normalises q and k; fix: model.qk_norm=true)" in err


def test_missing_weight_files(qwen_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((qwen_dir / "config.json").read_text())
    err = error_of(capsys, "import", str(empty), "--out", str(tmp_path / "out"))
    assert "missing weight files: no *.safetensors" in err
    # A shard named in the index but absent.
    (empty / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}})
    )
    err = error_of(capsys, "import", str(empty), "--out", str(tmp_path / "out"))
    assert (
        "missing weight files named in model.safetensors.index.json: model-00001-of-00002.safetensors" in err
    )
    # No config.json at all.
    err = error_of(capsys, "import", str(tmp_path), "--out", str(tmp_path / "out"))
    assert "no config.json" in err


def test_shape_mismatch(qwen_dir, tmp_path, capsys):
    wrong = copy_with_config(qwen_dir, tmp_path / "wrong", moe_intermediate_size=24)
    err = error_of(capsys, "import", str(wrong), "--out", str(tmp_path / "out"))
    assert "shape mismatch: model.layers.0.mlp.experts.0.gate_proj.weight is [16, 32]" in err
    assert "config.json implies [24, 32] per expert" in err


def test_weights_missing_for_the_config(qwen_dir, tmp_path, capsys):
    more = copy_with_config(qwen_dir, tmp_path / "more", num_hidden_layers=3)
    err = error_of(capsys, "import", str(more), "--out", str(tmp_path / "out"))
    assert "missing weights for the architecture config.json describes: model.layers.2." in err


def test_unsupported_moe_layout(qwen_dir, tmp_path, capsys):
    odd = copy_with_config(qwen_dir, tmp_path / "odd", num_hidden_layers=4, mlp_only_layers=[2])
    err = error_of(capsys, "import", str(odd), "--out", str(tmp_path / "out"))
    assert "unsupported MoE layer layout" in err and "model.moe_every" in err


def test_refuses_to_overwrite_without_force(qwen_dir, tmp_path, capsys):
    assert main(["convert", "import", str(qwen_dir), "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    err = error_of(capsys, "import", str(qwen_dir), "--out", str(tmp_path / "m"))
    assert "pass --force to overwrite" in err
    assert main(["convert", "import", str(qwen_dir), "--out", str(tmp_path / "m"), "--force"]) == 0


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["frobnicate"], "unknown convert command 'frobnicate'; allowed: import, export"),
        (["import"], "convert import needs HF_DIR"),
        (["import", "somewhere"], "convert import needs --out"),
        (["export", "ckpt", "--out", "x"], "convert export needs --arch"),
        (
            ["import", "/no/such/dir", "--out", "x"],
            "Hugging Face checkpoint directory not found: /no/such/dir",
        ),
        (["export", "/no/such.ckpt", "--out", "x", "--arch", "olmoe"], "checkpoint not found: /no/such.ckpt"),
        (
            ["import", "d", "--out", "x", "--dtype", "int8"],
            "--dtype: invalid value 'int8' (allowed: keep, float32",
        ),
    ],
)
def test_usage_errors(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert needle in error_of(capsys, *argv)


def test_error_through_the_console_script_has_no_traceback(qwen_dir, tmp_path):
    llama = copy_with_config(qwen_dir, tmp_path / "llama", model_type="llama")
    proc = subprocess.run(
        [sys.executable, "-m", "moelight", "convert", "import", str(llama), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 2
    assert "unsupported architecture 'llama'" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr + proc.stdout


def test_help_lists_architectures(capsys):
    assert main(["convert", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "moelight convert {import,export}" in out and "qwen2_moe, mixtral, olmoe" in out
    assert main(["convert", "export", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "--arch ARCH" in out and "--out DIR" in out and "CKPT_OR_DIR" in out and "qwen2_moe, mixtral" in out
    )


def test_transformers4_config_spelling(qwen_dir, tmp_path):
    """config.json written by transformers 4.x: rope_theta at the top level, no rope_parameters."""
    from moelight.hf.importer import import_hf

    old = copy_with_config(
        qwen_dir, tmp_path / "v4", rope_parameters=None, rope_theta=123456.0, qkv_bias=None
    )
    imported = import_hf(old)
    assert imported.model.rope_theta == 123456.0 and imported.model.qkv_bias  # 4.x Qwen2-MoE: always biased


def test_unsupported_rope_scaling(qwen_dir, tmp_path, capsys):
    scaled = copy_with_config(
        qwen_dir, tmp_path / "yarn", rope_parameters={"rope_type": "yarn", "factor": 4.0}
    )
    err = error_of(capsys, "import", str(scaled), "--out", str(tmp_path / "out"))
    assert "rope type 'yarn' is not supported" in err


def test_router_that_hf_cannot_express(qwen_dir, tmp_path, capsys):
    assert main(["convert", "import", str(qwen_dir), "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    (tmp_path / "balanced.yaml").write_text("extends: m/recipe.yaml\nrouter:\n  name: balanced\n")
    err = error_of(
        capsys,
        "export",
        str(tmp_path / "m" / "model.safetensors"),
        "--recipe",
        str(tmp_path / "balanced.yaml"),
        "--out",
        str(tmp_path / "x"),
        "--arch",
        "qwen2_moe",
    )
    assert "'balanced' router" in err and "would route differently" in err and "--router topk" in err


# Every blocker's fix, in the order the message lists them.
EVERY_PROBLEM = {
    "llama_moe": [
        "model.qkv_bias=false",
        "model.shared_expert_ffn_hidden_size=0",
        "model.moe_every=1",
        "model.head_dim=null",
        "model.tie_embeddings=false",
    ],
    "mixtral": [
        "model.qkv_bias=false",
        "model.shared_expert_ffn_hidden_size=0",
        "model.moe_every=1",
        "router.renormalize=true",
    ],
    "olmoe": [
        "model.qk_norm=true",
        "model.qkv_bias=false",
        "model.shared_expert_ffn_hidden_size=0",
        "model.moe_every=1",
        "model.head_dim=null",
    ],
}


@pytest.mark.parametrize("arch", sorted(EVERY_PROBLEM))
def test_export_names_every_problem_at_once(arch):
    from moelight.errors import MoelightError
    from moelight.hf.architectures import get_architecture
    from moelight.recipe import ModelConfig

    # The defaults plus every feature these architectures cannot hold (moelight's default QK-norm is off).
    model = ModelConfig(
        qkv_bias=True, shared_expert_ffn_hidden_size=16, moe_every=2, head_dim=8, tie_embeddings=True
    )
    router = {"name": "balanced"} if arch == "llama_moe" else {"name": "topk"}
    with pytest.raises(MoelightError) as err:
        get_architecture(arch).to_hf(model, router)
    message = str(err.value)
    assert message.startswith(f"--arch {arch}: the model cannot be exported as {arch}: (1) ")
    fixes = [part.rsplit("fix: ", 1)[1].split(")")[0] for part in message.split("; (")]
    assert fixes == EVERY_PROBLEM[arch]
