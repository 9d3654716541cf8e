"""Docs that run: every shell block of README.md, CONTRIBUTING.md and docs/*.md, executed as
written, document by document, so a renamed path, recipe or flag breaks the suite.

How (tests/doc_commands.py has the extraction rules and the skip marker):
- Each document's blocks run in order in one fresh directory that looks like a checkout (the
  repository's top-level entries symlinked in), so `recipes/...` paths resolve and outputs land
  under its `runs/`.
- The commands are run as typed. What makes them cheap is added where a user's terminal has
  `moelight`: a `moelight` (and `moelight-lm-eval`) first on PATH that runs the real CLI with
  the arguments of TINY appended for its verb: a small model and a few steps for `fit` (later
  overrides win, so `trainer.max_steps=50` in a doc becomes 4; a `--resume` continues to 8), a few documents per task for
  `eval`, a few tokens for `generate`. Model depth and expert counts stay as written, so shipped profiles still fit.
- Blocks marked `<!-- docs-test: skip (reason) -->` are not run; the test reports each one
  (a DocsBlockSkipped warning in pytest's summary, and a line on stdout).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import TINY
from doc_commands import Block, MarkerError, doc_chain, shell_blocks, without_install

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "CONTRIBUTING.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))

# Appended to the commands of each verb (see the module docstring).
# conftest's TINY without its layer count: a doc's shipped profile or placement must still fit the
# recipe's depth.
TINY_FIT = [a for a in TINY if not a.startswith("model.n_layers=")]
TINY = {
    ("moelight", "fit"): TINY_FIT,
    ("moelight", "eval"): ["--limit", "2"],
    ("moelight", "generate"): ["--max-new-tokens", "8"],
    ("moelight-lm-eval", None): ["--limit", "2"],
}
BLOCK_TIMEOUT_S = 600

# argv[0] stays this script's path: a CPU DDP launch re-runs `python argv...` for each rank.
WRAPPER = """#!{python}
# docs test: the real `{name}` with the docs test's tiny arguments appended (tests/test_docs_run.py)
import sys

sys.path.insert(0, {tests!r})
from test_docs_run import tiny_argv

sys.argv[1:] = tiny_argv({name!r}, sys.argv[1:])
from {module} import main

sys.exit(main())
"""


class DocsBlockSkipped(UserWarning):
    """A docs block not run here, with the reason its marker gives."""


def tiny_argv(program: str, argv: list[str]) -> list[str]:
    verb = argv[0] if argv and program == "moelight" else None
    extra = TINY.get((program, verb), [])
    if verb == "fit" and any(a == "--resume" or a.startswith("--resume=") for a in argv):
        # A resume continues a tiny run (4 steps) for 4 more, whatever max_steps the doc gives.
        extra = [*extra, "trainer.max_steps=8"]
    return argv + extra


def checkout_like(tmp: Path) -> Path:
    """A directory with the repository's top-level entries symlinked in, and nothing else."""
    tmp.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name.startswith(".") or entry.name in ("runs", "build", "dist"):
            continue
        (tmp / entry.name).symlink_to(entry)
    return tmp


def wrapped_path(bin_dir: Path) -> str:
    bin_dir.mkdir()
    programs = {"moelight": "moelight.cli.main", "moelight-lm-eval": "moelight.eval.lm_eval_cli"}
    for name, module in programs.items():
        script = bin_dir / name
        text = WRAPPER.format(python=sys.executable, name=name, module=module, tests=str(ROOT / "tests"))
        script.write_text(text)
        script.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def run_chain(doc: str, tmp_path: Path, cache: Path) -> list[Block]:
    """Run one document's chain; returns the skipped blocks. A failing block fails the test with
    the block and the tail of its output."""
    work = checkout_like(tmp_path / "checkout")
    env = dict(os.environ)
    env.update(
        PATH=wrapped_path(tmp_path / "bin"),
        MOELIGHT_CACHE=str(cache),
        OMP_NUM_THREADS="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        COLUMNS="100",
    )
    skipped = []
    for block in doc_chain(ROOT, doc):
        if block.skip is not None:
            skipped.append(block)
            continue
        proc = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", without_install(block.text)],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,  # an interactive command (`moelight chat`) reads EOF and ends
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr)[-4000:]
            pytest.fail(
                f"{block.where}: exit status {proc.returncode}\n--- block\n{block.text}--- output (tail)\n{out}"
            )
    return skipped


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("docs-cache")


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_doc_commands_run_as_written(doc, tmp_path, shared_cache):
    skipped = run_chain(doc, tmp_path, shared_cache)
    for block in skipped:
        line = f"{block.where}: skipped ({block.skip}): {block.text.strip().splitlines()[0]}"
        print(line)
        warnings.warn(line, DocsBlockSkipped, stacklevel=1)


# ---- the extractor itself (fast) -----------------------------------------------------------


def test_every_doc_parses_and_every_skip_has_a_reason():
    total = 0
    for doc in DOCS:
        for block in doc_chain(ROOT, doc):
            total += 1
            assert block.text.strip(), f"{block.where}: empty shell block"
            assert block.skip is None or block.skip, f"{block.where}: skip marker without a reason"
    assert total > 10


MD = """# t

```bash
echo one
```

Text.
<!-- docs-test: skip (needs a GPU) -->

```sh
nvidia-smi
```

```
usage: not a command
```

```python
print("not shell")
```

~~~shell
echo two \\
  three
~~~
"""


def test_extractor_reads_shell_fences_markers_and_order():
    blocks = shell_blocks(MD, "t.md")
    assert [(b.line, b.skip) for b in blocks] == [(3, None), (10, "needs a GPU"), (22, None)]
    assert blocks[0].text == "echo one\n"
    assert blocks[2].text == "echo two \\\n  three\n"


@pytest.mark.parametrize(
    "md, message",
    [
        ("<!-- docs-test: skp (x) -->\n```bash\nls\n```\n", "unknown docs-test marker"),
        ("<!-- docs-test: skip -->\n```bash\nls\n```\n", "unknown docs-test marker"),
        ("<!-- docs-test: skip (x) -->\n\ntext\n\n```bash\nls\n```\n", "must stand just above a code fence"),
    ],
)
def test_a_misspelt_or_misplaced_marker_is_an_error(md, message):
    with pytest.raises(MarkerError, match=message):
        shell_blocks(md, "t.md")


def test_tiny_arguments_go_after_the_doc_command():
    argv = ["fit", "recipes/quickstart.yaml", "trainer.max_steps=50", "--optim.lr", "1e-3"]
    out = tiny_argv("moelight", argv)
    assert out[: len(argv)] == argv and "trainer.max_steps=4" in out[len(argv) :]
    assert tiny_argv("moelight", ["profile", "x"]) == ["profile", "x"]
    assert tiny_argv("moelight-lm-eval", ["--model", "moelight"])[-2:] == ["--limit", "2"]
    resumed = tiny_argv("moelight", ["fit", "r.yaml", "--resume", "last", "trainer.max_steps=400"])
    assert resumed[-1] == "trainer.max_steps=8"  # later wins: 4 more tiny steps


def test_the_install_step_is_dropped_and_the_rest_runs():
    readme_first = (
        "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e . && moelight fit\n"
    )
    assert without_install(readme_first) == "moelight fit\n"
    assert without_install("moelight fit && pip install x && y\n") == "moelight fit && pip install x && y\n"
    first = next(b for b in doc_chain(ROOT, "README.md") if b.skip is None)
    assert without_install(first.text).strip() == "moelight fit"  # the README's main job is run
