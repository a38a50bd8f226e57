"""The attention-guided CNN: the crop follows the global branch's attention; stages freeze what the paper fixes."""
from __future__ import annotations

import pytest
import torch

from mura_monai.explain import compute_cam, target_layer
from mura_monai.networks.agcnn import AttentionGuidedCNN, attention_boxes, attention_heatmap, crop_boxes


def _map_with_blobs(blobs, size=8, channels=4):
    """A feature map, ``(1, C, size, size)``, hot where ``blobs`` ((row, col, value) cells) say."""
    fmap = torch.zeros(1, channels, size, size)
    for row, col, value in blobs:
        fmap[0, row % channels, row, col] = value
    return fmap


def test_heatmap_is_max_absolute_activation_scaled_to_unit_range():
    fmap = torch.zeros(1, 3, 2, 2)
    fmap[0, 0, 0, 0], fmap[0, 1, 0, 0], fmap[0, 2, 1, 1] = 1.0, -4.0, 2.0
    heat = attention_heatmap(fmap)
    assert torch.allclose(heat[0], torch.tensor([[1.0, 0.0], [0.0, 0.5]]))


def test_box_covers_the_largest_hot_region_not_the_hottest_pixel():
    # one very hot cell at the top left, a 2x3 block of warm cells lower right
    blobs = [(0, 0, 10.0)] + [(r, c, 8.0) for r in (5, 6) for c in (4, 5, 6)]
    heat = attention_heatmap(_map_with_blobs(blobs))
    (box,) = attention_boxes(heat, (64, 64), threshold=0.7, min_fraction=0.0)
    top, left, bottom, right = box
    # feature cell (r, c) covers input pixels [8r, 8r + 8): the block is rows 40..56, cols 32..56
    assert 36 <= top <= 44 and 52 <= bottom <= 60 and 28 <= left <= 36 and 52 <= right <= 60
    assert top > 8 and left > 8  # the single hot cell's region was not chosen


def test_small_regions_are_widened_about_their_centre_and_stay_inside():
    heat = attention_heatmap(_map_with_blobs([(7, 7, 1.0)]))
    (box,) = attention_boxes(heat, (64, 64), threshold=0.7, min_fraction=0.5)
    top, left, bottom, right = box
    assert (bottom - top, right - left) == (32, 32) and bottom == 64 and right == 64


def test_constant_attention_keeps_the_whole_image():
    assert attention_boxes(torch.zeros(2, 4, 4), (32, 48)) == [(0, 0, 32, 48)] * 2


def test_local_branch_input_is_the_attended_region_resized():
    net = AttentionGuidedCNN(in_channels=1, min_crop_fraction=0.0)
    image = torch.zeros(1, 1, 64, 64)
    image[0, 0, 40:56, 32:56] = torch.linspace(0, 1, 16 * 24).reshape(16, 24)  # a gradient only in that region
    fmap = _map_with_blobs([(r, c, 1.0) for r in (5, 6) for c in (4, 5, 6)])
    boxes = net.local_boxes(image, fmap)
    crop = crop_boxes(image, boxes, (64, 64))
    assert crop.shape == (1, 1, 64, 64)
    # the crop is the gradient region blown up: nearly all of it is non-zero, as in the source region
    assert (crop > 0).float().mean() > 0.6
    assert (image > 0).float().mean() < 0.1


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return AttentionGuidedCNN(in_channels=1)


@pytest.mark.parametrize("stage", ["global", "local", "fusion"])
def test_each_stage_trains_only_its_branch(net, stage):
    net.set_stage(stage)
    net.train()
    trainable = {name.split(".")[0] for name, p in net.named_parameters() if p.requires_grad}
    assert trainable == {f"{stage}_branch" if stage != "fusion" else "fusion"}
    frozen_branches = [b for b in ("global_branch", "local_branch") if b.split("_")[0] != stage]
    assert all(not getattr(net, b).training for b in frozen_branches)  # their BatchNorm statistics stay


