"""moelight's byte tokenizer as a Hugging Face tokenizer (tokenizer.json + tokenizer_config.json),
so an exported byte-level model runs with `AutoTokenizer` + `AutoModelForCausalLM.generate`.

Ids are moelight's: byte b is id b (a byte-level BPE with no merges, each byte spelled with the
GPT-2 byte-to-character table), then BOS 256, EOS 257, PAD 258 as special tokens; no BOS is added
when encoding (moelight's corpus has none; documents are separated by EOS).
"""

from __future__ import annotations

import json
from pathlib import Path

from moelight.data.tokenizer import ByteTokenizer

SPECIALS = {"<|bos|>": ByteTokenizer.BOS, "<|eos|>": ByteTokenizer.EOS, "<|pad|>": ByteTokenizer.PAD}


def byte_characters() -> list[str]:
    """GPT-2's table: the character that spells each byte in a byte-level BPE vocabulary."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_byte_tokenizer(out_dir: str | Path) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; returns the paths."""
    # tokenizers comes with transformers (moelight[hf]); only the export of a byte model needs it
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: b for b, c in enumerate(byte_characters())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    # Added in id order: they get 256, 257, 258 after the 256 byte ids.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    assert [tok.token_to_id(t) for t in SPECIALS] == list(SPECIALS.values())
    out = Path(out_dir)
    tok.save(str(out / "tokenizer.json"))
    bos, eos, pad = SPECIALS
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": bos, "eos_token": eos, "pad_token": pad}, indent=2) + "\n"
    )
    return [out / "tokenizer.json", out / "tokenizer_config.json", out / "special_tokens_map.json"]


def byte_token_ids() -> dict[str, int]:
    """config.json / generation_config.json fields of a byte-level export."""
    return {
        "bos_token_id": ByteTokenizer.BOS,
        "eos_token_id": ByteTokenizer.EOS,
        "pad_token_id": ByteTokenizer.PAD,
    }
