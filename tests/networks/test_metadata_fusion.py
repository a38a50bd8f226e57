"""The metadata network: age and sex change the logit; unknown demographics are a valid input."""
from __future__ import annotations

import pytest
import torch

from mura_monai.data.patient_metadata import metadata_vector
from mura_monai.model_settings import as_flag
from mura_monai.networks import MetadataFusionNet, densenet169, resnet50, with_metadata


@pytest.mark.parametrize("backbone, factory", [("densenet169", densenet169), ("resnet50", resnet50)])
def test_metadata_enters_the_logit_and_none_means_unknown(backbone, factory):
    torch.manual_seed(0)
    net = MetadataFusionNet(factory(in_channels=1), backbone).eval()
    x = torch.randn(2, 1, 64, 64)
    old = torch.from_numpy(metadata_vector(80.0, "F")).expand(2, -1)
    young = torch.from_numpy(metadata_vector(20.0, "M")).expand(2, -1)
    unknown = torch.from_numpy(metadata_vector(None, None)).expand(2, -1)
    with torch.no_grad():
        assert net(x, old).shape == (2, 1)
        assert not torch.allclose(net(x, old), net(x, young))
        assert torch.equal(net(x), net(x, unknown))
    assert "unknown" not in net.state_dict()  # a constant, not a weight


def test_image_weights_keep_their_names_under_image_net():
    image = densenet169(in_channels=1)
    net = with_metadata(image, "true")
    keys = set(net.state_dict())
    assert "image.net.features.conv0.weight" in keys and "classifier.weight" in keys
    assert net.classifier.in_features == 1664 + 16
    plain = densenet169(in_channels=1)
    assert with_metadata(plain, "false") is plain and with_metadata(plain, False) is plain


@pytest.mark.parametrize("value, flag", [("true", True), ("False", False), ("1", True), (0, False), (True, True)])
def test_as_flag_reads_command_line_words(value, flag):
    assert as_flag(value) is flag


def test_as_flag_refuses_other_words():
    with pytest.raises(ValueError, match="resume must be true or false"):
        as_flag("maybe", "resume")
