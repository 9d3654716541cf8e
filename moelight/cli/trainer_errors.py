"""Lightning's errors for bad Trainer arguments as one-line user errors."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies import StrategyRegistry

from moelight.cli.parse_errors import missing_package_line
from moelight.errors import MoelightError


@contextmanager
def trainer_errors() -> Iterator[None]:
    """Errors Lightning raises for bad Trainer arguments (precision, accelerator, devices,
    strategy names, missing logger packages) become one-line user errors."""
    try:
        yield
    except MoelightError:
        raise
    except (MisconfigurationException, ValueError, TypeError, ImportError) as exc:
        message = " ".join(str(exc).split())
        missing = missing_package_line(message)
        if missing:
            raise MoelightError(f"trainer: {missing}") from None
        if "invalid strategy name" in message:
            name = re.search(r"strategy=(\S+?)`", message)
            names = ", ".join(StrategyRegistry.available_strategies())
            message = (
                f"unknown strategy {name.group(1) if name else ''} (registered: {names}; or a Strategy class)"
            )
        raise MoelightError(f"trainer: {message}") from None
