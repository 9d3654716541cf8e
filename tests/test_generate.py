"""`moelight generate` / `moelight chat`: the KV cache computes what the full forward computes, for
every checkpoint kind moelight writes or imports; sampling is seeded; stop strings end the text."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from random_checkpoint import ROOT, TINY_MODEL, save_random_checkpoint
from torch import nn

from moelight.cli.main import main
from moelight.data.tokenizer import ByteTokenizer
from moelight.eval.model import load_eval_model
from moelight.generate.chat import ChatSession
from moelight.generate.decoder import Decoder
from moelight.generate.loop import generate
from moelight.generate.sampling import Sampler, Sampling
from moelight.generate.stop_text import StopText
from moelight.load import single_process_model
from moelight.recipe import load_recipe

C2R_EP = [*TINY_MODEL, "parallel.expert_parallel=2", "router.collaborators=placement", "trainer.devices=2"]
PROMPT = "def main(argv):\n    "
GREEDY = Sampling(temperature=0.0)


def save_sharded_checkpoint(recipe_file, out, overrides):
    """A sharded expert-parallel checkpoint directory (the format P > 1 runs write), all experts."""
    from moelight.parallel.checkpoint import save_sharded

    recipe = load_recipe(recipe_file, overrides)
    torch.manual_seed(1)
    holder = nn.Module()
    holder.model = single_process_model(recipe)  # Lightning's names: `model.` + moelight name
    ckpt = {
        "global_step": 1,
        "state_dict": holder.state_dict(),
        "hyper_parameters": {"recipe": recipe.model_dump(mode="json")},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP without a process group warns it assumes one process
        save_sharded(ckpt, out, holder, [], expert_parallel=recipe.parallel.expert_parallel)
    return out


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("generate")
    out = {
        "topk": save_random_checkpoint(ROOT / "recipes" / "quickstart.yaml", d / "topk.ckpt", TINY_MODEL),
        "c2r": save_random_checkpoint(ROOT / "recipes" / "c2r.yaml", d / "c2r.ckpt", TINY_MODEL),
        "gqa": save_random_checkpoint(
            ROOT / "recipes" / "quickstart.yaml", d / "gqa.ckpt", [*TINY_MODEL, "model.n_kv_heads=1"]
        ),
        "sharded": save_sharded_checkpoint(ROOT / "recipes" / "ep-cpu.yaml", d / "last.ckpt", TINY_MODEL),
        # C2R under expert parallelism: collaborators = the experts on the top-1 expert's device
        "c2r-sharded": save_sharded_checkpoint(ROOT / "recipes" / "c2r.yaml", d / "c2r-ep.ckpt", C2R_EP),
    }
    transformers = pytest.importorskip("transformers", reason="moelight[hf] extra not installed")
    transformers.utils.logging.set_verbosity_error()
    from moelight.hf.convert_dirs import import_to_dir
    from moelight.hf.tiny import make_tiny_checkpoint

    hf = make_tiny_checkpoint("mixtral", d / "hf", seed=3)
    out["imported"] = import_to_dir(hf, d / "imported").out_dir
    return out


def loaded(path):
    return load_eval_model(path, device="cpu", dtype="float32")


def test_sharded_fixture_is_a_sharded_directory(ckpts):
    assert (ckpts["sharded"] / ".metadata").is_file()
    assert load_recipe(None, []).parallel.expert_parallel == 1
    assert loaded(ckpts["sharded"]).recipe.parallel.expert_parallel == 2


@pytest.mark.parametrize("kind", ["topk", "c2r", "gqa"])
def test_cached_forward_equals_the_full_forward(ckpts, kind):
    """Prefill, a multi-token chunk after a prefix (the causal mask's offset), then single tokens."""
    model = loaded(ckpts[kind]).model
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        parts = [model.forward_cached(ids[:, :7], cache), model.forward_cached(ids[:, 7:12], cache)]
        parts += [model.forward_cached(ids[:, i : i + 1], cache) for i in range(12, 20)]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=2e-5)


@pytest.mark.parametrize("kind", ["topk", "c2r", "sharded", "c2r-sharded", "imported"])
def test_cached_and_uncached_generation_give_identical_greedy_tokens(ckpts, kind):
    m = loaded(ckpts[kind])
    if kind.startswith("c2r"):  # routed as trained: the recipe's C2R router with its collaborator lists
        router = m.model.moe_layers[0].router
        assert m.recipe.router["name"] == "c2r" and type(router).__name__ == "C2RRouter"
    if kind.endswith("sharded"):
        assert (ckpts[kind] / ".metadata").is_file() and m.recipe.parallel.expert_parallel == 2
    prompt = [int(i) for i in m.tokenizer.encode(PROMPT)]
    runs = [
        generate(
            Decoder(m.model, m.device, use_cache=c), m.tokenizer, prompt, Sampler(GREEDY), 40, stop_ids=set()
        )
        for c in (True, False)
    ]
    assert len(runs[0].tokens) == 40
    assert runs[0].tokens == runs[1].tokens
    assert len(set(runs[0].tokens)) > 1  # a real continuation, not one repeated token


def test_decoder_reuses_the_cache_prefix_and_recomputes_after_a_divergence(ckpts):
    m = loaded(ckpts["topk"])
    cached, plain = Decoder(m.model, m.device), Decoder(m.model, m.device, use_cache=False)
    for ids in ([5, 6, 7, 8], [5, 6, 7, 8, 9], [5, 6, 1, 2], [5, 6, 1, 2, 3, 4]):
        torch.testing.assert_close(cached.logits_after(ids), plain.logits_after(ids), rtol=0, atol=2e-5)
        assert cached.cache.length == len(ids)


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_seeded_sampling_is_reproducible(ckpts, capsys):
    args = [
        "generate",
        str(ckpts["topk"]),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "30",
        "--temperature",
        "1",
    ]
    code, first, err = run_cli(capsys, *args, "--seed", "7")
    assert code == 0 and "tokens/s" in err
    assert run_cli(capsys, *args, "--seed", "7")[1] == first
    assert run_cli(capsys, *args, "--seed", "8")[1] != first


