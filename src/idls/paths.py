"""Where idls keeps cached artifacts (trained embedded models, downloads)."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir

from idls import __version__


def cache_dir() -> Path:
    """The versioned cache directory; ``IDLS_CACHE_DIR`` overrides the user cache."""
    root = os.environ.get("IDLS_CACHE_DIR")
    base = Path(root) if root else Path(user_cache_dir("idls"))
    path = base / f"v{__version__}"
    path.mkdir(parents=True, exist_ok=True)
    return path
