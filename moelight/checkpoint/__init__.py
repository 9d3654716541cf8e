"""Checkpoint files: complete-or-absent writes, refusing corrupt files, and the sharded expert-parallel format.
Below training, parallel and model: each of them reads or writes checkpoints through this package."""
