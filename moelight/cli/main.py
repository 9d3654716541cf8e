"""`moelight <verb>`: fit, plugins, profile, bench, convert, eval, generate, chat, report."""

from __future__ import annotations

import signal
import sys

from rich.console import Console
from rich.markup import escape

from moelight.errors import MoelightError
from moelight.training.startup_signals import Interrupted, early_handler, end_launched_rank, exit_code

VERBS = {
    "fit": ("moelight.cli.fit", "train a model from a recipe"),
    "plugins": ("moelight.cli.plugins", "installed routers and dispatchers, or one plugin's parameters"),
    "profile": ("moelight.cli.profile", "collaboration statistics, placement and plots of a checkpoint"),
    "bench": ("moelight.cli.bench", "benchmark dispatchers, layers and all2all"),
    "convert": ("moelight.cli.convert", "Hugging Face MoE checkpoints in and out"),
    "eval": ("moelight.cli.eval", "lm-evaluation-harness tasks on checkpoints, with their own routing"),
    "generate": ("moelight.cli.generate", "continue a prompt with a checkpoint, routed as trained"),
    "chat": ("moelight.cli.chat", "talk to a checkpoint with its recipe's prompt template"),
    "report": ("moelight.cli.report", "summaries and side-by-side curves of training runs"),
}

err_console = Console(stderr=True)


def usage() -> str:
    lines = ["usage: moelight <verb> [args]", "", "verbs:"]
    lines += [f"  {verb:<9} {help_}" for verb, (_, help_) in VERBS.items()]
    lines += ["", "Run `moelight <verb> --help` for a verb's options."]
    return "\n".join(lines)


def quiet_third_party() -> None:
    """Hide advertising and deprecation chatter that says nothing about the user's run."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda record: "Tip:" not in str(record.msg))


def main(argv: list[str] | None = None) -> int:
    previous = early_handler()  # first: a SIGTERM while torch and Lightning import is "interrupted", 143
    try:
        return _main(argv)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        end_launched_rank(signal.SIGINT)
        return 130
    except Interrupted as exc:  # SIGTERM before a verb's own handling took over
        err_console.print(f"[yellow]{exc.signal.name}: interrupted before training started, nothing saved[/]")
        end_launched_rank(exc.signal)  # a rank Lightning launched must not end before its launcher
        return exit_code(exc.signal)
    finally:
        for sig, handler in (previous or {}).items():  # in-process (tests, notebooks): leave none behind
            signal.signal(sig, handler)


def _main(argv: list[str] | None) -> int:
    quiet_third_party()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        err_console.print(f"[bold red]error:[/] unknown verb {verb!r}; allowed: {', '.join(VERBS)}")
        return 2
    # each verb's module is imported only when that verb runs
    import importlib

    try:
        # `fit --help` reads the recipe without importing Lightning (fit_help.py)
        name = "moelight.cli.fit_help" if verb == "fit" and {"-h", "--help"} & set(rest) else VERBS[verb][0]
        module = importlib.import_module(name)
        code = module.run(rest)
    except MoelightError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
