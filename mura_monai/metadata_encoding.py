"""How patient age and sex enter a network: the contract between the data layer that reads them
and the networks that take them, kept apart so that neither package imports the other."""
from __future__ import annotations

import numpy as np

__all__ = ["N_METADATA", "metadata_vector"]

N_METADATA = 4  # age / 100, age missing, sex M, sex F (both 0: unknown)


def metadata_vector(age: float | None, sex: str | None) -> np.ndarray:
    """The network's metadata input: ``[age / 100, age missing, male, female]``."""
    known = age is not None and np.isfinite(age)
    sex = str(sex or "").strip().upper()[:1]
    return np.array([age / 100.0 if known else 0.0, 0.0 if known else 1.0, float(sex == "M"), float(sex == "F")],
                    dtype=np.float32)
