"""Image features joined with patient age and sex (Han, Lee and Kim's "patient characteristics").

The image network's pooled features and a small embedding of the metadata vector
(:func:`~mura_monai.metadata_encoding.metadata_vector`) are classified together by one
linear layer. The image network keeps its module names under ``image.net``, so its pretrained
weights still load, and an unknown age and sex is an input like any other: a study from a PACS
that strips demographics is scored from its pixels.

The network is exported whole as one graph of two inputs, ``image`` and ``metadata``
(:meth:`MetadataFusionNet.whole_part`, :mod:`mura_monai.export`); an exported graph has no
default for its second input, so the backends feed it the unknown vector when no age and sex
are given, as :meth:`MetadataFusionNet.forward` does.

Reference: Han S.J., Lee C.I., Kim S.-J., "Development of medical aid artificial intelligence
through detection of musculoskeletal X-ray abnormalities using artificial neural networks in medical
image data".
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mura_monai.metadata_encoding import N_METADATA, metadata_vector
from mura_monai.model_settings import as_flag
from mura_monai.networks.agcnn import SplitBackbone
from mura_monai.networks.parts import ExportPart

__all__ = ["MetadataFusionNet", "with_metadata"]


class MetadataFusionNet(nn.Module):
    """``forward(x, metadata=None)`` → one abnormality logit per image.

    Args:
        image_net: a built ResNet-50 or DenseNet-169 from :mod:`mura_monai.networks`.
        backbone: which of the two it is (``resnet50`` / ``densenet169``).
        n_metadata: length of the metadata vector.
        hidden: width of the metadata embedding.
    """

    uses_metadata = True

    def __init__(self, image_net: nn.Module, backbone: str = "densenet169", n_metadata: int = N_METADATA,
                 hidden: int = 16) -> None:
        super().__init__()
        self.image = SplitBackbone(backbone, net=image_net)
        # the image network's own classifier is replaced by the joint one below
        if backbone == "densenet169":
            image_net.class_layers.out = nn.Identity()
        else:
            image_net.fc = nn.Identity()
        self.metadata = nn.Sequential(nn.Linear(n_metadata, hidden), nn.ReLU())
        self.classifier = nn.Linear(self.image.n_features + hidden, 1)
        self.register_buffer("unknown", torch.from_numpy(metadata_vector(None, None)), persistent=False)

    def forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        features = self.image.pooled(self.image.feature_map(x))
        if metadata is None:
            metadata = self.unknown.expand(x.shape[0], -1)
        joint = torch.cat([features, self.metadata(metadata.to(features.dtype))], dim=1)
        return self.classifier(joint)

    def whole_part(self) -> ExportPart:
        """The whole network as the one graph of its export, of two inputs (MONAI's bundle
        exporters pass the image alone): traced on age and sex known and unknown alike, since
        the graph takes the vector as it comes (an absent one is the caller's to fill in)."""
        return ExportPart(self, inputs=("image", "metadata"), outputs=("logits",), example=_example_inputs)


_EXAMPLE_PEOPLE = ((45.0, "M"), (None, None))


def _example_inputs(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    vectors = [metadata_vector(*_EXAMPLE_PEOPLE[i % len(_EXAMPLE_PEOPLE)]) for i in range(len(image))]
    return image, torch.from_numpy(np.stack(vectors))


def with_metadata(image_net: nn.Module, metadata: bool | str, backbone: str = "densenet169") -> nn.Module:
    """The bundle configs' switch: the image network alone, or joined with age and sex.

    ``metadata`` may be the string a command line gave (``--metadata true`` reaches the config
    as ``"true"``, which Python would call truthy even when it says ``"false"``).
    """
    return MetadataFusionNet(image_net, backbone) if as_flag(metadata, "metadata") else image_net
