"""Files moelight writes get the mode any file the user writes gets (0666 minus the umask).

Some writers (safetensors' save_file) create their files 0600, which hides an exported model
from the other users of a shared machine."""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def as_user_writes(*paths: str | Path) -> None:
    """chmod each file to 0666 & ~umask."""
    mode = 0o666 & ~current_umask()
    for p in paths:
        os.chmod(p, mode)
