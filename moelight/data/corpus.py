"""Corpora: read documents, split them into train/validation, tokenise, cache the token arrays.

Sources
- ``embedded``: the running interpreter's standard-library source (``sysconfig`` "stdlib"
  path): every ``*.py`` file, sorted by relative path. Skipped: ``site-packages`` /
  ``dist-packages`` (third-party code), ``test`` / ``tests`` / ``idle_test`` directories (data
  and odd encodings), ``__pycache__``, hidden and ``config-*`` directories, and the
  machine-generated ``_sysconfigdata*`` modules. Everything else (idlelib, tkinter, ...) stays:
  the rule is short and deterministic for one Python build.
- a ``.txt`` (or any non-jsonl) file: one document.
- a ``.jsonl`` file: one document per record, the text in ``data.text_field``.
- a directory: every ``.txt`` / ``.md`` / ``.rst`` / ``.py`` file (one document each) and every
  ``.jsonl`` file (one document per record), recursively, sorted by relative path.

Split
Each document has a stable key (its relative path, or ``file:line`` for a jsonl record); it goes
to validation when ``sha256(key)`` read as a fraction in [0, 1) is below ``val_fraction``. The
decision depends on the key alone, so adding files never reshuffles the others. When that
leaves a split empty (a single file, very few records), the split falls back to position: the
last ``val_fraction`` of the token stream is validation. ``val_fraction: 0`` puts everything in
training (validation is then off, or read from ``data.val_source``).

Every document is followed by the tokenizer's EOS id; each split is one 1-D token array.

``max_bytes`` (counted in UTF-8 bytes before tokenising) keeps the first bytes of each split in
document order: validation gets ``ceil(max_bytes * val_fraction)`` bytes, training the rest
(the last document of a split is cut). With the position fallback it keeps the first
``max_bytes`` of the whole stream. Reading stops as soon as both budgets are spent.

Cache
Token arrays are saved as ``<cache>/tokens/<key>/{train,val}.npy`` plus ``meta.json``, where the
key hashes the source identity (file names, sizes and mtimes; the Python version for the
embedded corpus), the tokenizer identity, format, text field, ``val_fraction`` and
``max_bytes``. Each file is written to a temporary name and ``os.replace``-d into place, meta
last, so concurrent ranks never read a half-written cache. ``<cache>`` is ``data.cache_dir``,
else ``$MOELIGHT_CACHE``, else ``~/.cache/moelight``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import sysconfig
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moelight.errors import ConfigError, MoelightError

from .tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

if TYPE_CHECKING:
    from moelight.recipe import DataConfig

CACHE_VERSION = 1  # bump when the token layout or the split rule changes
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
JSONL_SUFFIXES = (".jsonl",)
EMBEDDED_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)
# Keys that mark a record as instruction data (a later issue: it needs a loss mask).
INSTRUCT_KEYS = frozenset({"instruction", "prompt", "response", "messages", "conversations"})

Tok = ByteTokenizer | HFTokenizer


@dataclass
class TokenSplit:
    """One split's token stream. `loss_mask` (same length, False = not a target) is reserved for
    instruction data; plain text leaves it None."""

    tokens: np.ndarray
    loss_mask: np.ndarray | None = None
    documents: int = 0
    bytes: int = 0


@dataclass
class Corpus:
    train: TokenSplit
    val: TokenSplit
    source: str  # human-readable description of where the text came from
    split: str  # "document" (hash of the key) or "position" (tail of the stream)
    cache_path: Path | None = None
    from_cache: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


# ---- sources ---------------------------------------------------------------------------


@dataclass
class Document:
    key: str  # stable id: decides the split
    read: Callable[[], bytes]


def embedded_files() -> list[tuple[str, Path]]:
    """The standard-library ``*.py`` files of the running interpreter, as (relative path, path),
    sorted by relative path (POSIX separators, so the order does not depend on the OS)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if d not in EMBEDDED_SKIP_DIRS and not d.startswith((".", "config-"))
        ]
        for name in filenames:
            if name.endswith(".py") and not name.startswith("_sysconfigdata"):
                path = Path(dirpath) / name
                out.append((path.relative_to(root).as_posix(), path))
    out.sort(key=lambda item: item[0])
    return out


def is_validation(key: str, val_fraction: float) -> bool:
    """Whether the document with this key belongs to validation (stable per key)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def _file_reader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def iter_jsonl(path: Path, field: str) -> Iterator[tuple[int, Any, int]]:
    """(line number, record, size in bytes) of each non-blank line of a .jsonl file; a line that
    is not valid JSON is a ConfigError for the recipe `field`."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(field, f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            except UnicodeDecodeError as exc:
                raise ConfigError(field, f"{path}:{lineno}: not UTF-8 text ({exc.reason})") from None
            yield lineno, record, len(raw)


