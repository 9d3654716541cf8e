"""Generated tokens -> printable text, as it grows: stop strings end it, and text that may still
become a stop string (or an incomplete UTF-8 character) is held back until it is settled."""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 sequence decodes to for now


class StopText:
    def __init__(self, tokenizer: Any, stops: list[str] | tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.text = ""  # the generated text so far, up to a stop string
        self.shown = 0  # how many characters of `text` were handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; returns the newly settled text (possibly empty)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.text, self.stopped = text[: min(hits)], True
            return self._emit(len(self.text))
        self.text = text
        return self._emit(len(text) - self._held_back(text))

    def finish(self) -> str:
        """The rest of the text once generation has ended."""
        return self._emit(len(self.text))

    def _held_back(self, text: str) -> int:
        """Characters at the end of `text` that may still change: an incomplete character, or
        the beginning of a stop string."""
        hold = len(text) - len(text.rstrip(REPLACEMENT))
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        return hold

    def _emit(self, upto: int) -> str:
        if upto <= self.shown:
            return ""
        out = self.text[self.shown : upto]
        self.shown = upto
        return out
