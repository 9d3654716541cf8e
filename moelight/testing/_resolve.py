"""Turn what a check was given (a class, an instance or a registered name) into a plugin class."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from moelight.registry import Registry


def plugin_class(plugin: type | str, registry: Registry, base: type) -> type:
    """A registered name or a class -> the class, which must subclass `base`."""
    cls = registry.get(plugin) if isinstance(plugin, str) else plugin
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise AssertionError(f"{cls!r} is not a subclass of {base.__module__}.{base.__qualname__}")
    return cls


def plugin_params(cls: type, params: dict[str, Any] | None) -> BaseModel:
    """Validate `params` with the plugin's own `Params`, which must forbid unknown keys."""
    model = cls.Params
    if model.model_config.get("extra") != "forbid":
        raise AssertionError(
            f"{cls.__qualname__}.Params must forbid unknown keys: derive it from moelight.api.PluginParams"
        )
    return model.model_validate(params or {})


def require(condition: bool, message: str) -> None:
    """An assert that survives `python -O`."""
    if not condition:
        raise AssertionError(message)
