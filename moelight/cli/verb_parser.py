"""One way to declare a verb's command line: a jsonargparse parser per verb (subcommands for
`bench` and `convert`), typed options, `--help` generated from the declarations, and every
parse error as one moelight line (exit status 2, no traceback).

Recipe overrides (`key.path=value`, `--key.path value`) are not options of a verb: they are
rewritten to `--override key.path=value`, which a verb that reads a recipe declares, and the
recipe loader validates them against the recipe they change.
"""

from __future__ import annotations

import re
from argparse import Action, ArgumentError, ArgumentTypeError, RawDescriptionHelpFormatter
from collections.abc import Callable, Sequence

from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace

from moelight.cli.parse_errors import value_error_line
from moelight.errors import MoelightError

# `key.path=value` with an identifier path: a dispatcher spec such as `grouplocal:kernels=torch`
# is an option's value, not an override.
OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.\w+)*=")
OVERRIDE_OPTION = "--override"
OWN = re.compile(r"--[a-z-]+$")  # the verb's options, not jsonargparse's --print_shtab


class HelpFormatter(RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description's line breaks kept."""


class CommaList:
    """An option type for `a,b,c` (with `action="extend"` also repeatable): each item converted
    by `item` and, when `choices` are given, one of them."""

    def __init__(self, item: Callable = str, choices: Sequence[str] = (), what: str = "") -> None:
        self.item, self.choices, self.what = item, tuple(choices), what

    def __call__(self, value: str | list) -> list:
        if isinstance(value, list):  # jsonargparse checks the parsed list again
            return value
        parts = [part.strip() for part in str(value).split(",")]
        if "" in parts:
            raise ArgumentTypeError(f"invalid value {value!r} (expected {self})")
        if self.choices and (unknown := [p for p in parts if p not in self.choices]):
            raise ArgumentTypeError(
                f"invalid value {','.join(unknown)!r} (allowed: {', '.join(self.choices)})"
            )
        try:
            return [self.item(p) for p in parts]
        except (TypeError, ValueError):
            raise ArgumentTypeError(f"invalid value {value!r} (expected {self})") from None

    def __repr__(self) -> str:
        return f"comma-separated {self.what or '|'.join(self.choices) or 'list'}"


class VerbParser(ArgumentParser):
    """A verb's (or a verb's subcommand's) parser; `parse` turns its errors into MoelightError."""

    def __init__(self, prog: str, description: str) -> None:
        super().__init__(
            prog=prog,
            description=description,
            formatter_class=HelpFormatter,
            exit_on_error=False,
            allow_abbrev=False,
        )
        self.full_name = prog  # jsonargparse rewrites a subcommand's prog for its usage line
        self.subparsers: dict[str, VerbParser] = {}
        self._commands = None

    def add_overrides(self) -> None:
        """Accept recipe overrides; they are parsed as the list `overrides`."""
        self.add_argument(
            OVERRIDE_OPTION,
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="change the recipe, as `moelight fit` does; also written key.path=value or "
            "--key.path value (repeatable)",
        )

    def subcommand(self, name: str, summary: str, description: str) -> VerbParser:
        """Declare `prog name ...` with its own parser; the parsed namespace names it as `command`."""
        if self._commands is None:
            self._commands = self.add_subcommands(required=True, dest="command")
        parser = VerbParser(f"{self.prog} {name}", description)
        self._commands.add_subcommand(name, parser, help=summary)
        self.subparsers[name] = parser
        return parser

    def parse(self, argv: list[str]) -> Namespace | None:
        """The parsed options, or None when help was printed."""
        if self.subparsers and not argv:
            self.print_help()
            return None
        args = with_override_options(argv)
        try:
            return self.parse_args(args)
        except SystemExit as exc:  # --help printed its text
            if exc.code:
                raise
            return None
        except (ArgumentError, ArgumentTypeError) as err:
            raise MoelightError(self.error_line(str(err), args)) from None

    def error_line(self, text: str, argv: list[str]) -> str:
        parser = self.subparsers.get(argv[0], self) if argv else self
        name = parser.full_name.removeprefix("moelight ")
        see = f"see `{parser.full_name} --help`"
        if text.startswith("unrecognized arguments:"):
            first = text.split(":", 1)[1].split()[0]
            if first.startswith(OVERRIDE_OPTION + "="):
                return f"{name} takes no recipe overrides (got {first.split('=', 1)[1]})"
            if first.startswith("-"):
                options = ", ".join(o for a in parser._actions for o in a.option_strings if OWN.match(o))
                return f"unknown option {first.split('=')[0]!r} (options: {options}; {see})"
            return f"unexpected argument {first!r} ({see})"
        if text.startswith("the following arguments are required:"):
            keys = text.split(":", 1)[1].split(",")
            return f"{name} needs {', '.join(parser.label(k.strip()) for k in keys)} ({see})"
        if choice := re.match(r"argument command: invalid choice: '([^']*)'", text):
            return f"unknown {name} command {choice.group(1)!r}; allowed: {', '.join(self.subparsers)}"
        if argument := re.match(r"argument ([^:]+): (.*)", text, re.S):
            return f"{argument.group(1)}: {' '.join(argument.group(2).split())}"
        if key := re.match(r'Parser key "([^"]+)"', text):
            return value_error_line(parser.label(key.group(1)), text)
        return " ".join(text.split())

    def label(self, key: str) -> str:
        """How the user writes the argument a parsed key belongs to: `--max-tokens`, `CHECKPOINT`."""
        dest = key.rsplit(".", 1)[-1]
        action: Action | None = next((a for a in self._actions if a.dest == dest), None)
        if action is None:
            return key
        return action.option_strings[0] if action.option_strings else str(action.metavar or dest)


def with_override_options(argv: list[str]) -> list[str]:
    """argv with each recipe override moved to the end as `--override key.path=value`."""
    rest: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, _ = arg.partition("=")
        if arg == OVERRIDE_OPTION and i + 1 < len(argv):  # written out: already an option
            rest += argv[i : i + 2]
            i += 1
        elif arg.startswith("--") and "." in name:
            if not eq and i + 1 == len(argv):
                raise MoelightError(f"recipe override {arg} needs a value")
            overrides.append(arg[2:] if eq else f"{name[2:]}={argv[i + 1]}")
            i += 0 if eq else 1
        elif OVERRIDE.match(arg):
            overrides.append(arg)
        else:
            rest.append(arg)
        i += 1
    return rest + [f"{OVERRIDE_OPTION}={o}" for o in overrides]
