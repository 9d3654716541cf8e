"""Data pipeline: tokenizers, corpora (embedded and local), cache, packing, sampler, resume."""

from __future__ import annotations

import itertools
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from moelight.data.corpus import build_corpus, embedded_files, is_validation
from moelight.data.datamodule import IGNORE_INDEX, GlobalBatchSampler, MoEDataModule, PackedDataset
from moelight.data.tokenizer import ByteTokenizer, load_tokenizer
from moelight.errors import ConfigError
from moelight.recipe import DataConfig

EOS = ByteTokenizer.EOS


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOELIGHT_CACHE", str(tmp_path / "cache"))


def _take(sampler: GlobalBatchSampler, steps: int, batch: int) -> list[list[int]]:
    it = iter(sampler)
    return [list(itertools.islice(it, batch)) for _ in range(steps)]


# ---- tokenizer -------------------------------------------------------------------------


def test_byte_tokenizer_round_trip():
    tok = load_tokenizer("bytes")
    assert isinstance(tok, ByteTokenizer)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (260, 256, 257, 258)
    text = "def f(x):\n    return 'héllo → 世界' 🙂\n"
    ids = tok.encode(text)
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(list(ids) + [EOS, ByteTokenizer.PAD]) == text  # specials are dropped
    assert tok.decode([0xFF, ord("a")]) == "\ufffda"  # invalid UTF-8 is replaced, not raised


