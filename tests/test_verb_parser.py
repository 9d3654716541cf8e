"""The verbs' one command-line parser: recipe overrides, typed options, generated help, one-line
errors, and every `moelight <verb>` command the docs show still parses."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from moelight.cli.main import VERBS, main
from moelight.cli.verb_parser import with_override_options
from moelight.errors import MoelightError

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
PARSED_VERBS = [verb for verb in VERBS if verb != "fit"]  # fit is LightningCLI's (test_lightning_cli.py)


def verb_parser(verb: str):
    return importlib.import_module(VERBS[verb][0]).parser()


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of each `moelight <verb> ...` command in the docs: lines of code blocks
    (continuations joined, comments dropped) and lines that are one `inline command`; synopses
    with [optional] parts or `...` excepted."""
    found = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        in_code, i = False, 0
        while i < len(lines):
            line, where = lines[i].strip(), f"{doc.name}:{i + 1}"
            in_code ^= line.startswith("```")
            inline = re.fullmatch(r"`(moelight [^`]+)`", line)
            command = (
                inline.group(1) if inline else re.sub(r"^(\w+=\S+ )*", "", line)
            )  # OMP_NUM_THREADS=1 ...
            while in_code and command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + lines[i]
            i += 1
            if not (in_code or inline) or not command.startswith("moelight "):
                continue
            argv = shlex.split(command, comments=True)[1:]
            if argv[0] in PARSED_VERBS and not any(a.startswith("[") or a == "..." for a in argv):
                found.append((where, argv))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_every_verb():
    assert {argv[0] for _, argv in COMMANDS} >= {"plugins", "profile", "bench", "convert", "eval"}


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[where for where, _ in COMMANDS])
def test_documented_command_parses(argv):
    args = verb_parser(argv[0]).parse(argv[1:])
    assert args is not None
    overrides = [a for a in argv if re.match(r"\w+(\.\w+)+=", a)]
    if overrides:
        parsed = args[args.command].overrides if "command" in args else args.overrides
        assert parsed == overrides


def test_overrides_become_options_in_every_spelling():
    argv = ["r.yaml", "a.b=1", "--c.d", "2", "--e.f=3", "--override", "g=4", "--device", "cpu", "seed=5"]
    assert with_override_options(argv) == [
        *("r.yaml", "--override", "g=4", "--device", "cpu"),
        *("--override=a.b=1", "--override=c.d=2", "--override=e.f=3", "--override=seed=5"),
    ]
    # a dispatcher or router spec is an option's value, not an override
    specs = ["--dispatchers", "grouplocal:kernels=torch", "--router", "c2r:top_t=1"]
    assert with_override_options(specs) == specs
    with pytest.raises(MoelightError, match="override --a.b needs a value"):
        with_override_options(["--a.b"])


def test_typed_options_and_overrides_parse():
    args = verb_parser("profile").parse(
        ["ckpt", "--devices", "2,4", "--out", "o", "data.batch_size=8", "--devices=3", "--max-tokens", "64"]
    )
    assert (args.checkpoint, args.out, args.devices, args.max_tokens) == ("ckpt", "o", [2, 4, 3], 64)
    assert args.overrides == ["data.batch_size=8"]
    args = verb_parser("bench").parse(["comm", "--interconnect", "nvlink", "--bandwidth-gbs", "12.5"])
    assert args.command == "comm" and args.comm.interconnect == ["nvlink"] and args.comm.bandwidth_gbs == 12.5
    assert args.comm.devices == [2, 4, 8, 16, 32, 64]
    args = verb_parser("eval").parse(
        ["a.ckpt", "b.ckpt", "--tasks", "t", "--include-path", "x", "--include-path=y"]
    )
    assert args.checkpoints == ["a.ckpt", "b.ckpt"] and args.include_path == ["x", "y"] and args.limit is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["profile", "--out", "o"], "profile needs CHECKPOINT (see `moelight profile --help`)"),
        (
            ["profile", "c", "--out", "o", "--max-tokens", "0"],
            "--max-tokens: invalid value '0' (expected an integer > 0)",
        ),
        (
            ["profile", "c", "--out", "o", "--max-tokens", "x"],
            "--max-tokens: invalid value 'x' (expected an integer)",
        ),
        (["profile", "c", "--out"], "--out: expected one argument"),
        (["profile", "c", "d", "--out", "o"], "unexpected argument 'd' (see `moelight profile --help`)"),
        (
            ["profile", "c", "--out", "o", "--max-token", "3"],
            "unknown option '--max-token' (options: --help, --out, --data, --max-tokens, --docs, --tokens-per-doc, --devices, --override;",
        ),
        (
            ["bench", "layer", "model.n_layers=2"],
            "bench layer takes no recipe overrides (got model.n_layers=2)",
        ),
        (["bench", "ep", "--procs", "3"], "--procs: invalid value '3' (allowed: 2, 4, 8)"),
        (
            ["bench", "ep", "--configs", "grouplocal,nope"],
            "--configs: invalid value 'nope' (allowed: per-expert, grouplocal",
        ),
        (["bench", "layer", "--warmup", "-1"], "--warmup: invalid value '-1' (expected an integer >= 0)"),
        (
            ["convert", "export", "m", "--out", "o"],
            "convert export needs --arch (see `moelight convert export --help`)",
        ),
        (
            ["convert", "import", "d", "--out", "o", "--arch", "mixtral"],
            "unknown option '--arch' (options: --help, --out, --dtype, --force;",
        ),
        (
            ["eval", "c.ckpt", "--tasks", "t", "--limit", "-2"],
            "--limit: invalid value '-2' (expected a number > 0)",
        ),
        (["plugins", "--all"], "unknown option '--all' (options: --help;"),
    ],
)
def test_parse_errors_are_one_line_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert message in " ".join(err.split())


@pytest.mark.parametrize(
    "argv, shown",
    [
        (["profile"], ["CHECKPOINT", "--out DIR", "--max-tokens", "--devices", "--override KEY.PATH=VALUE"]),
        (
            ["bench"],
            ["{layer,step,comm,memory,ep}", "expert-parallel training steps", "per-rank memory plan"],
        ),
        (["bench", "memory"], ["RECIPE.yaml", "--gpu-memory GB", "--offload", "--fsdp"]),
        (["bench", "comm"], ["--interconnect", "nvlink|infiniband", "default: 16384"]),
        (["bench", "step"], ["RECIPE.yaml", "--override KEY.PATH=VALUE", "default: 10"]),
        (["convert", "import"], ["HF_DIR", "--dtype {keep,float32,bfloat16,float16}", "--force"]),
        (["eval"], ["CKPT [CKPT ...]", "--tasks TASKS", "--include-path DIR"]),
        (["plugins"], ["NAME | FILE.py", "every installed router and dispatcher"]),
    ],
)
def test_help_is_generated_from_the_declarations(capsys, argv, shown):
    assert main([*argv, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in shown:
        assert text in out, text


def test_a_verb_with_subcommands_and_no_arguments_prints_its_help(capsys):
    assert main(["convert"]) == 0
    assert "{import,export}" in capsys.readouterr().out