def test_forward_returns_the_stage_logit(net):
    x = torch.randn(2, 1, 64, 64)
    net.eval()
    net.set_stage("fusion")
    with torch.no_grad():
        logits = net.branch_logits(x)
        out = net(x)
    assert set(logits) == {"global", "local", "fusion"}
    assert out.shape == (2, 1) and torch.equal(out, logits["fusion"])
    net.set_stage("global")
    with torch.no_grad():
        assert torch.equal(net(x), logits["global"])
    net.set_stage("fusion")


def test_fusion_reads_the_local_branch(net):
    x = torch.randn(1, 1, 64, 64)
    net.eval()
    with torch.no_grad():
        before = net(x).clone()
        net.local_branch.net.fc.weight.add_(1.0)  # the local classifier does not enter the fusion
        unchanged = net(x).clone()
        net.local_branch.net.layer4[-1].conv3.weight.mul_(3.0)  # the local features do
        changed = net(x)
    assert torch.equal(before, unchanged) and not torch.allclose(before, changed)


def test_cam_reads_the_global_branch(net):
    net.set_stage("fusion")
    assert target_layer(net) == "global_branch.net.layer4"
    cam = compute_cam(net, torch.randn(1, 1, 64, 64))
    assert cam.shape == (1, 1, 64, 64) and float(cam.max()) <= 1.0


def test_densenet_backbone_and_unknown_names():
    dense = AttentionGuidedCNN(backbone="densenet169", stage="local").eval()
    with torch.no_grad():
        assert dense(torch.randn(1, 1, 64, 64)).shape == (1, 1)
    with pytest.raises(ValueError, match="backbone"):
        AttentionGuidedCNN(backbone="vgg")
    with pytest.raises(ValueError, match="stage"):
        dense.set_stage("both")


def test_stage_starts_build_on_the_earlier_stages():
    net = AttentionGuidedCNN(in_channels=1).eval()
    x = torch.randn(2, 1, 64, 64)
    net.start_stage("local")
    assert all(torch.equal(a, b) for a, b in zip(net.global_branch.state_dict().values(),
                                                  net.local_branch.state_dict().values()))
    net.local_branch.net.layer4[-1].conv3.weight.mul_(2.0)  # the branches differ again
    net.start_stage("fusion")
    with torch.no_grad():
        logits = net.branch_logits(x)
    assert torch.allclose(logits["fusion"], (logits["global"] + logits["local"]) / 2, atol=1e-5)


@pytest.mark.parametrize("stage", ["global", "local", "fusion"])
def test_hybrid_forward_on_the_stage_s_parts_is_forward(net, stage):
    """What a hybrid export runs: the output stage's parts (modules of their own weights here,
    exported graphs there) with the network's own crop between them."""
    x = torch.randn(3, 1, 64, 64)
    net.eval()
    net.set_stage(stage)
    parts = net.hybrid_parts()
    assert list(parts) == ["global", "local", "fusion"][: ["global", "local", "fusion"].index(stage) + 1]
    owners = {"global": net.global_branch, "local": net.local_branch, "fusion": net.fusion}
    for name, part in parts.items():  # each part holds its own weights only: a traced file keeps every weight it holds
        assert {id(p) for p in part.module.parameters()} == {id(p) for p in owners[name].parameters()}
    with torch.no_grad():
        assert torch.equal(net.hybrid_forward(x, {name: part.module for name, part in parts.items()}), net(x))
        fmap, pooled, logit = parts["global"].module(x)
        assert fmap.shape[:2] == (3, net.global_branch.n_features) and pooled.shape == (3, net.global_branch.n_features)
        assert [t.shape for t in parts["global"].example(x)] == [x.shape]
        if stage == "fusion":
            assert [t.shape for t in parts["fusion"].example(x)] == [pooled.shape, pooled.shape]
    net.set_stage("fusion")
