"""The Lightning data module: packed fixed-length sequences, a resumable global-batch sampler.

Packing. Sequence i is ``tokens[i*L : i*L + L + 1]`` (L = ``seq_len``): input ``[:-1]``,
target ``[1:]``. Inputs never overlap and every token after the first is a target exactly once;
neighbouring sequences share only the boundary token (last target of i = first input of i+1).
Targets the loss must skip (a loss mask, for instruction data later) are -100.

Unpacked instruction data (``data.packing: false``): one conversation per row, right-padded
(inputs with the tokenizer's padding id, targets -100). Attention is causal, so a row's tokens
never see its padding, and no row sees another conversation; the padding carries no loss.
Batches are cut to their longest row (``data.padding: longest``) or kept at ``seq_len``
(``max_length``, as llama-moe's SFT script pads); padding tokens still pass the routers, as in the
official scripts.

Training order. Epoch e is ``torch.randperm(n, generator seeded with seed + e)`` over the n
training sequences; the epochs are concatenated into one endless stream. The global batch at
step s is stream positions ``[s*B*W, (s+1)*B*W)`` (B = ``batch_size`` per rank, W =
data-parallel world size) and rank r takes ``[r*B, (r+1)*B)`` of it, so W ranks see exactly the
global batches of one process with batch B*W. The stream position survives checkpoints
(``state_dict``), so a resumed run continues with the next unseen batch, even on a different W.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from moelight.errors import ConfigError

from .corpus import Corpus, TokenSplit, build_corpus
from .instruct import IGNORE_INDEX, PaddedDataset, build_instruct_corpus
from .tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

if TYPE_CHECKING:
    from moelight.recipe import DataConfig


class PackedDataset(Dataset):
    """Fixed-length (input, target) pairs cut from one token stream; see the module docstring."""

    def __init__(self, tokens: np.ndarray, seq_len: int, loss_mask: np.ndarray | None = None):
        if loss_mask is not None and len(loss_mask) != len(tokens):
            raise ValueError("loss_mask must have one entry per token")
        self.tokens = tokens
        self.loss_mask = loss_mask
        self.seq_len = seq_len

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.seq_len)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        a = i * self.seq_len
        chunk = torch.from_numpy(np.array(self.tokens[a : a + self.seq_len + 1], dtype=np.int64))
        inputs, targets = chunk[:-1], chunk[1:].clone()
        if self.loss_mask is not None:
            keep = torch.from_numpy(np.array(self.loss_mask[a + 1 : a + self.seq_len + 1], dtype=bool))
            targets[~keep] = IGNORE_INDEX
        return inputs, targets


def trim_to_longest(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack padded rows and drop the columns after the last position any row still uses
    (the last non-padding target): the computation of every real token is unchanged."""
    inputs = torch.stack([r[0] for r in rows])
    targets = torch.stack([r[1] for r in rows])
    used = (targets != IGNORE_INDEX).any(0).nonzero()
    width = int(used[-1]) + 1 if len(used) else 1
    return inputs[:, :width], targets[:, :width]


