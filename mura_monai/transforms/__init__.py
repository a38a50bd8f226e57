"""MONAI transforms for the papers' radiograph preprocessing (array and dictionary versions)."""
from __future__ import annotations

from mura_monai.transforms import array, dictionary
from mura_monai.transforms.array import *  # noqa: F403 - the names listed in array.__all__
from mura_monai.transforms.dictionary import *  # noqa: F403 - the names listed in dictionary.__all__

# one list per module, kept there; the package exports exactly their union
__all__ = [*array.__all__, *dictionary.__all__]
