"""A fresh clone must run on its own: no tracked file may reach outside the repository for data."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# `../shared`, `../../shared/...`, `..\shared`: a path that leaves the repository for the old shared folder.
OUTSIDE = re.compile(r"\.\.[/\\]+(?:\.\.[/\\]+)*shared\b")


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = [ROOT / name for name in out.decode().split("\0") if name]
    this = Path(__file__).resolve()  # spells the forbidden paths on purpose
    binary = (".npy", ".png", ".safetensors", ".ckpt")
    return [f for f in files if f.is_file() and f.suffix not in binary and f.resolve() != this]


def test_no_tracked_file_refers_to_the_shared_folder():
    files = tracked_text_files()
    assert len(files) > 50  # the listing worked
    offenders = []
    for f in files:
        text = f.read_text(errors="replace")
        offenders += [
            f"{f.relative_to(ROOT)}:{n}"
            for n, line in enumerate(text.splitlines(), 1)
            if OUTSIDE.search(line)
        ]
    assert not offenders, f"references to ../shared: {offenders}"


def test_pattern_catches_the_old_spellings():
    for bad in ("../shared/data/c2r", "path: ../../shared/data/c2r/x.npy", "..\\shared"):
        assert OUTSIDE.search(bad)
    for fine in ("data/c2r-paper/x.npy", "shared_expert_ffn_hidden_size", "the shared expert"):
        assert not OUTSIDE.search(fine)


def test_paper_data_ships_with_its_readme():
    data = ROOT / "data" / "c2r-paper"
    readme = (data / "README.md").read_text()
    assert "UNITES-Lab/c2r-moe" in readme and "MIT" in readme
    expected = {
        "llama_moe_base_collaboration.npy": ((32, 8, 8), np.int64),
        "llama_moe_3.5b_2of8_collaborative_list.npy": ((32, 8, 8), np.int16),
        "qwen1.5_moe_a2.7b_collaborative_list.npy": ((24, 60, 60), np.int16),
    } | {f"llama_moe_topt_{t}_collaboration.npy": ((32, 8, 8), np.int64) for t in range(1, 7)}
    for name, (shape, dtype) in expected.items():
        assert f"`{name}`" in readme or name.startswith("llama_moe_topt_"), name
        arr = np.load(data / name)
        assert arr.shape == shape and arr.dtype == dtype, name