class GlobalBatchSampler(DistributedSampler):
    """Endless per-rank index stream: rank r's b-th batch is global stream positions
    ``start + b*B*W + r*B + [0, B)``; epoch e of the stream is a permutation seeded by seed + e.

    Subclasses DistributedSampler only so Lightning does not replace it with its own; it has no
    length (Lightning then treats the epoch as endless and ``max_steps`` ends training).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        start: int = 0,
    ):
        if num_samples <= 0:
            raise ValueError("GlobalBatchSampler needs at least one sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        super().__init__(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.n = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.start = start

    def permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        B, W = self.batch_size, self.world_size
        pos = self.start + self.rank * B
        cached_epoch, perm = -1, []
        while True:
            for p in range(pos, pos + B):
                epoch, i = divmod(p, self.n)
                if epoch != cached_epoch:
                    cached_epoch, perm = epoch, self.permutation(epoch)
                yield perm[i]
            pos += B * W

    def __len__(self) -> int:
        raise TypeError("GlobalBatchSampler is endless")

    def set_epoch(self, epoch: int) -> None:
        # Lightning calls this each epoch; the stream position alone decides the order.
        pass


class MoEDataModule(L.LightningDataModule):
    """Data for `moelight fit`: built from the recipe's `data` section and its seed."""

    def __init__(self, config: DataConfig, seed: int = 0):
        super().__init__()
        self.config = config
        self.seed = seed
        # Cheap (no corpus read): the model needs vocab_size before any data is loaded.
        self.tokenizer: ByteTokenizer | HFTokenizer = load_tokenizer(config.tokenizer)
        self._corpus: Corpus | None = None
        self._train: Dataset | None = None
        self._val: Dataset | None = None
        self._start_samples = 0  # global stream position to resume from

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def corpus(self) -> Corpus:
        self._load()
        assert self._corpus is not None
        return self._corpus

    @property
    def train_dataset(self) -> Dataset:
        self._load()
        assert self._train is not None
        return self._train

    @property
    def val_dataset(self) -> Dataset:
        self._load()
        assert self._val is not None
        return self._val

    # ---- building ------------------------------------------------------------------

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node before setup(): it fills the token cache
        # so the other ranks only read it.
        self._load()

    def setup(self, stage: str | None = None) -> None:
        self._load()

    def _load(self) -> None:
        if self._corpus is not None:
            return
        cfg = self.config
        corpus = self._build(cfg)
        if cfg.val_source is not None:
            # All of val_source is validation: read it as a corpus with nothing held out and use
            # its training side.
            held = self._build(cfg.model_copy(update={"source": cfg.val_source}))
            corpus.val = held.train
            corpus.meta["val_examples"] = held.meta.get("train_examples", [])
        train, val = self._datasets(corpus)
        need = cfg.seq_len + 1
        if len(train) == 0:
            raise ConfigError(
                "data.source",
                f"the training split has {len(corpus.train.tokens)} tokens, fewer than one sequence "
                f"(data.seq_len + 1 = {need}); lower data.seq_len or raise data.max_bytes",
            )
        if len(val) == 0 and cfg.val_source is not None:
            raise ConfigError(
                "data.val_source",
                f"{cfg.val_source} has {len(corpus.val.tokens)} tokens, fewer than one sequence "
                f"(data.seq_len + 1 = {need})",
            )
        if len(val) == 0 and cfg.has_validation:
            raise ConfigError(
                "data.val_fraction",
                f"the validation split has {len(corpus.val.tokens)} tokens, fewer than one sequence "
                f"(data.seq_len + 1 = {need}); raise data.val_fraction or data.max_bytes",
            )
        self._corpus, self._train, self._val = corpus, train, val

    def _build(self, cfg: DataConfig) -> Corpus:
        if cfg.format == "instruct":
            return build_instruct_corpus(cfg, self.tokenizer)
        return build_corpus(cfg, self.tokenizer)

    def _packed(self, split: TokenSplit) -> PackedDataset:
        return PackedDataset(split.tokens, self.config.seq_len, split.loss_mask)

    def _datasets(self, corpus: Corpus) -> tuple[Dataset, Dataset]:
        cfg = self.config
        if cfg.packing:
            return self._packed(corpus.train), self._packed(corpus.val)
        if cfg.format != "instruct":
            raise ConfigError(
                "data.packing", "packing: false needs data.format: instruct (one conversation per row)"
            )
        pad = self.tokenizer.padding_id
        return tuple(
            PaddedDataset(corpus.meta[name], cfg.seq_len, pad_id=pad)
            for name in ("train_examples", "val_examples")
        )

    def _data_parallel(self) -> tuple[int, int]:
        """(world size, rank) of data parallelism: every rank reads its own samples."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    # ---- loaders -------------------------------------------------------------------

    def train_sampler(
        self, world_size: int = 1, rank: int = 0, start: int | None = None
    ) -> GlobalBatchSampler:
        return GlobalBatchSampler(
            len(self.train_dataset),
            self.config.batch_size,
            world_size=world_size,
            rank=rank,
            seed=self.seed,
            start=self._start_samples if start is None else start,
        )

    def _loader(self, dataset: Dataset, sampler: DistributedSampler) -> DataLoader:
        workers = self.config.num_workers
        trim = not self.config.packing and self.config.padding == "longest"
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            sampler=sampler,
            collate_fn=trim_to_longest if trim else None,
            drop_last=False,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        world_size, rank = self._data_parallel()
        return self._loader(self.train_dataset, self.train_sampler(world_size, rank))

    def val_dataloader(self) -> DataLoader:
        world_size, rank = self._data_parallel()
        if not self.config.has_validation:
            raise ConfigError(
                "data.val_fraction",
                "there is no validation data (data.val_fraction: 0 and no data.val_source); "
                "set data.val_source=PATH or data.val_fraction > 0",
            )
        val = self.val_dataset
        if len(val) < world_size:
            raise ConfigError(
                "data.val_fraction",
                f"the validation split has {len(val)} sequences, fewer than the {world_size} ranks",
            )
        # Sequential, disjoint per rank, and the same count on every rank (drop_last): expert
        # parallelism runs collectives in the forward pass, so ranks must see equal batches.
        sampler = DistributedSampler(val, num_replicas=world_size, rank=rank, shuffle=False, drop_last=True)
        return self._loader(val, sampler)

    # ---- resume --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Saved in Lightning checkpoints: how far the training stream has been consumed."""
        trainer = self.trainer
        if trainer is None:
            return {"samples_seen": self._start_samples}
        per_step = self.config.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        return {"samples_seen": int(trainer.global_step) * per_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied by the next train_dataloader(): Lightning restores before building loaders.
        self._start_samples = int(state_dict.get("samples_seen", 0))

    # ---- reporting -----------------------------------------------------------------

    def describe(self) -> str:
        """A few lines for the CLI: source, tokenizer, tokens and sequences per split."""
        corpus, train, val = self.corpus, self.train_dataset, self.val_dataset
        L_ = self.config.seq_len

        def split_line(name: str, split: TokenSplit, ds: Dataset) -> str:
            docs = f"{split.documents:,} docs, " if corpus.split == "document" else ""
            rows = f"{len(ds):,} sequences of {L_}" if self.config.packing else f"{len(ds):,} rows of <= {L_}"
            return f"  {name}: {docs}{len(split.tokens):,} tokens -> {rows}"

        tok = self.tokenizer
        tok_name = "bytes" if isinstance(tok, ByteTokenizer) else tok.name
        cache = "none"
        if corpus.cache_path is not None:
            cache = f"{'hit' if corpus.from_cache else 'written'} {corpus.cache_path}"
        return "\n".join(
            [
                f"data: {corpus.source}; tokenizer {tok_name} (vocab {tok.vocab_size}); "
                f"split by {corpus.split}",
                split_line("train", corpus.train, train),
                split_line("val", corpus.val, val)
                if self.config.has_validation
                else "  val: none (data.val_fraction: 0, no data.val_source)",
                f"  cache: {cache}",
            ]
        )
