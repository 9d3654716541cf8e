"""`moelight convert`: what it reads and writes in directories (weights, recipe.yaml, tokenizer, C2R lists)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from moelight.checkpoint.file_mode import as_user_writes
from moelight.errors import MoelightError
from moelight.hf.architectures import get_architecture
from moelight.hf.byte_tokenizer import byte_token_ids, write_byte_tokenizer
from moelight.hf.checkpoint_dir import WEIGHTS_NAME
from moelight.hf.exporter import export_hf
from moelight.hf.importer import Imported, import_hf
from moelight.model.init_from import read_checkpoint
from moelight.recipe import load_recipe, validate_recipe

TOKENIZER_FILES = {
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
}
TOKENIZER_DIR = "tokenizer"
PROFILE_NAME = "collaborators.npy"


def tokenizer_files(directory: Path) -> list[Path]:
    """The tokenizer files of an HF directory (tokenizer.json, vocab, merges, chat template...)."""
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file()
        and (
            p.name.startswith("tokenizer") or p.name in TOKENIZER_FILES or p.suffix in (".tiktoken", ".model")
        )
    )


def _copy_files(files: list[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dest / f.name)


def _refuse_overwrite(out: Path, names: tuple[str, ...], force: bool) -> None:
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise MoelightError(f"{out} already holds {', '.join(existing)}; pass --force to overwrite")


@dataclass
class ImportResult:
    imported: Imported
    out_dir: Path
    recipe_path: Path
    weights_path: Path
    tokenizer: Path | None


def import_to_dir(
    hf_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None, force: bool = False
) -> ImportResult:
    """`moelight convert import`: DIR/model.safetensors (moelight names) + DIR/recipe.yaml (model
    section, `topk` router with the HF routing semantics, `model.init_from: model.safetensors`) and,
    when the HF directory has a tokenizer, DIR/tokenizer/ with `data.tokenizer` pointing at it."""
    out = Path(out_dir)
    _refuse_overwrite(out, (WEIGHTS_NAME, "recipe.yaml"), force)
    imported = import_hf(hf_dir)
    state = imported.state_dict
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_NAME
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(weights),
        metadata={
            "format": "pt",
            "moelight_source": str(Path(hf_dir).resolve()),
            "hf_arch": imported.arch.name,
        },
    )
    as_user_writes(weights)  # safetensors creates it 0600
    tok_files = tokenizer_files(Path(hf_dir))
    tok_dir = None
    if tok_files:
        tok_dir = out / TOKENIZER_DIR
        _copy_files(tok_files, tok_dir)

    model = imported.model.model_dump(mode="json") | {"init_from": WEIGHTS_NAME}
    recipe: dict[str, Any] = {"model": model, "router": imported.router}
    if imported.collaborators is not None:
        np.save(out / PROFILE_NAME, np.asarray(imported.collaborators, dtype=np.int16))
        recipe["profile"] = {"path": PROFILE_NAME}
    if tok_dir is not None:
        recipe["data"] = {"tokenizer": TOKENIZER_DIR}
    header = [
        f"# Imported by `moelight convert import` from {Path(hf_dir).resolve()} ({imported.arch.name}).",
        "# Relative paths are resolved against this file. Train from it with `moelight fit` and",
        "# overrides, or start another recipe from it with `extends: <this file>`.",
        "# The router reproduces the HF model's routing; switch it (e.g. router.name=c2r) to fine-tune.",
    ]
    header += [f"# NOTE: {n}" for n in imported.notes]
    recipe_path = out / "recipe.yaml"
    recipe_path.write_text("\n".join(header) + "\n" + yaml.safe_dump(recipe, sort_keys=False))
    load_recipe(recipe_path)  # what we wrote must load: a bug here should not reach the user's run
    return ImportResult(imported, out, recipe_path, weights, tok_dir)


def export_from_checkpoint(
    source: str | Path,
    out_dir: str | Path,
    arch: str,
    recipe_path: str | Path | None = None,
    dtype: torch.dtype | None = None,
    force: bool = False,
    replace_router: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[str]:
    """`moelight convert export`: a converted directory, .safetensors or Lightning .ckpt -> an HF
    directory (config.json + model.safetensors in the hub layout, plus the tokenizer if known).
    `replace_router` maps the checkpoint's router section to the one exported (`--router`)."""
    get_architecture(arch, "--arch")  # before reading a possibly large checkpoint
    out = Path(out_dir)
    _refuse_overwrite(out, ("config.json", WEIGHTS_NAME), force)
    state, recipe_dict = read_checkpoint(source)
    if recipe_path is not None:
        recipe = load_recipe(recipe_path)
    elif recipe_dict is not None:
        recipe = validate_recipe(recipe_dict)
    else:
        raise MoelightError(
            f"{source} carries no recipe: pass --recipe RECIPE (the recipe whose model section it was trained with)"
        )
    router = recipe.router if replace_router is None else replace_router(recipe.router)
    tok = recipe.data.tokenizer
    ids = byte_token_ids() if tok == "bytes" else None
    warnings = export_hf(state, recipe.model, router, arch, out, dtype, tokenizer_ids=ids)
    if tok != "bytes" and Path(tok).is_dir():
        _copy_files(tokenizer_files(Path(tok)), out)
    elif tok == "bytes":
        try:
            write_byte_tokenizer(out)
        except ImportError:
            warnings.append(
                "no tokenizer.json written: the byte tokenizer's export needs the tokenizers package "
                "(pip install 'moelight[hf]')"
            )
    return warnings
