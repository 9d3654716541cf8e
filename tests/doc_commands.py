"""The shell command chains of the project's Markdown docs, as tests/test_docs_run.py runs them.

A *block* is a fenced code block labelled `bash`, `sh` or `shell`; the blocks of one document, in
order, are its *chain* (later blocks use what earlier ones wrote, as a reader following the page
does). Unlabelled fences (usage synopses, output) are not commands.

A block the test cannot run here (it installs packages, needs a GPU, a downloaded model, a
package that is not a dependency, or runs for many minutes) carries a visible marker on the
line(s) just above its fence:

    <!-- docs-test: skip (needs a GPU) -->

The reason in parentheses is required; every skipped block is reported. Any other
`docs-test:` comment is an error, so a typo cannot silently skip a block.

A block that starts with the README's install step (`python3 -m venv .venv && . .venv/bin/activate
&& pip install ... &&`) runs without it: the test already runs inside the installed environment,
so what follows the install (the README's first command: `moelight fit`) is still run as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
SHELL = {"bash", "sh", "shell"}
# A marker is an HTML comment on its own line (a mention inside prose or backticks is not one).
MARKER = re.compile(r"^\s*<!--\s*docs-test:(.*?)-->\s*$")
SKIP = re.compile(r"^\s*skip\s*\((.+)\)\s*$")
INSTALL = re.compile(r"^python3 -m venv \.venv && \. \.venv/bin/activate && pip install [^&]*&&\s*")


def without_install(text: str) -> str:
    """`text` without a leading install step (see the module docstring)."""
    return INSTALL.sub("", text, count=1)


@dataclass(frozen=True)
class Block:
    doc: str  # the document's path, relative to the repository
    line: int  # 1-based line of the opening fence
    text: str  # the commands
    skip: str | None  # the reason, when marked to skip

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


class MarkerError(ValueError):
    pass


def _marker_above(lines: list[str], fence: int, where: str) -> str | None:
    """The skip reason of the marker on the non-blank lines directly above line index `fence`."""
    i = fence - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    if i < 0:
        return None
    match = MARKER.match(lines[i])
    if match is None:
        return None
    skip = SKIP.match(match.group(1))
    if skip is None:
        raise MarkerError(
            f"{where}: unknown docs-test marker {match.group(0)!r}; write <!-- docs-test: skip (reason) -->"
        )
    return skip.group(1).strip()


def shell_blocks(text: str, doc: str) -> list[Block]:
    """The shell blocks of one Markdown text, in order, with their skip markers."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            if MARKER.match(lines[i]) and not _next_is_fence(lines, i):
                raise MarkerError(f"{doc}:{i + 1}: a docs-test marker must stand just above a code fence")
            i += 1
            continue
        fence, lang, start = m.group(2), m.group(3).lower(), i
        i += 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if lang in SHELL:
            where = f"{doc}:{start + 1}"
            blocks.append(Block(doc, start + 1, "\n".join(body) + "\n", _marker_above(lines, start, where)))
    return blocks


def _next_is_fence(lines: list[str], i: int) -> bool:
    j = i + 1
    while j < len(lines) and not lines[j].strip():
        j += 1
    return j < len(lines) and FENCE.match(lines[j]) is not None


def doc_chain(root: Path, doc: str) -> list[Block]:
    return shell_blocks((root / doc).read_text(encoding="utf-8"), doc)