def _jsonl_documents(path: Path, rel: str, text_field: str) -> list[Document]:
    docs: list[Document] = []
    for lineno, record, _ in iter_jsonl(path, "data.source"):
        if not isinstance(record, dict) or text_field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            if isinstance(record, dict) and INSTRUCT_KEYS & set(record):
                raise ConfigError(
                    "data.format",
                    f"{path}:{lineno}: looks like instruction data (keys {keys}); "
                    "set data.format: instruct to fine-tune on it (loss on responses only), "
                    "or data.text_field to read one field as plain text",
                )
            raise ConfigError(
                "data.source",
                f"{path}:{lineno}: record has no field {text_field!r} (data.text_field); got {keys}",
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise ConfigError(
                "data.source",
                f"{path}:{lineno}: field {text_field!r} is {type(text).__name__}, expected a string",
            )
        data = text.encode("utf-8")
        docs.append(Document(f"{rel}:{lineno}", lambda data=data: data))
    return docs


@dataclass
class Source:
    """Where documents come from: a description, an identity for the cache key, the documents."""

    description: str
    identity: dict[str, Any]
    documents: Callable[[], list[Document]]


def _stat_list(files: list[tuple[str, Path]]) -> list[list[Any]]:
    out = []
    for rel, path in files:
        st = path.stat()
        out.append([rel, st.st_size, st.st_mtime_ns])
    return out


def resolve_source(cfg: DataConfig) -> Source:
    """Find the documents named by `cfg.source` (reading nothing but directory listings yet)."""
    if cfg.format == "instruct":
        raise ConfigError(
            "data.format", "instruction data is read by moelight.data.instruct, not as a corpus"
        )
    if cfg.source == "embedded":
        files = embedded_files()
        if not files:
            raise MoelightError(f"no standard-library sources found under {sysconfig.get_paths()['stdlib']}")
        total = sum(p.stat().st_size for _, p in files)
        return Source(
            description=f"embedded: Python {sys.version.split()[0]} standard library ({len(files)} files)",
            identity={
                "kind": "embedded",
                "python": sys.version,
                "implementation": sys.implementation.name,
                "stdlib": sysconfig.get_paths()["stdlib"],
                "files": len(files),
                "bytes": total,
            },
            documents=lambda: [Document(rel, _file_reader(p)) for rel, p in files],
        )

    path = Path(os.path.expanduser(cfg.source))
    if not path.exists():
        raise ConfigError("data.source", f"data source not found: {path} (use 'embedded' or a local path)")

    def is_jsonl(p: Path) -> bool:
        return cfg.format == "jsonl" or (cfg.format == "auto" and p.suffix.lower() in JSONL_SUFFIXES)

    if path.is_file():
        if path.suffix.lower() == ".parquet":
            raise ConfigError(
                "data.source",
                f'{path}: parquet is not read; convert it to jsonl (one {{"text": ...}} per line)',
            )
        files = [(path.name, path)]
    else:
        files = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
            for name in filenames:
                p = Path(dirpath) / name
                suffix = p.suffix.lower()
                if suffix in TEXT_SUFFIXES or suffix in JSONL_SUFFIXES:
                    files.append((p.relative_to(path).as_posix(), p))
        files.sort(key=lambda item: item[0])
        if not files:
            raise ConfigError(
                "data.source",
                f"no {'/'.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} files found under {path}",
            )

    def documents() -> list[Document]:
        docs: list[Document] = []
        for rel, p in files:
            if is_jsonl(p):
                docs.extend(_jsonl_documents(p, rel, cfg.text_field))
            else:
                docs.append(Document(rel, _file_reader(p)))
        return docs

    kind = "file" if path.is_file() else "directory"
    return Source(
        description=f"{kind}: {path} ({len(files)} file{'s' if len(files) != 1 else ''})",
        identity={
            "kind": kind,
            "path": str(path.resolve()),
            "format": cfg.format,
            "text_field": cfg.text_field,
            "files": _stat_list(files),
        },
        documents=documents,
    )


# ---- tokenising ------------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def _encode(tok: Tok, data: bytes, dtype: np.dtype) -> np.ndarray:
    return np.asarray(tok.encode_bytes(data)).astype(dtype, copy=False)


def _tokenize(source: Source, tok: Tok, cfg: DataConfig) -> Corpus:
    docs = source.documents()
    dtype = token_dtype(tok.vocab_size)
    eos = np.array([tok.eos_id], dtype=dtype)
    val_flags = [is_validation(d.key, cfg.val_fraction) for d in docs]
    by_document = any(val_flags) and not all(val_flags)

    if by_document:
        if cfg.max_bytes is None:
            budget = {True: math.inf, False: math.inf}
        else:
            val_budget = max(1, math.ceil(cfg.max_bytes * cfg.val_fraction))
            budget = {True: val_budget, False: max(0, cfg.max_bytes - val_budget)}
        parts: dict[bool, list[np.ndarray]] = {True: [], False: []}
        ndocs = {True: 0, False: 0}
        nbytes = {True: 0, False: 0}
        for doc, is_val in zip(docs, val_flags, strict=True):
            if budget[True] <= 0 and budget[False] <= 0:
                break  # both splits full: skip reading the rest
            if budget[is_val] <= 0:
                continue
            data = doc.read()
            if len(data) > budget[is_val]:
                data = data[: int(budget[is_val])]
            budget[is_val] -= len(data)
            parts[is_val] += [_encode(tok, data, dtype), eos]
            ndocs[is_val] += 1
            nbytes[is_val] += len(data)
        train, val = (
            TokenSplit(
                tokens=np.concatenate(parts[v]) if parts[v] else np.zeros(0, dtype),
                documents=ndocs[v],
                bytes=nbytes[v],
            )
            for v in (False, True)
        )
    else:
        # Too few documents to split by key: the tail of the stream is validation.
        budget = math.inf if cfg.max_bytes is None else cfg.max_bytes
        chunks: list[np.ndarray] = []
        total = ndoc = 0
        for doc in docs:
            if budget <= 0:
                break
            data = doc.read()
            if len(data) > budget:
                data = data[: int(budget)]
            budget -= len(data)
            total += len(data)
            ndoc += 1
            chunks += [_encode(tok, data, dtype), eos]
        stream = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
        n_val = max(1, round(len(stream) * cfg.val_fraction)) if len(stream) > 1 else 0
        if cfg.val_fraction == 0:
            n_val = 0  # every token trains (validation off, or from data.val_source)
        cut = len(stream) - n_val
        vbytes = round(total * n_val / max(1, len(stream)))
        train = TokenSplit(tokens=stream[:cut], documents=ndoc, bytes=total - vbytes)
        val = TokenSplit(tokens=stream[cut:], documents=ndoc, bytes=vbytes)
    return Corpus(
        train=train, val=val, source=source.description, split="document" if by_document else "position"
    )


# ---- cache -----------------------------------------------------------------------------


def cache_root(cfg: DataConfig) -> Path:
    """`data.cache_dir`, else `$MOELIGHT_CACHE`, else `~/.cache/moelight`."""
    root = cfg.cache_dir or os.environ.get("MOELIGHT_CACHE") or "~/.cache/moelight"
    return Path(os.path.expanduser(root))


def cache_key(source: Source, tok: Tok, cfg: DataConfig) -> str:
    payload = {
        "version": CACHE_VERSION,
        "source": source.identity,
        "tokenizer": tok.cache_identity(),
        "val_fraction": cfg.val_fraction,
        "max_bytes": cfg.max_bytes,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as fh:
            write(fh)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    finally:
        tmp.unlink(missing_ok=True)


def _split_files(name: str) -> tuple[str, str]:
    return f"{name}.npy", f"{name}.mask.npy"


def _write_cache(directory: Path, corpus: Corpus) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"version": CACHE_VERSION, "source": corpus.source, "split": corpus.split}
    for name in ("train", "val"):
        split: TokenSplit = getattr(corpus, name)
        tok_file, mask_file = _split_files(name)
        _atomic_write(directory / tok_file, lambda fh, a=split.tokens: np.save(fh, np.ascontiguousarray(a)))
        if split.loss_mask is not None:
            _atomic_write(directory / mask_file, lambda fh, a=split.loss_mask: np.save(fh, a))
        meta[name] = {
            "tokens": int(len(split.tokens)),
            "documents": split.documents,
            "bytes": split.bytes,
            "mask": split.loss_mask is not None,
        }
    # meta.json last: its presence means the arrays are complete.
    _atomic_write(directory / "meta.json", lambda fh: fh.write(json.dumps(meta, indent=1).encode()))


def _read_cache(directory: Path) -> Corpus | None:
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSION:
            return None
        splits = {}
        for name in ("train", "val"):
            tok_file, mask_file = _split_files(name)
            # mmap: ranks and dataloader workers share the pages instead of copying the corpus.
            tokens = np.load(directory / tok_file, mmap_mode="r")
            if len(tokens) != meta[name]["tokens"]:
                return None
            mask = np.load(directory / mask_file, mmap_mode="r") if meta[name]["mask"] else None
            splits[name] = TokenSplit(tokens, mask, meta[name]["documents"], meta[name]["bytes"])
    except (OSError, ValueError, KeyError):
        return None  # unreadable or partial: rebuild
    return Corpus(
        train=splits["train"],
        val=splits["val"],
        source=meta["source"],
        split=meta["split"],
        cache_path=directory,
        from_cache=True,
        meta=meta,
    )


def build_corpus(cfg: DataConfig, tokenizer: Tok | None = None, use_cache: bool = True) -> Corpus:
    """Tokenised train/validation streams for `cfg`, from the cache when it has them."""
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    source = resolve_source(cfg)
    directory = cache_root(cfg) / "tokens" / cache_key(source, tok, cfg)
    if use_cache:
        cached = _read_cache(directory)
        if cached is not None:
            return cached
    corpus = _tokenize(source, tok, cfg)
    if use_cache:
        try:
            _write_cache(directory, corpus)
            corpus.cache_path = directory
        except OSError as exc:  # read-only home, full disk: train anyway, just uncached
            warnings.warn(f"moelight: cannot write the token cache under {directory}: {exc}", stacklevel=2)
    return corpus
