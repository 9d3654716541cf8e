"""`moelight generate CKPT --prompt TEXT`: sample text from a checkpoint, routed as trained."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveInt

from moelight.cli.verb_parser import VerbParser
from moelight.errors import MoelightError

DESCRIPTION = """Continue a prompt with a trained model: a .ckpt from `moelight fit`, a sharded expert-parallel
checkpoint directory, or a `moelight convert import` directory. The model routes as it was
trained (a C2R model with its collaborator lists); all experts run in this process. Text streams
to stdout; the tokens/s line goes to stderr. bf16 on a GPU, fp32 on the CPU unless --dtype says."""
SMALL_HIDDEN = 1024
CKPT_HELP = (
    "a .ckpt from `moelight fit`, a sharded expert-parallel checkpoint directory, "
    "or a `moelight convert import` directory"
)


def add_model_options(p: VerbParser, max_new_tokens: int) -> None:
    """The options `generate` and `chat` share: the checkpoint, sampling, device."""
    p.add_argument("checkpoint", metavar="CKPT", help=CKPT_HELP)
    p.add_argument(
        "--recipe", help="build the model from this recipe instead of the one the checkpoint carries"
    )
    p.add_argument(
        "--max-new-tokens", type=PositiveInt, default=max_new_tokens, help="tokens to generate at most"
    )
    p.add_argument(
        "--temperature", type=NonNegativeFloat, default=0.8, help="sampling temperature; 0 = greedy"
    )
    p.add_argument(
        "--top-k", type=NonNegativeInt, default=0, help="sample from the k likeliest tokens (0: all)"
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="sample from the smallest set of tokens with this much probability",
    )
    p.add_argument("--seed", type=int | None, help="seed of the sampling (same seed, same text)")
    p.add_argument("--device", help="auto, cpu, cuda (default: the GPU when there is one, else the CPU)")
    p.add_argument("--dtype", help="auto, float32, bfloat16 (default: bf16 on a GPU, else fp32)")
    p.add_argument(
        "--no-cache", action="store_true", help="recompute the whole sequence per token (no KV cache)"
    )
    p.add_argument(
        "--threads",
        type=PositiveInt | None,
        help=f"CPU threads (default: 1 for models up to hidden size {SMALL_HIDDEN}, whose one-token steps "
        "are too small to split, else torch's default; OMP_NUM_THREADS also sets it)",
    )
    p.add_overrides()


def parser() -> VerbParser:
    p = VerbParser("moelight generate", DESCRIPTION)
    add_model_options(p, max_new_tokens=200)
    p.add_argument("--prompt", required=True, help="the text to continue; - reads it from stdin")
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help=r"end the text where TEXT appears (not printed); repeatable; \n and \t are a newline and a tab",
    )
    return p


def unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


def load_for_generation(args: Any) -> tuple[Any, Any, Any]:
    """(loaded model, Decoder, Sampler) for the parsed options."""
    if not Path(args.checkpoint).exists():
        raise MoelightError(f"checkpoint not found: {args.checkpoint} (expected {CKPT_HELP})")
    # imported when the verb runs: `moelight --help` stays fast
    from moelight.eval.model import load_eval_model
    from moelight.generate.decoder import Decoder
    from moelight.generate.sampling import Sampler, Sampling

    settings = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    loaded = load_eval_model(args.checkpoint, args.recipe, args.overrides, args.device, args.dtype)
    if loaded.device.type == "cpu":
        set_threads(args.threads, loaded.recipe.model.hidden_size)
    return loaded, Decoder(loaded.model, loaded.device, use_cache=not args.no_cache), Sampler(settings)


def set_threads(threads: int | None, hidden_size: int) -> None:
    """Decoding one token of a small model is many tiny ops: on a busy machine, threads waiting for
    each other made it far slower than one thread (measured: README "Generate text")."""
    import os

    import torch

    if threads is None and "OMP_NUM_THREADS" not in os.environ and hidden_size <= SMALL_HIDDEN:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def stats_line(out: Any, loaded: Any, cached: bool) -> str:
    dtype = str(loaded.dtype).removeprefix("torch.")
    return (
        f"{len(out.tokens)} tokens in {out.seconds:.2f} s: {out.tokens_per_second:.1f} tokens/s "
        f"(prompt {out.prompt_tokens} tokens, first token after {out.first_token_seconds:.2f} s; "
        f"{loaded.device.type} {dtype}, KV cache {'on' if cached else 'off'}; ended by {out.stopped_by})"
    )


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run(argv: list[str]) -> int:
    args = parser().parse(argv)
    if args is None:
        return 0
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    loaded, decoder, sampler = load_for_generation(args)
    from moelight.generate.loop import generate

    tok = loaded.tokenizer
    ids = [int(i) for i in tok.encode(prompt)] or [tok.eos_id]  # empty: start as a new document does
    out = generate(
        decoder, tok, ids, sampler, args.max_new_tokens, [unescape(s) for s in args.stop], on_text=write
    )
    write("\n")
    print(stats_line(out, loaded, not args.no_cache), file=sys.stderr)
    return 0
