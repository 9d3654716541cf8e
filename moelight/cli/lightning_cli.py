"""`moelight fit` as a LightningCLI: every Trainer argument, with the recipe as the defaults.

One parser holds
- `trainer.*`: every `lightning.pytorch.Trainer` argument (strategies, callbacks, loggers, plugins,
  profilers the Lightning way), plus the recipe-only `trainer.checkpoint_every_n_steps` and
  `trainer.compile`;
- the recipe sections (`model.*`, `router`, `dispatcher`, `data.*`, `optim.*`, `parallel.*`,
  `profile.*`, `seed`, `plugins`), shown by `--help` with their descriptions.
The loaded recipe provides every default, so `--help` and `--print_config` show what would run
and `--config` files apply on top of it. After parsing, the recipe is rebuilt from the parsed
values and validated by pydantic again (router/dispatcher by their plugin's Params).

Each setting lives in one place: a recipe field that is a Trainer argument IS that argument
(`max_steps`, `devices`, `precision`, ...); `trainer.out_dir`, `trainer.progress_bar` and
`optim.grad_clip` are Lightning's `default_root_dir`, `enable_progress_bar` and
`gradient_clip_val`; `trainer.logger` (a keyword) is the default of Lightning's `logger`;
`parallel.expert_parallel` (with `parallel.fsdp`) is the default strategy's `expert_parallel`, and a strategy given on the
command line decides it.
"""

from __future__ import annotations

import warnings
from argparse import ArgumentError
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from moelight.cli.held_logs import lightning_info_held
from moelight.cli.parse_errors import parser_error_line
from moelight.cli.trainer_errors import trainer_errors
from moelight.cli.verb_parser import HelpFormatter
from moelight.data.datamodule import MoEDataModule
from moelight.errors import MoelightError
from moelight.parallel.collective_timeout import set_config_timeout, strategy_with_timeout
from moelight.parallel.fsdp_strategy import FSDPExpertParallelStrategy
from moelight.parallel.strategy import ExpertParallelStrategy
from moelight.recipe import Recipe, merge, parse_overrides, validate_recipe
from moelight.training.module import MoELanguageModel, check_vocab
from moelight.training.trainer import (
    ALIASES,
    SAME_NAMED,
    check_expert_parallel,
    collective_timeout,
    logger_specs,
    moelight_callbacks,
    strategy_spec,
    trainer_arguments,
    with_atomic_io,
)

DESCRIPTION = """Train the model a recipe describes: moelight fit [RECIPE.yaml] [a.b=value | --a.b value ...]
[--resume last|PATH] [--overwrite] [--print-recipe] [--trainer.<Trainer argument> value ...]
Without a recipe, the embedded default (recipes/quickstart.yaml) is used. Recipe overrides are YAML
scalars (trainer.max_steps=50, --router.name c2r); the defaults below are the recipe's values.
  --resume last   continue from the newest complete checkpoint in <trainer.out_dir>/checkpoints
                  (step count and data position); model, router and optim must match its recipe
  --resume PATH   continue from a given checkpoint (a file, or an expert-parallel checkpoint directory,
                  which resumes at any expert-parallel size)
  --overwrite     start afresh although trainer.out_dir holds an earlier run: its checkpoints and
                  recipe.yaml are moved to <trainer.out_dir>/replaced/<UTC time>/ (nothing is deleted)
  --print-recipe  print the validated recipe and exit
Precedence: recipe file < recipe overrides < --config files (what --print_config prints) < --trainer.* flags."""

# Recipe fields that are not parser arguments of their own: they are a Trainer argument's.
ALIASED = {recipe_field for recipe_field in ALIASES.values()} | {("parallel", "expert_parallel")}
TRAINER_ONLY_RECIPE = ("checkpoint_every_n_steps", "compile")
SECTIONS = ("model", "data", "optim", "parallel", "profile")
WHOLE = ("router", "dispatcher", "seed", "plugins")


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def config_files_first(args: list[str]) -> tuple[list[str], str | None]:
    """`args` with `--config FILE` items first (in their order) and `--print_config[=FLAGS]` taken
    out; returns (args, its flags or None when absent)."""
    configs: list[str] = []
    rest: list[str] = []
    print_flags = None
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name == "--config":
            taken = [args[i]] if eq else args[i : i + 2]
            configs += taken
            i += len(taken)
            continue
        if name == "--print_config":
            print_flags = value
        else:
            rest.append(args[i])
        i += 1
    return configs + rest, print_flags


PRINT_FLAGS = {"skip_null": "skip_unset", "skip_unset": "skip_unset", "skip_default": "skip_default"}


