"""The order a reviewer meets studies in, and MONAI Label's active-learning strategies over it.

A reader's time goes first where the model may matter most: studies it calls abnormal (most
probable first), then those it is unsure of (most uncertain first), then the rest, newest first.
MONAI Label's ``/activelearning/{strategy}`` answers "which sample next"; here a sample is an
analysed study nobody has reviewed yet.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from listener.review.datastore import ReviewStudy

__all__ = ["STRATEGIES", "filter_studies", "next_study", "worklist_order"]


def _rank(study: ReviewStudy) -> tuple:
    r = study.result
    if r is not None and r.abnormal:
        group, within = 0, -r.probability
    elif r is not None and r.uncertain:
        group, within = 1, -float(r.uncertainty or 0)
    else:
        group, within = 2, -study.study.last_received
    return (not study.analysed, study.review != "unreviewed", group, within)


def worklist_order(studies: Sequence[ReviewStudy]) -> list[ReviewStudy]:
    """Unreviewed before reviewed; within each, abnormal, then uncertain, then the rest."""
    return sorted(studies, key=_rank)


def filter_studies(studies: Sequence[ReviewStudy], body_part: str = "", state: str = "") -> list[ReviewStudy]:
    """The worklist's filters: a MURA body part (``XR_WRIST``) and a review state."""
    return [s for s in studies if (not body_part or s.summary()["body_part"] == body_part)
            and (not state or s.review == state)]


def _first(candidates: list[ReviewStudy], rng: random.Random) -> ReviewStudy:
    return min(candidates, key=lambda s: s.study.last_received)  # as received: a plain FIFO reading


def _random(candidates: list[ReviewStudy], rng: random.Random) -> ReviewStudy:
    return rng.choice(sorted(candidates, key=lambda s: s.id))


def _uncertain(candidates: list[ReviewStudy], rng: random.Random) -> ReviewStudy:
    return max(candidates, key=lambda s: (float(s.result.uncertainty or 0), s.result.probability) if s.result else (0.0, 0.0))


def _abnormal(candidates: list[ReviewStudy], rng: random.Random) -> ReviewStudy:
    return max(candidates, key=lambda s: s.result.probability if s.result else 0.0)


STRATEGIES: dict[str, tuple[Callable[[list[ReviewStudy], random.Random], ReviewStudy], str]] = {
    "first": (_first, "Unreviewed studies in the order they arrived"),
    "random": (_random, "A random unreviewed study"),
    "uncertain": (_uncertain, "The unreviewed study the ensemble is least sure of (members' disagreement, "
                              "closeness to the threshold)"),
    "abnormal": (_abnormal, "The unreviewed study with the highest probability of abnormality"),
}


def next_study(studies: Sequence[ReviewStudy], strategy: str, body_part: str = "",
               seed: int | None = None) -> ReviewStudy | None:
    """The next analysed, unreviewed study by ``strategy``; None when none is left."""
    if strategy not in STRATEGIES:
        raise KeyError(strategy)
    candidates = [s for s in filter_studies(studies, body_part=body_part) if s.analysed and s.review == "unreviewed"]
    if not candidates:
        return None
    return STRATEGIES[strategy][0](candidates, random.Random(seed))
