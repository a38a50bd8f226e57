"""Network factories for bundle configs."""
from __future__ import annotations

from mura_monai.networks.agcnn import AttentionGuidedCNN
from mura_monai.networks.factory import densenet169, efficientnet_b0, resnet50
from mura_monai.networks.freeze import count_parameters, freeze_all_but_last
from mura_monai.networks.metadata_fusion import MetadataFusionNet, with_metadata
from mura_monai.networks.pretrained import load_pretrained
from mura_monai.networks.siamese import Embedder, SiameseNet, siamese_net
from mura_monai.networks.svm_head import BaggedSVMHead, ResNetSVM, resnet_svm
from mura_monai.networks.vgg import VGG19, vgg19

__all__ = [
    "AttentionGuidedCNN",
    "BaggedSVMHead",
    "ResNetSVM",
    "Embedder",
    "SiameseNet",
    "siamese_net",
    "MetadataFusionNet",
    "VGG19",
    "count_parameters",
    "densenet169",
    "efficientnet_b0",
    "freeze_all_but_last",
    "load_pretrained",
    "resnet50",
    "resnet_svm",
    "vgg19",
    "with_metadata",
]
