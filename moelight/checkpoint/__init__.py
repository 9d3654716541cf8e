"""Checkpoint files that are complete or absent: atomic writes, refusing corrupt or foreign files.
The lowest layer of checkpointing: model, parallel (the sharded EP format) and training all build on it."""
