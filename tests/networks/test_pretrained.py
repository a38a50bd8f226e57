from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DenseNet169

from mura_monai.networks import densenet169, load_pretrained


def _torchvision_style(state: dict) -> dict:
    """MONAI DenseNet keys renamed the way torchvision names them ("denselayer1.norm1.weight")."""
    return {k.replace(".layers.", "."): v for k, v in state.items()}


def test_loads_torchvision_named_rgb_weights_into_grayscale_net(tmp_path):
    source = DenseNet169(spatial_dims=2, in_channels=3, out_channels=1000, pretrained=False)
    path = tmp_path / "imagenet.pth"
    torch.save({"state_dict": _torchvision_style(source.state_dict())}, path)
    net = densenet169(in_channels=1, pretrained_path=path)
    stem = net.state_dict()["features.conv0.weight"]
    assert torch.allclose(stem, source.state_dict()["features.conv0.weight"].sum(1, keepdim=True))
    key = "features.denseblock1.denselayer1.layers.conv1.weight"
    assert torch.equal(net.state_dict()[key], source.state_dict()[key])
    # the 1000-class head does not fit a 1-logit head and stays at its initialisation
    assert net.state_dict()["class_layers.out.weight"].shape == (1, 1664)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights.pt"):
        densenet169(pretrained_path=tmp_path / "weights.pt")


def test_unrelated_file_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no tensor"):
        load_pretrained(torch.nn.Linear(2, 2), path)


def test_no_path_keeps_random_init():
    net = torch.nn.Linear(2, 2)
    before = net.weight.clone()
    assert torch.equal(load_pretrained(net, "").weight, before)
