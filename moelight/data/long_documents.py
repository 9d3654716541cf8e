"""Fixed-length rows from the start of long documents: the C2R paper's profiling input.

The paper's `profiling.py` (UNITES-Lab/c2r-moe) samples 200 long LongBench contexts and runs the
first 1024 tokens of each through the model (`tokenizer(..., truncation=True, max_length=1024)`).
`long_document_rows` does the same over any local text/jsonl corpus: documents read as the data
section reads them (one per text file, one per jsonl record), tokenised, those with at least
`tokens_per_doc` tokens kept, `docs` of them sampled with a seeded `random.Random` (all of them,
in corpus order, when exactly `docs` qualify), each cut to its first `tokens_per_doc` tokens.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np
import torch

from moelight.errors import MoelightError

from .corpus import resolve_source
from .tokenizer import ByteTokenizer, HFTokenizer

if TYPE_CHECKING:
    from moelight.recipe import DataConfig


def long_document_rows(
    cfg: DataConfig, tokenizer: ByteTokenizer | HFTokenizer, docs: int, tokens_per_doc: int, seed: int
) -> torch.Tensor:
    """[docs, tokens_per_doc] token ids: the first `tokens_per_doc` tokens of `docs` sampled
    documents of `cfg.source` that are at least that long."""
    if cfg.format == "instruct":
        raise MoelightError("--docs profiles a text/jsonl corpus of documents, not instruction data")
    source = resolve_source(cfg)
    long_enough: list[np.ndarray] = []
    total = 0
    for doc in source.documents():
        total += 1
        ids = np.asarray(tokenizer.encode_bytes(doc.read()))
        if len(ids) >= tokens_per_doc:
            long_enough.append(ids[:tokens_per_doc].astype(np.int64))
    if len(long_enough) < docs:
        raise MoelightError(
            f"--docs {docs} --tokens-per-doc {tokens_per_doc}: {source.description} has "
            f"{len(long_enough)} of {total} documents with at least {tokens_per_doc} tokens; "
            "lower --docs or --tokens-per-doc"
        )
    if len(long_enough) > docs:
        long_enough = random.Random(seed).sample(long_enough, docs)
    return torch.from_numpy(np.stack(long_enough))
