"""User-facing errors: the CLI prints them as one message and exits with status 2."""

from __future__ import annotations


class MoelightError(Exception):
    """A problem the user can fix (bad recipe, missing file, unknown plugin...)."""

    exit_code = 2


class TrainingStopped(MoelightError):
    """Training cannot go on (it diverged, or storage failed mid-run): exit status 3."""

    exit_code = 3


class ConfigError(MoelightError):
    """A recipe value is invalid. `field` is the dotted path of the offending key."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


def validation_message(err, prefix: str = "") -> str:
    """Turn a pydantic ValidationError into lines `field.path: what is wrong (got value)`."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(e["loc"]))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            allowed = e.get("ctx", {}).get("allowed")
            if allowed:
                msg += f" (allowed: {allowed})"
        elif "input" in e and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        lines.append(f"{path}: {msg}" if path else msg)
    return "\n".join(lines)


def first_names(names: list[str], n: int = 5) -> str:
    """The first `n` of `names` for a message, with how many more there are."""
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more
