"""Where torchshrink keeps what it measured on this machine (dispatch decisions, layer latencies).

One root for every cache, so one variable moves or clears them all:

* ``$TORCHSHRINK_CACHE`` if set (the folder itself);
* else ``$XDG_CACHE_HOME/torchshrink`` (the XDG base-directory convention);
* else ``~/.cache/torchshrink``.

Nothing in it is needed: a missing, unwritable or damaged cache only means measuring again.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The folder torchshrink's machine-specific caches live in (read from the environment on each call)."""
    own = os.environ.get("TORCHSHRINK_CACHE")
    if own:
        return Path(own)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "torchshrink"
