"""The fixed computations of a network that decides on the data between them.

A network whose ``forward`` takes a decision on each input (where to crop, which model scores)
has no faithful single traced graph: tracing would freeze the example input's decision. Such a
network names its fixed computations as :class:`ExportPart` objects (``hybrid_parts``) and runs
its forward on any callables standing for them (``hybrid_forward``): its own modules when eager,
exported graphs of them otherwise (:mod:`mura_monai.export` writes one file per part,
:class:`mura_monai.backends.HybridRunner` runs them). The decisions stay in the network's own
Python either way.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ExportPart", "image_example"]


def image_example(image: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A part that reads an image batch (or a crop of its size) is traced on the example image."""
    return (image,)


@dataclass(frozen=True)
class ExportPart:
    """One fixed computation of a hybrid network, exported as a graph of its own.

    Attributes:
        module: the computation, holding only its own weights (a traced file keeps every weight
            of the module it traced).
        inputs: the graph's input names, one per argument of ``module``.
        outputs: the graph's output names, one per tensor ``module`` returns.
        example: the example arguments to trace ``module`` with, from an example image batch.
    """

    module: nn.Module
    inputs: tuple[str, ...] = ("image",)
    outputs: tuple[str, ...] = ("logits",)
    example: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] = image_example
