"""Lightning's start-up lines ("GPU available: …") held back until the run is built.

A bad Trainer argument or strategy raises after Lightning has already logged its device lines;
holding them means an error is the first (and only) thing the user reads, and a run that builds
prints them as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _Hold(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False  # not emitted now


@contextmanager
def lightning_info_held() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    hold = _Hold()
    for logger in loggers:
        logger.addFilter(hold)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(hold)
    # Reached only when the block succeeded: an error drops the held lines with it.
    for record in hold.records:
        logging.getLogger(record.name).handle(record)