def print_config_options(flags: str) -> dict[str, bool]:
    """`--print_config[=skip_unset,skip_default]` as `parser.dump` options (jsonargparse's flags)."""
    options = {"skip_unset": False}
    for flag in filter(None, flags.split(",")):
        if flag not in PRINT_FLAGS:
            raise MoelightError(f"--print_config: unknown flag {flag!r}; allowed: skip_unset, skip_default")
        options[PRINT_FLAGS[flag]] = True
    return options


# The parser keys a recipe key sets, where they differ from the recipe key itself.
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    **{f"{section}.{name}": (f"trainer.{arg}",) for arg, (section, name) in ALIASES.items()},
    "trainer.logger": ("trainer.logger",),
    "parallel.expert_parallel": ("trainer.strategy",),
}


def config_values(recipe: Recipe) -> dict[str, Any]:
    """The parser values a recipe gives (the defaults `add_core_arguments_to_parser` sets)."""
    values = {f"trainer.{k}": v for k, v in trainer_arguments(recipe).items()}
    values["trainer.logger"] = [
        {"class_path": class_path(c), "init_args": kw} for c, kw in logger_specs(recipe)
    ] or False
    spec = strategy_spec(recipe)
    values["trainer.strategy"] = (
        spec if isinstance(spec, str) else {"class_path": class_path(spec[0]), "init_args": spec[1]}
    )
    for name in TRAINER_ONLY_RECIPE:
        values[f"trainer.{name}"] = getattr(recipe.trainer, name)
    for section in SECTIONS:
        model = getattr(recipe, section)
        for name in type(model).model_fields:
            if (section, name) not in ALIASED:
                values[f"{section}.{name}"] = getattr(model, name)
    for name in WHOLE:
        values[name] = getattr(recipe, name)
    return values


