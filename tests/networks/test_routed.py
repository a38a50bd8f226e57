"""RoutedClassifier: each image goes to the model of the body part the router picks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mura_monai.constants import BODY_PART_INDEX, BODY_PARTS
from mura_monai.networks.routed import RoutedClassifier


class PixelRouter(nn.Module):
    """Router logits read from the image: pixel (0, 0, 0:7) of each image *is* its 7 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # something to appear in the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x[:, 0, 0, : len(BODY_PARTS)]


class Constant(nn.Module):
    """A part model answering ``value`` for every image, one logit each."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([value]))
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return self.bias.expand(x.shape[0], 1)


def _images(logits: list[list[float]]) -> torch.Tensor:
    """8x8 one-channel images whose first row starts with the given router logits."""
    x = torch.zeros(len(logits), 1, 8, 8)
    x[:, 0, 0, : len(BODY_PARTS)] = torch.tensor(logits)
    return x


def _prefers(part: str, strength: float = 5.0) -> list[float]:
    row = [0.0] * len(BODY_PARTS)
    row[BODY_PART_INDEX[part]] = strength
    return row


def test_images_go_to_their_part_model():
    parts = {"XR_HAND": Constant(1.0), "XR_WRIST": Constant(2.0), "XR_ELBOW": Constant(3.0)}
    model = RoutedClassifier(PixelRouter(), parts)
    order = ["XR_WRIST", "XR_HAND", "XR_WRIST", "XR_ELBOW", "XR_HAND"]
    out = model(_images([_prefers(p) for p in order]))
    assert out.shape == (5, 1)
    assert out[:, 0].tolist() == [2.0, 1.0, 2.0, 3.0, 1.0]
    assert model.last_route.tolist() == [BODY_PART_INDEX[p] for p in order]
    assert parts["XR_HAND"].seen == 2 and parts["XR_WRIST"].seen == 2 and parts["XR_ELBOW"].seen == 1


def test_last_route_follows_every_forward():
    model = RoutedClassifier(PixelRouter(), {"XR_HAND": Constant(1.0), "XR_WRIST": Constant(2.0)})
    assert model.last_route is None
    model(_images([_prefers("XR_HAND")]))
    assert model.last_route.tolist() == [BODY_PART_INDEX["XR_HAND"]]
    model(_images([_prefers("XR_WRIST"), _prefers("XR_WRIST")]))
    assert model.last_route.tolist() == [BODY_PART_INDEX["XR_WRIST"]] * 2
    assert not model.last_route.requires_grad


def test_unavailable_parts_are_never_chosen():
    model = RoutedClassifier(PixelRouter(), {"XR_HAND": Constant(1.0), "XR_WRIST": Constant(2.0)})
    # the router's favourite is a part without a model; its best *available* part must win
    rows = [
        [0.0, 50.0, 0.0, 0.3, 0.0, 0.0, 0.2],  # finger >> hand > wrist -> hand
        [9.0, 0.0, 0.0, -1.0, 9.0, 9.0, 0.5],  # elbow, humerus, shoulder >> wrist > hand -> wrist
        [0.0, 0.0, 0.0, -5.0, 0.0, 0.0, -4.0],  # all unavailable at 0, wrist least negative -> wrist
    ]
    out = model(_images(rows))
    assert model.last_route.tolist() == [BODY_PART_INDEX["XR_HAND"], BODY_PART_INDEX["XR_WRIST"], BODY_PART_INDEX["XR_WRIST"]]
    assert out[:, 0].tolist() == [1.0, 2.0, 2.0]


def test_single_part_takes_everything():
    model = RoutedClassifier(PixelRouter(), {"XR_SHOULDER": Constant(7.0)})
    out = model(_images([_prefers(p) for p in BODY_PARTS]))
    assert out[:, 0].tolist() == [7.0] * len(BODY_PARTS)
    assert set(model.last_route.tolist()) == {BODY_PART_INDEX["XR_SHOULDER"]}


def test_gradients_reach_the_chosen_part_models_only():
    parts = {"XR_HAND": Constant(1.0), "XR_WRIST": Constant(2.0)}
    model = RoutedClassifier(PixelRouter(), parts)
    model(_images([_prefers("XR_HAND"), _prefers("XR_HAND")])).sum().backward()
    assert parts["XR_HAND"].bias.grad.item() == 2.0
    assert parts["XR_WRIST"].bias.grad is None


def test_unknown_part_names_are_refused():
    with pytest.raises(ValueError, match="XR_KNEE"):
        RoutedClassifier(PixelRouter(), {"XR_HAND": Constant(1.0), "XR_KNEE": Constant(2.0)})
    with pytest.raises(ValueError, match="unknown"):
        RoutedClassifier(PixelRouter(), {"hand": Constant(1.0)})


def test_empty_part_dict_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        RoutedClassifier(PixelRouter(), {})


def test_state_dict_keys():
    model = RoutedClassifier(PixelRouter(), {"XR_HAND": Constant(1.0), "XR_WRIST": nn.Linear(2, 1)})
    keys = set(model.state_dict())
    assert keys == {"router.scale", "parts.XR_HAND.bias", "parts.XR_WRIST.weight", "parts.XR_WRIST.bias"}
    assert "available" not in keys  # non-persistent: checkpoints stay router.* + parts.*


def test_state_dict_round_trip():
    torch.manual_seed(0)
    make = lambda: RoutedClassifier(nn.Linear(4, len(BODY_PARTS)), {"XR_HAND": nn.Linear(4, 1), "XR_WRIST": nn.Linear(4, 1)})  # noqa: E731
    source, target = make(), make()
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(6, 4)
    assert torch.equal(source(x), target(x))
    assert torch.equal(source.last_route, target.last_route)


class TinyConvNet(nn.Module):
    """A part model with a spatial feature map for Grad-CAM; layer names are the same in every
    part, so only the routed model's full names tell them apart."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_cam_of_a_batch_routed_to_several_parts_explains_each_part_model():
    """A batch whose images go to different part models gets each image's map from its own part
    model (a routed model has no single CAM layer: one probe pass would pick one part's)."""
    from mura_monai.explain import compute_cam

    parts = {"XR_HAND": TinyConvNet(1), "XR_WRIST": TinyConvNet(2), "XR_ELBOW": TinyConvNet(3)}
    model = RoutedClassifier(PixelRouter(), parts).eval()
    order = ["XR_WRIST", "XR_HAND", "XR_ELBOW"]
    x = _images([_prefers(p) for p in order])
    x[:, :, 2:, :] = torch.rand(3, 1, 6, 8)
    assert model.explained_by(x) == [parts[p] for p in order]
    maps = compute_cam(model, x)
    assert maps.shape == (3, 1, 8, 8)
    for i, part in enumerate(order):
        alone = compute_cam(parts[part], x[i : i + 1])
        assert torch.allclose(maps[i : i + 1], alone)


