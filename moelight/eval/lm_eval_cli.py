"""`moelight-lm-eval` (or `python -m moelight.eval.lm_eval_cli`): lm-eval's own CLI, with model `moelight`.

lm-eval 0.4.13 finds models only in its own table or among classes already imported into the
process (no entry points: EleutherAI/lm-evaluation-harness#1621, #3282), so a plain `lm_eval
--model moelight` cannot see this package. This wrapper imports the adapter, switches the hubs off
unless the caller set them, adds the project's local tasks to `--include_path`, and hands the
command line to lm-eval unchanged:

    moelight-lm-eval --model moelight --model_args checkpoint=runs/quickstart/checkpoints/last.ckpt \\
        --tasks moelight_python_mc
"""

from __future__ import annotations

import sys

from moelight.eval.tasks import LOCAL_TASK_DIR, go_offline, quiet_custom_dataset_warning


def with_local_tasks(argv: list[str]) -> list[str]:
    """Add the shipped task directory to lm-eval's --include_path (it takes one directory)."""
    if not LOCAL_TASK_DIR.is_dir() or any(a.split("=")[0] == "--include_path" for a in argv):
        return argv
    return [*argv, "--include_path", str(LOCAL_TASK_DIR)]


def main() -> None:
    go_offline()
    quiet_custom_dataset_warning()
    from lm_eval.__main__ import cli_evaluate

    import moelight.eval.adapter  # noqa: F401  (registers `moelight`)

    sys.argv = [sys.argv[0], *with_local_tasks(sys.argv[1:])]
    cli_evaluate()


if __name__ == "__main__":
    main()
