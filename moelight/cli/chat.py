"""`moelight chat CKPT`: talk to a checkpoint with the prompt template of its recipe."""

from __future__ import annotations

import sys

from moelight.cli.generate import add_model_options, load_for_generation, stats_line, write
from moelight.cli.verb_parser import VerbParser

DESCRIPTION = """Chat with a trained model. Each line you type is a user turn; the conversation is rendered with
the recipe's prompt template (data.prompt_template: c2r-instruct, vicuna, the tokenizer's chat
template, or the plain <|user|>/<|assistant|> format) and the answer streams back. Reads stdin
whether or not it is a terminal (pipe a file of questions in); ends at end of input (Ctrl-D).
/reset forgets the conversation. The tokens/s line of each answer goes to stderr."""


def parser() -> VerbParser:
    p = VerbParser("moelight chat", DESCRIPTION)
    add_model_options(p, max_new_tokens=256)
    p.add_argument("--system", help="a system message opening the conversation (default: the template's)")
    return p


def read_turns(interactive: bool):
    """User lines from stdin until end of input; a prompt is shown only at a terminal."""
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and line == "":
            return
        yield line.rstrip("\n")


def run(argv: list[str]) -> int:
    args = parser().parse(argv)
    if args is None:
        return 0
    loaded, decoder, sampler = load_for_generation(args)
    from moelight.generate.chat import ChatSession

    session = ChatSession(
        decoder,
        loaded.tokenizer,
        loaded.recipe.data.prompt_template,
        sampler,
        args.max_new_tokens,
        system=args.system,
    )
    interactive = sys.stdin.isatty()
    router = loaded.recipe.router.get("name")
    print(
        f"chat with {args.checkpoint} (router {router}, {session.style}); "
        "end of input (Ctrl-D) ends, /reset starts over",
        file=sys.stderr,
    )
    for line in read_turns(interactive):
        if not line.strip():
            continue
        if line.strip() == "/reset":
            session.reset()
            continue
        out = session.reply(line, on_text=write)
        write("\n")
        print(stats_line(out, loaded, not args.no_cache), file=sys.stderr)
    if interactive:
        write("\n")
    return 0
