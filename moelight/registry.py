"""Plugin registries for routers and dispatchers, fed by the `moelight.plugins` entry points.

A plugin module registers its classes on import (`@routers.register("name")`); the registry
imports every module of the entry-point group the first time it is asked for a name, so
bundled and third-party plugins are found the same way.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, ValidationError

from moelight.errors import ConfigError, MoelightError, validation_message

ENTRY_POINT_GROUP = "moelight.plugins"
_discovered = False
_load_failures: dict[str, str] = {}


def discover() -> None:
    """Import every module registered under the entry-point group (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party plugin must not break the others
            _load_failures[ep.name] = f"{type(exc).__name__}: {exc}"


def load_plugin_modules(names: list[str], field: str = "plugins") -> None:
    """Import extra plugin modules named in a recipe: dotted module names or `.py` paths.

    The installed plugins are discovered first, so a recipe's plugin that reuses one of their
    names is an error rather than a silent replacement.
    """
    discover()
    for i, name in enumerate(names):
        try:
            if name.endswith(".py"):
                _load_file(Path(name), f"{field}.{i}")
            else:
                importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"{field}.{i}", f"cannot import plugin module {name!r}: {exc}") from None
        except SyntaxError as exc:
            sys.modules.pop(f"moelight_user_plugin_{Path(name).stem}", None)
            raise ConfigError(
                f"{field}.{i}", f"plugin {name} has a syntax error: {exc.filename}:{exc.lineno}: {exc.msg}"
            ) from None
        except ConfigError:
            raise
        except Exception as exc:  # the plugin's own code raised while it was imported
            raise ConfigError(
                f"{field}.{i}",
                f"plugin {name} raised {type(exc).__name__} at import{_where(exc, name)}: {_first_line(exc)}",
            ) from None


def _where(exc: BaseException, name: str) -> str:
    """` (file:line)` of the innermost frame of the plugin's own file (or module) in `exc`'s traceback."""
    tb, found = exc.__traceback__, ""
    target = str(Path(name).resolve()) if name.endswith(".py") else None
    while tb is not None:
        file = tb.tb_frame.f_code.co_filename
        module = tb.tb_frame.f_globals.get("__name__", "")
        mine = (
            str(Path(file).resolve()) == target if target else module == name or module.startswith(name + ".")
        )
        if mine:
            found = f" ({file}:{tb.tb_lineno})"
        tb = tb.tb_next
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


def file_module_name(path: Path) -> str:
    """The module name a plugin file is imported under: unique per file, so two `router.py` both load."""
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", resolved.stem)
    return f"moelight_user_plugin_{stem}_{digest}"


def _load_file(path: Path, field: str) -> None:
    if not path.is_file():
        raise ConfigError(field, f"plugin file not found: {path}")
    mod_name = file_module_name(path)
    if mod_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]  # a failed file is retried, never half-registered and skipped
        raise


def source_of(cls: type) -> str:
    """Where a plugin class comes from, for messages: `module.Class (file)`."""
    try:
        where = inspect.getsourcefile(cls) or "?"
    except TypeError:
        where = "built-in"
    return f"{cls.__module__}.{cls.__qualname__} ({where})"


class Registry:
    """Named plugin classes of one kind (`router` or `dispatcher`)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type] = {}
        self._conflicts: dict[str, str] = {}  # name -> the error, kept for `get`

    def register(self, name: str):
        """Class decorator. A name already taken by a class from another module is an error naming
        both sources; the same module imported again (a reload) replaces its own class."""

        def decorate(cls: type) -> type:
            existing = self._classes.get(name)
            if existing is not None and source_of(existing) != source_of(cls):
                message = (
                    f"two {self.kind} plugins are named {name!r}: {source_of(existing)} and "
                    f"{source_of(cls)}; rename one of them"
                )
                self._conflicts[name] = message
                raise MoelightError(message)
            cls.plugin_name = name
            self._classes[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        discover()
        return sorted(self._classes)

    def get(self, name: str, field: str | None = None) -> type:
        discover()
        if name in self._conflicts:
            raise ConfigError(f"{field or self.kind}.name", self._conflicts[name])
        if name not in self._classes:
            field = field or self.kind
            raise ConfigError(
                f"{field}.name",
                f"unknown {self.kind} {name!r}; installed {self.kind}s: {', '.join(self.names())}",
            )
        return self._classes[name]

    def canonical_keys(self, name: Any, params: dict[str, Any]) -> dict[str, Any]:
        """`params` with each old name of a parameter of plugin `name` (a field's validation alias)
        renamed to the field's name, unless the field's own name is there too."""
        if not isinstance(name, str) or name not in self.names():
            return params
        renames = {
            alias: field
            for field, info in self.get(name).Params.model_fields.items()
            if isinstance(info.validation_alias, AliasChoices)
            for alias in info.validation_alias.choices
            if isinstance(alias, str) and alias != field and field not in params
        }
        return {renames.get(k, k): v for k, v in params.items()}

    def params(self, spec: dict[str, Any], field: str | None = None):
        """Validate a recipe's `{name: ..., <params>}` mapping; returns (class, Params instance)."""
        field = field or self.kind
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(
                field, f"must be a mapping with a 'name' key (installed: {', '.join(self.names())})"
            )
        cls = self.get(spec["name"], field)
        reason = cls.unavailable_reason() if hasattr(cls, "unavailable_reason") else None
        if reason:
            raise ConfigError(f"{field}.name", f"{self.kind} {spec['name']!r} is unavailable here: {reason}")
        try:
            params = cls.Params.model_validate({k: v for k, v in spec.items() if k != "name"})
        except ValidationError as err:
            raise ConfigError("", validation_message(err, field)) from None
        return cls, params

    def build(self, spec: dict[str, Any], ctx, *args, field: str | None = None, **kwargs):
        """Build the plugin named by `spec` for the layer described by `ctx`.

        Dispatchers take two more arguments after `ctx`: the layer's `ExpertWeights` and the
        `ExpertParallelContext`.
        """
        cls, params = self.params(spec, field)
        return cls(params, ctx, *args, **kwargs)


routers = Registry("router")
dispatchers = Registry("dispatcher")
