"""greencc's user cache directory (calibrated profiles, TVM tuning records, the AArch64
emulation root): one place, overridable with ``$GREENCC_CACHE_DIR``."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "GREENCC_CACHE_DIR"


def cache_dir() -> Path:
    """greencc's user cache: ``$GREENCC_CACHE_DIR``, else ``$XDG_CACHE_HOME/greencc``, else
    ``~/.cache/greencc``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "greencc"
