"""Hold-out splits of a MURA training split, by patient.

Patel et al. hold 20 % of the training data out for validation and keep MURA's own valid split
for the final figures. Splitting images at random would put views of one patient on both
sides, and the model would be validated on patients it has seen; the split is by patient.

Reference: Patel K., Patel V., Patel S., Patel D., "Deep Learning For Abnormalities Detection in
Musculoskeletal Radiographs".
"""
from __future__ import annotations

import numpy as np

__all__ = ["holdout_split", "select_body_part"]


def holdout_split(datalist: list[dict], fraction: float = 0.2, seed: int = 0, group_key: str = "patient",
                  stratify_key: str | None = "body_part") -> tuple[list[dict], list[dict]]:
    """``(train, held_out)``: about ``fraction`` of the groups (patients) held out, deterministic in ``seed``.

    With ``stratify_key`` the fraction is taken within each stratum (body part by default, a
    patient counted in the stratum of their first image), so every part gets validation
    patients when it has at least two.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"hold-out fraction must be in [0, 1), got {fraction}")
    strata: dict[str, list[str]] = {}
    seen: set[str] = set()
    for record in datalist:
        group = str(record[group_key])
        if group not in seen:
            seen.add(group)
            strata.setdefault(str(record[stratify_key]) if stratify_key else "", []).append(group)
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for name in sorted(strata):
        groups = sorted(strata[name])
        n_held = int(round(len(groups) * fraction))
        if fraction > 0 and len(groups) >= 2:
            n_held = min(max(n_held, 1), len(groups) - 1)
        held.update(rng.permutation(groups)[:n_held].tolist())
    train = [r for r in datalist if str(r[group_key]) not in held]
    held_out = [r for r in datalist if str(r[group_key]) in held]
    return train, held_out


def select_body_part(datalist: list[dict], part: str | None) -> list[dict]:
    """The records of one body part; ``None`` (or ``"router"``, the router's target) keeps all."""
    if part in (None, "", "router"):
        return list(datalist)
    return [r for r in datalist if r["body_part"] == part]
