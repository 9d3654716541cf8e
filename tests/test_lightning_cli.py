"""`moelight fit` on LightningCLI: Trainer flags pass through, recipe fields stay one place each,
bad flag values are one-line errors, and the model and data work under a user's own Trainer."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import TINY
from lightning.pytorch.callbacks import EarlyStopping, Timer
from lightning.pytorch.loggers import CSVLogger

from moelight.cli.fit_args import STRATEGY_SPEC, split_fit_args
from moelight.cli.lightning_cli import MoelightCLI
from moelight.cli.main import main
from moelight.data.datamodule import MoEDataModule
from moelight.parallel.checkpoint import MARKER_FILE
from moelight.parallel.strategy import ExpertParallelStrategy
from moelight.recipe import load_recipe
from moelight.training.module import MoELanguageModel
from moelight.training.optim import lr_factor

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, recipe_file=None, overrides=()) -> MoelightCLI:
    parts = split_fit_args([*([str(recipe_file)] if recipe_file else []), *TINY, *overrides, *args])
    return MoelightCLI(load_recipe(parts.recipe, parts.overrides), parts.lightning)


def test_argv_routing():
    args = split_fit_args(
        [
            "r.yaml",
            "model.n_layers=2",
            "--router.name",
            "c2r",
            "trainer.max_steps=5",
            "--trainer.out_dir",
            "x",
            "--trainer.logger",
            "csv",
            "--trainer.logger+=CSVLogger",
            "--trainer.devices",
            "2",
            "trainer.gradient_clip_algorithm=value",
            "--trainer.gradient_clip_val",
            "0.5",
            "--trainer.strategy",
            "expert_parallel",
            "--print_config",
            "--resume",
            "last",
            "--overwrite",
        ]
    )
    assert args.recipe == "r.yaml" and args.resume == "last" and args.overwrite
    assert args.overrides == [
        "model.n_layers=2",
        "router.name=c2r",
        "trainer.max_steps=5",
        "trainer.out_dir=x",
        "trainer.logger=csv",
        "trainer.devices=2",
        "optim.grad_clip=0.5",  # gradient_clip_val is the recipe's optim.grad_clip
    ]
    assert args.lightning == [
        "--trainer.logger+=CSVLogger",
        "--trainer.gradient_clip_algorithm=value",
        "--trainer.strategy",
        STRATEGY_SPEC,
        "--print_config",
    ]


def test_trainer_flags_pass_through(run_env, tmp_path):
    c = cli(
        "--trainer.max_time=00:00:05:00",
        "--trainer.gradient_clip_algorithm=value",
        "--trainer.gradient_clip_val=0.25",
        "--trainer.callbacks+=EarlyStopping",
        "--trainer.callbacks.monitor=val/loss",
        "--trainer.logger+=CSVLogger",
        f"--trainer.logger.save_dir={tmp_path / 'extra'}",
        "--trainer.max_steps=7",
        "--trainer.limit_val_batches=0.5",
        "--trainer.profiler=simple",
    )
    t = c.trainer
    assert t.gradient_clip_algorithm == "value" and t.gradient_clip_val == 0.25
    assert any(isinstance(cb, Timer) and cb._duration == 300 for cb in t.callbacks)
    assert any(isinstance(cb, EarlyStopping) and cb.monitor == "val/loss" for cb in t.callbacks)
    assert type(t.profiler).__name__ == "SimpleProfiler"
    # the recipe's loggers stay and the flag's is added
    assert [type(lg) for lg in t.loggers][0] is CSVLogger and len(t.loggers) >= 2
    assert t.loggers[-1].save_dir == str(tmp_path / "extra")
    # one place per setting: the recipe records what the Trainer runs with
    assert (c.recipe.trainer.max_steps, c.recipe.optim.grad_clip) == (7, 0.25)
    assert c.recipe.trainer.limit_val_batches == 0.5
    assert cli("--trainer.fast_dev_run=2").trainer.fast_dev_run == 2
    assert cli("--trainer.enable_checkpointing=false").trainer.checkpoint_callbacks == []


def test_expert_parallel_is_a_strategy_argument(run_env):
    c = cli(
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy",
        "expert_parallel",
        "--trainer.strategy.expert_parallel",
        "2",
        overrides=["dispatcher.name=grouplocal"],
    )
    assert isinstance(c.trainer.strategy, ExpertParallelStrategy) and c.trainer.strategy.expert_parallel == 2
    assert c.recipe.parallel.expert_parallel == 2  # the model builds its local experts from it
    # a strategy named on the command line still gets the recipe's collective timeout
    assert c.trainer.strategy._timeout == timedelta(seconds=c.recipe.parallel.collective_timeout_s)
    # the recipe alias: parallel.expert_parallel picks the same strategy by default
    c = cli(recipe_file=ROOT / "recipes" / "ep-cpu.yaml", overrides=["parallel.collective_timeout_s=12"])
    assert isinstance(c.trainer.strategy, ExpertParallelStrategy) and c.trainer.strategy.expert_parallel == 2
    assert c.trainer.strategy._timeout == timedelta(seconds=12)
    assert ExpertParallelStrategy(expert_parallel=4).expert_parallel == 4


def test_print_config_round_trips_through_config(run_env, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        cli("--print_config", overrides=["model.n_layers=3", "--trainer.max_steps", "9"])
    assert done.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["n_layers"] == 3 and config["trainer"]["max_steps"] == 9
    assert config["router"]["name"] == "topk" and "logger" in config["trainer"]
    config["model"]["n_layers"] = 1
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    c = cli("--config", str(path))
    assert c.recipe.model.n_layers == 1 and c.trainer.max_steps == 9


def test_parsing_keeps_unset_recipe_fields_unset():
    """An unset trainer.max_steps must not start capping trainer.max_epochs after parsing."""
    recipe = load_recipe(None, ["trainer.max_epochs=2"])
    assert "max_steps" not in MoelightCLI(recipe, [], build=False).recipe.trainer.model_fields_set
    parsed = MoelightCLI(recipe, ["--trainer.max_steps=7"], build=False).recipe.trainer
    assert "max_steps" in parsed.model_fields_set and parsed.max_steps == 7


def test_help_shows_recipe_fields_with_descriptions_and_defaults(run_env, capsys):
    with pytest.raises(SystemExit):
        cli("--help", recipe_file=ROOT / "recipes" / "c2r.yaml")
    text = " ".join(capsys.readouterr().out.split())
    assert "--model.moe_every" in text and "an MoE FFN every n-th layer" in text
    assert "--trainer.checkpoint_every_n_steps" in text and "--trainer.gradient_clip_algorithm" in text
    assert "'name': 'c2r'" in text  # defaults are the given recipe's


BAD_FLAGS = {
    "precision": (
        ["--trainer.precision", "bogus"],
        "Precision 'bogus' is invalid. Allowed precision values:",
    ),
    "devices": (["--trainer.devices", "0"], "devices=0"),
    "strategy": (["--trainer.strategy", "nope"], "unknown strategy 'nope' (registered:"),
    "logger class": (["--trainer.logger", "NoSuchLogger"], "trainer.logger: cannot use 'NoSuchLogger'"),
    "unknown trainer key": (["--trainer.max_stepz", "3"], "trainer.max_stepz: unknown key"),
    "betas": (["optim.betas=[0.9, 1.5]"], "optim.betas: betas[1] = 1.5 must be in [0, 1)"),
    "vocab": (
        ["model.vocab_size=100"],
        "model.vocab_size: 100 is smaller than the tokenizer's vocabulary (260)",
    ),
    "flag type": (["--trainer.detect_anomaly", "maybe"], "trainer.detect_anomaly: invalid value 'maybe'"),
    "bad config file": (["--config", "/no/such.yaml"], "/no/such.yaml"),
}
if not torch.cuda.is_available():
    BAD_FLAGS["accelerator"] = (["--trainer.accelerator", "gpu"], "trainer: No supported gpu backend found")


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_bad_trainer_values_are_one_line_exit_2(case, tiny, capsys):
    args, needle = BAD_FLAGS[case]
    assert main(["fit", *tiny, *args]) == 2
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert needle in err and err.count("error:") == 1, err
    assert "Traceback" not in captured.err + captured.out


def test_lr_schedule_follows_the_trainer(tiny, tmp_path):
    recipe = load_recipe(None, tiny + ["optim.warmup_steps=2"])  # recipe says 4 steps
    model = MoELanguageModel(recipe)
    trainer = L.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=MoEDataModule(recipe.data, seed=recipe.seed))
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(recipe.optim.lr * lr_factor(6, 2, 6, recipe.optim.min_lr_ratio))
    assert lr == pytest.approx(recipe.optim.lr * recipe.optim.min_lr_ratio)  # the cosine's end


@pytest.mark.slow
def test_plain_lightning_script_trains_saves_and_reloads(run_env, tmp_path):
    script = ROOT / "examples" / "lightning" / "plain_lightning.py"
    assert len(script.read_text().splitlines()) < 30
    small = [o for o in TINY if o.startswith(("model.", "data."))]
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "m.ckpt"), *small],
        capture_output=True,
        text=True,
        env=run_env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "same logits after reload: True" in proc.stdout
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=False)
    assert ckpt["global_step"] == 10 and ckpt["hyper_parameters"]["recipe"]["model"]["n_layers"] == 2


def test_slurm_environment_is_detected(run_env, monkeypatch):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NAME": "moelight",
        "SLURM_NODELIST": "localhost",
    }
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    c = cli(
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=expert_parallel",
        overrides=["dispatcher.name=grouplocal"],
    )
    env = c.trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.creates_processes_externally
    assert (c.trainer.global_rank, c.trainer.world_size) == (1, 2)
    assert c.recipe.parallel.expert_parallel == 2  # P defaults to the world


@pytest.mark.slow
def test_torchrun_two_cpu_processes_with_expert_parallel(run_env, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "moelight",
        "fit",
        *TINY,
        "trainer.max_steps=2",
        f"trainer.out_dir={out}",
        "dispatcher.name=grouplocal",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "expert_parallel",
        "--trainer.strategy.expert_parallel",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "checkpoints" / "last.ckpt" / MARKER_FILE).is_file()  # sharded over the 2 ranks
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["parallel"]["expert_parallel"] == 2