def test_hybrid_forward_routes_and_scatters_as_forward():
    """What a hybrid export runs: the router and part models standing in for the network's own
    (exported graphs there), the routing and the scatter the network's own code."""
    parts = {"XR_HAND": Constant(1.0), "XR_WRIST": Constant(2.0), "XR_ELBOW": Constant(3.0)}
    model = RoutedClassifier(PixelRouter(), parts)
    assert list(model.hybrid_parts()) == ["router", "XR_HAND", "XR_WRIST", "XR_ELBOW"]
    assert model.hybrid_parts()["router"].outputs == ("body_part_logits",)
    x = _images([_prefers(p) for p in ["XR_WRIST", "XR_HAND", "XR_WRIST", "XR_ELBOW"]])
    expected = model(x)
    calls = []

    def standing_in(name, module):
        def run(images):
            calls.append((name, len(images)))
            return module(images) + 10.0 if name != "router" else module(images)
        return run

    standins = {name: standing_in(name, part.module) for name, part in model.hybrid_parts().items()}
    out = model.hybrid_forward(x, standins)
    assert out[:, 0].tolist() == [v + 10.0 for v in expected[:, 0].tolist()]
    assert sorted(calls) == [("XR_ELBOW", 1), ("XR_HAND", 1), ("XR_WRIST", 2), ("router", 4)]
    assert model.last_route.tolist() == [BODY_PART_INDEX[p] for p in ["XR_WRIST", "XR_HAND", "XR_WRIST", "XR_ELBOW"]]