def test_stop_string_ends_the_text_before_it(ckpts, capsys):
    base = [
        "generate",
        str(ckpts["topk"]),
        "--prompt",
        PROMPT,
        "--temperature",
        "0",
        "--max-new-tokens",
        "40",
    ]
    code, full, _ = run_cli(capsys, *base)
    assert code == 0
    text = full.removesuffix("\n")
    stop = next(text[i : i + 2] for i in range(4, len(text) - 2) if "\ufffd" not in text[i : i + 2])
    code, out, err = run_cli(capsys, *base, "--stop", stop)
    assert code == 0 and out == text[: text.find(stop)] + "\n"
    assert "ended by stop" in err


def test_stop_text_holds_back_partial_stops_and_characters():
    stream = StopText(ByteTokenizer(), ["<|EOT|>"])
    pieces = []
    for b in "héllo <|EO wait <|EOT|> after".encode():
        pieces.append(stream.push(b))
        if stream.stopped:
            break
    assert stream.stopped and stream.text == "héllo <|EO wait "
    assert "".join(pieces) + stream.finish() == "héllo <|EO wait "
    assert not any("\ufffd" in p for p in pieces)  # the two bytes of é come out together


def test_sampler_filters():
    logits = torch.tensor([0.0, 5.0, 4.9, -3.0])
    assert Sampler(Sampling(temperature=0))(logits) == 1
    draws = {Sampler(Sampling(temperature=1, top_k=2, seed=s))(logits) for s in range(40)}
    assert draws == {1, 2}
    draws = {Sampler(Sampling(temperature=1, top_p=0.3, seed=s))(logits) for s in range(20)}
    assert draws == {1}


def one_error(err: str) -> str:
    """The error message as one line (rich wraps it at the console's width)."""
    assert err.count("error:") == 1 and "Traceback" not in err
    return " ".join(err.split())


def test_bad_checkpoint_path_is_one_line_exit_2(tmp_path, capsys):
    code, out, err = run_cli(capsys, "generate", str(tmp_path / "nope.ckpt"), "--prompt", "x")
    assert code == 2 and f"checkpoint not found: {tmp_path / 'nope.ckpt'}" in one_error(err) and out == ""
    code, _, err = run_cli(capsys, "chat", str(tmp_path / "nope"))
    assert code == 2 and "checkpoint not found" in one_error(err)
    code, _, err = run_cli(capsys, "generate", str(tmp_path), "--prompt", "x")  # a directory, no checkpoint
    assert code == 2 and "no model.safetensors" in one_error(err)


def test_chat_prompt_carries_the_history_in_the_plain_format(ckpts):
    m = loaded(ckpts["topk"])
    tok = m.tokenizer
    for cache in (True, False):
        session = ChatSession(Decoder(m.model, m.device, cache), tok, "auto", Sampler(GREEDY), 12)
        first = session.reply("hello")
        second = session.reply("hi")
        if cache:
            replies = (first.tokens, second.tokens)
        else:
            assert (first.tokens, second.tokens) == replies  # the cache changes nothing
    prompt = session.encoder.encode_prompt(session.messages[:3]).tolist()
    expected = list(b"<|user|>\nhello\n<|assistant|>\n") + list(first.text.strip().encode())
    expected += [tok.eos_id] + list(b"<|user|>\nhi\n<|assistant|>\n")
    assert prompt == expected


def test_named_template_prompt_ends_with_the_response_opener_and_stops_at_its_marker():
    from moelight.data.instruct import ChatEncoder

    enc = ChatEncoder(ByteTokenizer(), "c2r-instruct")
    ids = enc.encode_prompt([{"role": "user", "content": "add 2 and 3"}])
    assert ByteTokenizer().decode(ids).endswith("### Instruction:\nadd 2 and 3\n### Response:\n")
    assert "<|EOT|>" in enc.stop_strings


def test_chat_reads_piped_stdin_and_ends_at_eof(ckpts, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/reset\n\nwhat is 2+2?\n"))
    code, out, err = run_cli(capsys, "chat", str(ckpts["c2r"]), "--max-new-tokens", "6", "--temperature", "0")
    assert code == 0
    assert err.count("tokens/s") == 2  # two questions, two answers (/reset and the blank line are not turns)
    assert "router c2r" in err and "you>" not in out


def test_moe_language_model_is_importable_from_moelight_training():
    from moelight.training import MoELanguageModel
    from moelight.training.module import MoELanguageModel as Direct

    assert MoELanguageModel is Direct


def test_chat_template_prompt_ends_with_the_generation_prompt(tmp_path):
    pytest.importorskip("transformers", reason="moelight[hf] extra not installed")
    from moelight.data.instruct import ChatEncoder
    from moelight.data.tokenizer import load_tokenizer
    from moelight.hf.tiny import make_tiny_tokenizer

    tok = load_tokenizer(str(make_tiny_tokenizer(tmp_path / "tok")))
    enc = ChatEncoder(tok, "auto")
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]
    ids = enc.encode_prompt(messages)
    rendered = tok.hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == rendered and rendered.endswith("<|im_start|>assistant\n")
    assert enc.stop_strings == ()  # the template's end of turn is the EOS token (<|im_end|>)
