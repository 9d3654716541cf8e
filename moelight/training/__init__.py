"""Training with Lightning: the LightningModule, trainer and callbacks, optimizer, metrics, checkpoint files.
Builds the expert-parallel strategy from `moelight.parallel` when a recipe asks for it."""


def __getattr__(name: str):
    # `from moelight.training import MoELanguageModel` without importing Lightning for every submodule
    if name == "MoELanguageModel":
        from moelight.training.module import MoELanguageModel

        return MoELanguageModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MoELanguageModel"]
