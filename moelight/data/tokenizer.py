"""Tokenizers: the built-in byte tokenizer and a thin wrapper around a local Hugging Face one.

Both expose the same small surface (`encode`, `encode_bytes`, `decode`, `eos_id`, `vocab_size`,
`cache_identity`) so the corpus builder never needs to know which one it has.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from moelight.errors import ConfigError


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    name: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...

    def encode_bytes(self, data: bytes) -> np.ndarray: ...

    def decode(self, ids: Any) -> str: ...

    def cache_identity(self) -> str: ...


class ByteTokenizer:
    """Token id = byte value (0..255), plus BOS=256, EOS=257, PAD=258.

    `vocab_size` is 260: one id is left spare so the embedding table has an even size and a
    later special token does not change the model shape.
    """

    name = "bytes"
    BOS = 256
    EOS = 257
    PAD = 258
    VOCAB_SIZE = 260

    @property
    def vocab_size(self) -> int:
        return self.VOCAB_SIZE

    @property
    def bos_id(self) -> int:
        return self.BOS

    @property
    def eos_id(self) -> int:
        return self.EOS

    @property
    def pad_id(self) -> int:
        return self.PAD

    @property
    def padding_id(self) -> int:
        return self.PAD

    def encode(self, text: str) -> np.ndarray:
        """UTF-8 bytes of `text` as a uint16 array (no specials added)."""
        return self.encode_bytes(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> np.ndarray:
        # Raw bytes are already tokens: no decode/encode round trip, so any file works.
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: Any) -> str:
        """Bytes back to text; specials are dropped, invalid UTF-8 becomes U+FFFD."""
        arr = np.asarray(ids, dtype=np.int64).ravel()
        return bytes(arr[(arr >= 0) & (arr < 256)].astype(np.uint8)).decode("utf-8", errors="replace")

    def cache_identity(self) -> str:
        return "bytes-v1"

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=260)"


class HFTokenizer:
    """A local Hugging Face tokenizer directory, loaded without network access."""

    def __init__(self, path: str | Path, tokenizer: Any):
        self.path = Path(path)
        self.name = str(path)
        self._tok = tokenizer
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = tokenizer.sep_token_id
        if eos is None:
            raise ConfigError(
                "data.tokenizer",
                f"{path}: tokenizer has no eos (or sep) token to separate documents",
            )
        self._eos = int(eos)

    @property
    def vocab_size(self) -> int:
        # len() counts added tokens, which the base vocab_size attribute does not.
        return len(self._tok)

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int | None:
        return self._tok.pad_token_id

    @property
    def bos_id(self) -> int | None:
        return self._tok.bos_token_id

    @property
    def padding_id(self) -> int:
        """What padded rows are filled with: PAD, else UNK, else EOS (llama-moe's SFT script's rule)."""
        for candidate in (self._tok.pad_token_id, self._tok.unk_token_id):
            if candidate is not None:
                return int(candidate)
        return self._eos

    @property
    def hf_tokenizer(self) -> Any:
        return self._tok

    def encode(self, text: str) -> np.ndarray:
        # verbose=False: corpus documents are longer than model_max_length on purpose.
        ids = self._tok(text, add_special_tokens=False, return_attention_mask=False, verbose=False)
        return np.asarray(ids["input_ids"], dtype=np.int64)

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return self.encode(data.decode("utf-8", errors="replace"))

    def decode(self, ids: Any) -> str:
        return self._tok.decode(np.asarray(ids, dtype=np.int64).ravel().tolist())

    def cache_identity(self) -> str:
        # The files' names, sizes and mtimes: editing the tokenizer invalidates cached tokens.
        h = hashlib.sha256(str(self.path.resolve()).encode())
        for f in sorted(p for p in self.path.iterdir() if p.is_file()):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return f"hf-{type(self._tok).__name__}-{h.hexdigest()[:16]}"

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size})"


def load_tokenizer(spec: str) -> ByteTokenizer | HFTokenizer:
    """`"bytes"` -> ByteTokenizer; a local directory -> its Hugging Face tokenizer (offline)."""
    if spec == "bytes":
        return ByteTokenizer()
    path = Path(os.path.expanduser(spec))
    if not path.is_dir():
        raise ConfigError(
            "data.tokenizer",
            f"tokenizer directory not found: {path} (use 'bytes' or a local Hugging Face tokenizer directory)",
        )
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError(
            "data.tokenizer", "a Hugging Face tokenizer needs transformers: pip install 'moelight[hf]'"
        ) from None
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types (OSError, ValueError, ...)
        raise ConfigError("data.tokenizer", f"cannot load a tokenizer from {path}: {exc}") from None
    return HFTokenizer(path, tok)
