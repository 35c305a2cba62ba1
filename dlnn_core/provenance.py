"""What a result depends on: the versions of Python and of the packages, stored with every checkpoint
and on every trial. Kept apart from train.py so that a worker records them without importing torch."""

from __future__ import annotations

import platform
from importlib import metadata

_PACKAGES = ("dlnn-studies", "torch", "numpy", "scipy", "dadaptation", "lion-pytorch", "prodigyopt", "timm")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a result depends on."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