class MoelightCLI(LightningCLI):
    """Parses Lightning's arguments over a loaded recipe; `build=False` stops after the recipe."""

    def __init__(
        self, recipe: Recipe, args: list[str], build: bool = True, overrides: list[str] | None = None
    ):
        """`recipe`: the recipe file with `overrides` applied (the parser's defaults); `overrides`
        are applied again over the parsed `--config` files, so that the command line beats them."""
        self.recipe = recipe
        self.build = build
        self.overrides = list(overrides or [])
        self.model: L.LightningModule | None = None
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        super().__init__(
            save_config_callback=None,  # the run directory gets recipe.yaml instead
            parser_kwargs={
                "prog": "moelight fit",
                "description": DESCRIPTION,
                "formatter_class": HelpFormatter,
                "exit_on_error": False,
            },
            args=args,
            run=False,  # `moelight fit` is the subcommand
            auto_configure_optimizers=False,  # the module's own AdamW + schedule
            load_from_checkpoint_support=False,  # checkpoints store the recipe (see module.py)
        )

    # ---- parser -------------------------------------------------------------------------------

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        pass  # no --seed_everything: the recipe's `seed` is the seed

    def _set_seed(self) -> None:
        pass  # seeded with the recipe's seed in instantiate_classes

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        recipe = self.recipe
        for name in TRAINER_ONLY_RECIPE:
            field = type(recipe.trainer).model_fields[name]
            parser.add_argument(f"--trainer.{name}", type=field.annotation, help=field.description)
        for section in SECTIONS:
            group = parser.add_argument_group(f"recipe: {section}")
            model = getattr(recipe, section)
            for name, field in type(model).model_fields.items():
                if (section, name) in ALIASED:
                    continue
                group.add_argument(f"--{section}.{name}", type=field.annotation, help=field.description)
        group = parser.add_argument_group("recipe: plugins and seed")
        for name in WHOLE:
            field = Recipe.model_fields[name]
            help_ = (
                f"{name} section of the recipe; e.g. --{name}.name NAME"
                if name in ("router", "dispatcher")
                else None
            )
            group.add_argument(f"--{name}", type=field.annotation, help=help_)
        defaults = config_values(recipe)
        parser.set_defaults(defaults)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        # The command line beats --config files whatever the order: the files are parsed first,
        # then the flags, then the recipe overrides are put back; --print_config prints the result.
        args, print_flags = config_files_first(list(args))
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise MoelightError(parser_error_line(str(err))) from None
        if self.overrides:
            self.apply_overrides()
        if print_flags is not None:
            print(parser.dump(self.config, **print_config_options(print_flags)), end="")
            raise SystemExit(0)

    def apply_overrides(self) -> None:
        """Set the values the recipe overrides name (after --config files changed the parsed ones)."""
        tree = parse_overrides(self.overrides)
        parsed = self.recipe_from_config()
        final = validate_recipe(merge(parsed.model_dump(mode="json", exclude_unset=True), tree))
        values = config_values(final)
        for section, names in tree.items():
            keys = [section] if section in WHOLE or not isinstance(names, dict) else []
            keys += [f"{section}.{name}" for name in (names if isinstance(names, dict) else ())]
            for key in keys:
                for config_key in CONFIG_KEYS.get(key, (key,)):
                    if config_key in values:
                        self.config[config_key] = values[config_key]
        self.recipe = final

    # ---- recipe and classes -------------------------------------------------------------------

    def recipe_from_config(self) -> Recipe:
        """The recipe with every value as parsed (a --config or --trainer.* flag may change it)."""
        cfg = self.config
        full = self.recipe.model_dump(mode="json")
        # Only changed values are written, so a field the recipe left unset stays unset (an unset
        # trainer.max_steps does not cap trainer.max_epochs).
        data = self.recipe.model_dump(mode="json", exclude_unset=True)

        def put(section: str | None, name: str, value: Any) -> None:
            if value != (full[section][name] if section else full[name]):
                (data.setdefault(section, {}) if section else data)[name] = value

        for section in SECTIONS:
            for name in full[section]:
                if (section, name) not in ALIASED:
                    put(section, name, cfg[f"{section}.{name}"])
        for name in WHOLE:
            put(None, name, cfg[name])
        for name in SAME_NAMED + TRAINER_ONLY_RECIPE:
            put("trainer", name, cfg[f"trainer.{name}"])
        for arg, (section, name) in ALIASES.items():
            put(section, name, cfg[f"trainer.{arg}"])
        return validate_recipe(data)

    def instantiate_classes(self) -> None:
        self.recipe = self.recipe_from_config()
        if self.build:
            self.build_classes()

    def build_classes(self) -> None:
        """The Trainer, data module and model (`build=False` leaves this to the caller, which checks
        the recipe and the run directory first). Lightning's "GPU available" lines are printed
        only once everything is built, so an error is the first thing a user reads."""
        with lightning_info_held():
            self._build_classes()

    def _build_classes(self) -> None:
        with trainer_errors():
            # `instantiate` since jsonargparse 4.49 (instantiate_classes is deprecated there).
            instantiate = getattr(self.parser, "instantiate", None) or self.parser.instantiate_classes
            timeout = collective_timeout(self.recipe)
            set_config_timeout(self.config["trainer.strategy"], timeout)
            self.config_init = instantiate(self.config)
            kwargs = {k: v for k, v in self.config_init["trainer"].items() if k not in TRAINER_ONLY_RECIPE}
            kwargs["strategy"] = strategy_with_timeout(
                kwargs["strategy"], timeout, kwargs["accelerator"], kwargs["devices"], kwargs["num_nodes"]
            )
            has_loggers = kwargs["logger"] not in (None, False, [])
            checkpointing = kwargs["enable_checkpointing"] is not False
            own = moelight_callbacks(self.recipe, kwargs["enable_progress_bar"], has_loggers, checkpointing)
            user = kwargs["callbacks"] or []
            kwargs["callbacks"] = own + (user if isinstance(user, list) else [user])
            kwargs["plugins"] = with_atomic_io(
                kwargs["plugins"] if isinstance(kwargs["plugins"], list | None) else [kwargs["plugins"]]
            )
            self.trainer = self.trainer_class(**kwargs)
        self.recipe = self.with_strategy_expert_parallel(self.recipe)
        check_expert_parallel(self.recipe)

        L.seed_everything(self.recipe.seed, workers=True, verbose=False)
        self.datamodule = MoEDataModule(self.recipe.data, seed=self.recipe.seed)
        check_vocab(self.recipe, self.datamodule.vocab_size)
        self.model = MoELanguageModel(self.recipe)

    def with_strategy_expert_parallel(self, recipe: Recipe) -> Recipe:
        """The strategy decides the expert-parallel size; the recipe records it (models read it)."""
        strategy = self.trainer.strategy
        fsdp = isinstance(strategy, FSDPExpertParallelStrategy)
        ep = isinstance(strategy, ExpertParallelStrategy) or fsdp
        size = strategy.expert_parallel if ep else 1
        if size == recipe.parallel.expert_parallel and fsdp == recipe.parallel.fsdp:
            return recipe
        data: dict[str, Any] = recipe.model_dump(mode="json", exclude_unset=True)
        parallel = data.setdefault("parallel", {})
        parallel.update(expert_parallel=size, fsdp=fsdp)
        if fsdp:
            parallel.update(param_dtype=strategy.param_dtype, cpu_offload=strategy.cpu_offload)
        else:
            parallel.update(param_dtype="float32", cpu_offload=False)
        return validate_recipe(data)
