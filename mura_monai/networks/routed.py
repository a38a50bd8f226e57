"""Patel et al.'s two-stage model: a body-part router sends each radiograph to its part's model.

Held as one ``nn.Module`` so that the evaluator, ``mura-monai infer`` and the checkpoint
format are the same as for any single-network bundle: ``forward`` returns one abnormality
logit per image, whichever part model produced it.

Reference: Patel K., Patel V., Patel S., Patel D., "Deep Learning For Abnormalities Detection in
Musculoskeletal Radiographs".
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from mura_monai.constants import BODY_PARTS
from mura_monai.networks.parts import ExportPart

__all__ = ["RoutedClassifier"]


class RoutedClassifier(nn.Module):
    """Router (``len(BODY_PARTS)`` logits) plus one 1-logit model per body part.

    Args:
        router: the body-part classifier, output ``(B, 7)`` in ``BODY_PARTS`` order.
        part_models: body part name -> abnormality model. Parts without a model (not trained,
            e.g. restricted by ``--body_parts``) are never routed to: the router's choice is
            taken among the parts that have one.

    ``last_route`` keeps the body-part indices chosen in the latest forward pass, so the
    evaluation can report the router's accuracy.
    """

    def __init__(self, router: nn.Module, part_models: dict[str, nn.Module]) -> None:
        super().__init__()
        unknown = sorted(set(part_models) - set(BODY_PARTS))
        if unknown:
            raise ValueError(f"unknown body part(s) {unknown}; expected names from {list(BODY_PARTS)}")
        if not part_models:
            raise ValueError("a routed classifier needs at least one body-part model")
        self.router = router
        self.parts = nn.ModuleDict(dict(part_models))
        available = torch.tensor([p in self.parts for p in BODY_PARTS])
        self.register_buffer("available", available, persistent=False)
        self.last_route: torch.Tensor | None = None

    def route(self, x: torch.Tensor, router: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Body-part index per image, among the parts with a model (``router`` stands for the
        network's own, e.g. an exported graph of it)."""
        logits = (self.router if router is None else router)(x)
        logits = logits.masked_fill(~self.available.to(logits.device), float("-inf"))
        return logits.argmax(dim=1)

    def explained_by(self, x: torch.Tensor) -> list[nn.Module]:
        """Per image, the part model whose logit ``forward`` returns for it.

        A CAM must hook the layer of the model that actually scored the image: images of one
        batch go to different part models, whose layers have different names.
        """
        with torch.no_grad():
            route = self.route(x)
        return [self.parts[BODY_PARTS[i]] for i in route.tolist()]

    def hybrid_parts(self) -> dict[str, ExportPart]:
        """The router (``router``: image -> 7 body-part logits) and each part model (its body
        part's name: image -> logit), for an export in parts (:mod:`mura_monai.networks.parts`)."""
        return {"router": ExportPart(self.router, outputs=("body_part_logits",)),
                **{part: ExportPart(model) for part, model in self.parts.items()}}

    def hybrid_forward(self, x: torch.Tensor, parts: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> torch.Tensor:
        """:meth:`forward` on ``parts`` standing for :meth:`hybrid_parts`: the routing and the
        scatter of each part's logits back to its images are this network's either way."""
        return self.routed(x, parts)

    def routed(self, x: torch.Tensor, parts: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
               ) -> torch.Tensor:
        """Each image's logit from the model of its routed part (``parts``: ``router`` and the
        part models by body part, standing for this network's own modules)."""
        route = self.route(x, None if parts is None else parts["router"])
        self.last_route = route.detach()
        out = None
        for index in route.unique().tolist():
            selected = route == index
            part = BODY_PARTS[index]
            logits = (self.parts[part] if parts is None else parts[part])(x[selected])
            if out is None:
                out = logits.new_zeros((x.shape[0], *logits.shape[1:]))
            out[selected] = logits
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.routed(x)
