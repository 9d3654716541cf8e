"""Decoding speed with and without the KV cache, measured side by side (interleaved rounds).

    python benchmarks/generate_speed.py CKPT [--tokens 200] [--rounds 3] [--threads 1] [--device auto]

Greedy decoding of the same prompt; prints tokens/s per round and the median cached/uncached ratio.
The two paths produce the same tokens (checked here too), so only the speed differs.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from moelight.eval.model import load_eval_model
from moelight.generate.decoder import Decoder
from moelight.generate.loop import generate
from moelight.generate.sampling import Sampler, Sampling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = load_eval_model(args.checkpoint, device=args.device)
    prompt = m.tokenizer.encode("def main(argv):\n").tolist()
    rates: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.rounds):
        outs = {}
        for cached in (True, False):
            decoder = Decoder(m.model, m.device, use_cache=cached)
            out = generate(decoder, m.tokenizer, prompt, Sampler(Sampling(0.0)), args.tokens, stop_ids=set())
            rates[cached].append(out.tokens_per_second)
            outs[cached] = out.tokens
            print(f"round {r}: cache {'on ' if cached else 'off'} {out.tokens_per_second:8.1f} tokens/s")
        assert outs[True] == outs[False], "cached and uncached greedy tokens differ"
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    print(
        f"{m.device.type} {m.dtype}, {args.tokens} tokens, {args.threads} thread(s): cache on {on:.1f}, "
        f"off {off:.1f} tokens/s (median); ratio {on / off:.2f}x"
    )


if __name__ == "__main__":
    main()
