"""Training with Lightning: the LightningModule, trainer and callbacks, optimizer, metrics, checkpoint files.
Builds the expert-parallel strategy from `moelight.parallel` when a recipe asks for it."""
