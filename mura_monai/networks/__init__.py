"""Network factories for bundle configs."""
from __future__ import annotations

from mura_monai.networks.factory import densenet169
from mura_monai.networks.pretrained import load_pretrained

__all__ = ["densenet169", "load_pretrained"]