def test_load_tokenizer_missing_dir(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_tokenizer(str(tmp_path / "nope"))
    assert err.value.field == "data.tokenizer"


def test_hf_tokenizer_directory(tmp_path):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["hello", "world", "moe", "experts", "</s>", "<unk>"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="<unk>").save_pretrained(
        tmp_path / "tok"
    )
    tok = load_tokenizer(str(tmp_path / "tok"))
    assert tok.vocab_size == 6 and tok.eos_id == 4
    assert tok.encode("hello moe experts").tolist() == [0, 2, 3]
    assert tok.decode([0, 1]) == "hello world"

    (tmp_path / "a.txt").write_text("hello world " * 50)
    c = build_corpus(DataConfig(source=str(tmp_path / "a.txt"), tokenizer=str(tmp_path / "tok")))
    stream = np.concatenate([c.train.tokens, c.val.tokens])
    assert stream.tolist() == [0, 1] * 50 + [4]


# ---- embedded corpus -------------------------------------------------------------------


def test_embedded_files_listing():
    files = embedded_files()
    rels = [r for r, _ in files]
    assert len(files) > 100 and rels == sorted(rels)
    assert "os.py" in rels and "json/decoder.py" in rels
    parts = {p for r in rels for p in r.split("/")[:-1]}
    assert not parts & {"site-packages", "test", "tests", "__pycache__"}


def test_embedded_corpus_small_is_deterministic_and_truncated():
    cfg = DataConfig(max_bytes=200_000, val_fraction=0.05)
    a = build_corpus(cfg, use_cache=False)
    b = build_corpus(cfg, use_cache=False)
    assert np.array_equal(a.train.tokens, b.train.tokens) and np.array_equal(a.val.tokens, b.val.tokens)
    assert a.split == "document" and a.train.tokens.dtype == np.uint16
    assert a.val.bytes == 10_000 and a.train.bytes == 190_000  # val gets ceil(max_bytes * val_fraction)
    assert len(a.train.tokens) == a.train.bytes + a.train.documents  # one EOS per document


def test_embedded_corpus_full_split_by_file():
    """The whole stdlib corpus: val/train are exactly the files chosen by the key hash."""
    t0 = time.perf_counter()
    c = build_corpus(DataConfig(), use_cache=False)
    elapsed = time.perf_counter() - t0
    print(f"full embedded corpus: {len(c.train.tokens) + len(c.val.tokens):,} tokens in {elapsed:.2f}s")
    files = embedded_files()
    expected: dict[bool, list[np.ndarray]] = {False: [], True: []}
    for rel, path in files:
        doc = np.frombuffer(path.read_bytes(), np.uint8).astype(np.uint16)
        expected[is_validation(rel, 0.02)] += [doc, np.array([EOS], np.uint16)]
    for is_val, split in ((False, c.train), (True, c.val)):
        assert np.array_equal(split.tokens, np.concatenate(expected[is_val]))
        assert split.documents == len(expected[is_val]) // 2
    assert c.val.documents > 0 and c.train.documents + c.val.documents == len(files)
    assert elapsed < 5, f"full embedded tokenisation took {elapsed:.1f}s"


def test_split_is_stable_when_files_are_added(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    for i in range(40):
        (d / f"f{i:02d}.txt").write_text(f"document {i}\n" * 5)
    cfg = DataConfig(source=str(d), val_fraction=0.2)
    before = build_corpus(cfg)
    for i in range(40, 60):
        (d / f"f{i:02d}.txt").write_text(f"document {i}\n" * 5)
    after = build_corpus(cfg)
    assert not after.from_cache  # the listing changed, so the cache key did
    old_val = {f"f{i:02d}.txt" for i in range(40) if is_validation(f"f{i:02d}.txt", 0.2)}
    new_val = {f"f{i:02d}.txt" for i in range(60) if is_validation(f"f{i:02d}.txt", 0.2)}
    assert old_val <= new_val and before.val.documents == len(old_val) and after.val.documents == len(new_val)


# ---- cache -----------------------------------------------------------------------------


def test_cache_hit_skips_tokenising(monkeypatch, tmp_path):
    cfg = DataConfig(max_bytes=50_000)
    first = build_corpus(cfg)
    assert not first.from_cache and (first.cache_path / "meta.json").is_file()

    def fail(self, data):
        raise AssertionError("tokenised again instead of reading the cache")

    monkeypatch.setattr(ByteTokenizer, "encode_bytes", fail)
    second = build_corpus(cfg)
    assert second.from_cache and second.cache_path == first.cache_path
    assert np.array_equal(first.train.tokens, second.train.tokens)
    assert np.array_equal(first.val.tokens, second.val.tokens)
    # Other settings are other keys; an explicit cache_dir wins over $MOELIGHT_CACHE.
    with pytest.raises(AssertionError, match="tokenised again"):
        build_corpus(DataConfig(max_bytes=60_000))
    with pytest.raises(AssertionError, match="tokenised again"):
        build_corpus(DataConfig(max_bytes=50_000, cache_dir=str(tmp_path / "other")))
    assert not list(tmp_path.glob("cache/tokens/*/.*.tmp"))  # no temporary files left behind


# ---- local sources ---------------------------------------------------------------------


def test_local_text_file_splits_by_position(tmp_path):
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(200))
    (tmp_path / "a.txt").write_text(text)
    c = build_corpus(DataConfig(source=str(tmp_path / "a.txt"), val_fraction=0.1))
    assert c.split == "position"
    stream = np.concatenate([c.train.tokens, c.val.tokens])
    assert stream.tolist() == list(text.encode()) + [EOS]
    assert len(c.val.tokens) == round(len(stream) * 0.1)


def test_local_directory(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / ".hidden").mkdir()
    names = {
        "a.txt": "alpha\n",
        "b.md": "# beta\n",
        "sub/c.py": "x = 1\n",
        "skip.bin": "no",
        ".hidden/h.txt": "no",
    }
    for rel, text in names.items():
        (d / rel).write_text(text * 20)
    # Pick a val_fraction that puts some (not all) of the three documents in validation.
    keys = ["a.txt", "b.md", "sub/c.py"]
    vf = next(f for f in np.linspace(0.05, 0.95, 19) if 0 < sum(is_validation(k, f) for k in keys) < 3)
    c = build_corpus(DataConfig(source=str(d), val_fraction=float(vf)))
    assert c.split == "document" and c.train.documents + c.val.documents == 3
    tok = ByteTokenizer()
    val_text = "".join(names[k] * 20 for k in keys if is_validation(k, vf))
    assert tok.decode(c.val.tokens) == val_text


def test_local_jsonl(tmp_path):
    p = tmp_path / "data.jsonl"
    rows = [{"body": f"record number {i}", "id": i} for i in range(50)]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    c = build_corpus(DataConfig(source=str(p), text_field="body", val_fraction=0.2))
    assert c.split == "document" and c.train.documents + c.val.documents == 50
    want = [r["body"] for i, r in enumerate(rows) if not is_validation(f"data.jsonl:{i + 1}", 0.2)]
    pieces = np.split(c.train.tokens, np.flatnonzero(c.train.tokens == EOS) + 1)
    assert [ByteTokenizer().decode(x) for x in pieces if len(x)] == want


def test_missing_source_and_field(tmp_path):
    with pytest.raises(ConfigError) as err:
        build_corpus(DataConfig(source=str(tmp_path / "missing.txt")))
    assert err.value.field == "data.source" and "not found" in str(err.value)
    assert "missing.txt" in str(err.value)

    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n{"content": "no text field"}\n')
    with pytest.raises(ConfigError) as err:
        build_corpus(DataConfig(source=str(p)))
    assert err.value.field == "data.source" and "bad.jsonl:2" in str(err.value)

    p.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        build_corpus(DataConfig(source=str(p)))

    p.write_text('{"prompt": "q", "response": "a"}\n')
    with pytest.raises(ConfigError) as err:
        build_corpus(DataConfig(source=str(p)))
    assert err.value.field == "data.format"

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no .*files found"):
        build_corpus(DataConfig(source=str(empty)))


# ---- packing ---------------------------------------------------------------------------


def test_packing_matches_slicing():
    cfg = DataConfig(max_bytes=100_000, seq_len=32, batch_size=4)
    dm = MoEDataModule(cfg, seed=3)
    tokens = np.asarray(dm.corpus.train.tokens, dtype=np.int64)
    ds = dm.train_dataset
    assert len(ds) == (len(tokens) - 1) // 32
    for i in (0, 1, len(ds) - 1):
        x, y = ds[i]
        assert torch.equal(x, torch.from_numpy(tokens[i * 32 : i * 32 + 32]))
        assert torch.equal(y, torch.from_numpy(tokens[i * 32 + 1 : i * 32 + 33]))

    sampler = dm.train_sampler()
    first = list(itertools.islice(iter(sampler), 4))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.long
    for row, idx in enumerate(first):
        a = idx * 32
        assert torch.equal(x[row], torch.from_numpy(tokens[a : a + 32]))
        assert torch.equal(y[row], torch.from_numpy(tokens[a + 1 : a + 33]))


def test_loss_mask_gives_ignore_index():
    tokens = np.arange(9, dtype=np.uint16)
    mask = np.array([1, 1, 0, 0, 1, 1, 1, 0, 1], dtype=bool)
    x, y = PackedDataset(tokens, 4, mask)[0]
    assert x.tolist() == [0, 1, 2, 3] and y.tolist() == [1, IGNORE_INDEX, IGNORE_INDEX, 4]


# ---- sampler ---------------------------------------------------------------------------


@pytest.mark.parametrize("world", [2, 3])
def test_sampler_ranks_concatenate_to_single_process_batch(world):
    n, B, steps = 11, 3, 20  # several epochs, batches straddling epoch boundaries
    single = _take(GlobalBatchSampler(n, B * world, world_size=1, seed=7), steps, B * world)
    per_rank = [_take(GlobalBatchSampler(n, B, world, r, seed=7), steps, B) for r in range(world)]
    for s in range(steps):
        assert sum((per_rank[r][s] for r in range(world)), []) == single[s]
    # Each epoch is a permutation of all samples, and epochs differ.
    flat = sum(single, [])
    assert sorted(flat[:n]) == list(range(n)) and sorted(flat[n : 2 * n]) == list(range(n))
    assert flat[:n] != flat[n : 2 * n]


def test_sampler_restart_continues_exactly():
    n, B, W = 13, 2, 2
    full = [_take(GlobalBatchSampler(n, B, W, r, seed=1), 30, B) for r in range(W)]
    k = 17
    for r in range(W):
        resumed = _take(GlobalBatchSampler(n, B, W, r, seed=1, start=k * B * W), 13, B)
        assert resumed == full[r][k:]
    # Resuming on one rank with the global batch continues the same global stream.
    single = _take(GlobalBatchSampler(n, B * W, 1, 0, seed=1, start=k * B * W), 13, B * W)
    assert single == [full[0][s] + full[1][s] for s in range(k, 30)]


def test_datamodule_state_dict_round_trip():
    cfg = DataConfig(max_bytes=60_000, seq_len=16, batch_size=2)
    dm = MoEDataModule(cfg, seed=5)
    dm.trainer = SimpleNamespace(global_step=7, world_size=2, global_rank=1, accumulate_grad_batches=3)
    state = dm.state_dict()
    assert state == {"samples_seen": 7 * 2 * 2 * 3}

    fresh = MoEDataModule(cfg, seed=5)
    fresh.trainer = SimpleNamespace(global_step=0, world_size=2, global_rank=1, accumulate_grad_batches=3)
    fresh.load_state_dict(state)
    resumed = fresh.train_dataloader()
    reference = _take(GlobalBatchSampler(len(dm.train_dataset), 2, 2, 1, seed=5), 7 * 3 + 2, 2)
    ds = fresh.train_dataset
    for want, (x, _) in zip(reference[7 * 3 :], resumed, strict=False):
        assert torch.equal(x, torch.stack([ds[i][0] for i in want]))


def test_val_loader_shards_are_disjoint_and_equal():
    cfg = DataConfig(max_bytes=200_000, val_fraction=0.05, seq_len=16, batch_size=8)
    seen = []
    for rank in range(3):
        dm = MoEDataModule(cfg)
        dm.trainer = SimpleNamespace(world_size=3, global_rank=rank)
        seen.append([tuple(x.flatten().tolist()) for x, _ in dm.val_dataloader()])
    assert len(seen[0]) > 0 and all(len(s) == len(seen[0]) for s in seen)
    assert set(seen[0]).isdisjoint(seen[1]) and set(seen[1]).isdisjoint(seen[2])
    assert set(seen[0]).isdisjoint(seen[2]) and "sequences of 16" in dm.describe()


def test_too_small_corpus_is_a_config_error(tmp_path):
    (tmp_path / "tiny.txt").write_text("abc")
    with pytest.raises(ConfigError) as err:
        MoEDataModule(DataConfig(source=str(tmp_path / "tiny.txt"), seq_len=64)).setup("fit")
    assert err.value.field == "data.source"


# ---- with a real Trainer ---------------------------------------------------------------


def test_lightning_fit_and_resume(tmp_path):
    """Lightning keeps our sampler, the endless loader works, and a resumed run sees the
    same batches as an uninterrupted one."""
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(260, 4)
            self.seen: list[torch.Tensor] = []
            self.val_batches = 0

        def training_step(self, batch, _):
            x, y = batch
            self.seen.append(x[:, 0].clone())
            return self.emb(x).mean()

        def validation_step(self, batch, _):
            self.val_batches += 1
            return self.emb(batch[0]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cfg = DataConfig(max_bytes=80_000, seq_len=16, batch_size=4)
    kw = dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=3,
        limit_val_batches=2,
        check_val_every_n_epoch=None,
    )

    full = Module()
    L.Trainer(max_steps=6, enable_checkpointing=False, **kw).fit(full, datamodule=MoEDataModule(cfg, seed=2))

    first = Module()
    t1 = L.Trainer(max_steps=3, default_root_dir=tmp_path, enable_checkpointing=False, **kw)
    t1.fit(first, datamodule=MoEDataModule(cfg, seed=2))
    ckpt = tmp_path / "step3.ckpt"
    t1.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=False)["MoEDataModule"] == {"samples_seen": 12}

    second = Module()
    t2 = L.Trainer(max_steps=6, default_root_dir=tmp_path, enable_checkpointing=False, **kw)
    t2.fit(second, datamodule=MoEDataModule(cfg, seed=2), ckpt_path=ckpt)
    assert full.val_batches == 2 + 2 * 2  # sanity check, then steps 3 and 6: two batches each
    got = [t.tolist() for t in first.seen + second.seen]
    assert got == [t.tolist() for t in full.seen]
