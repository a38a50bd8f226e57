"""``--pretrained_path`` as a published URL: downloaded once into torch's hub cache, hash-checked,
loaded like a local file; and every tensor of each backbone's published file layout finds its slot.

The layouts are written out from the publishers' sources (torchvision's DenseNet, whose published
file predates PyTorch's ban on dots in module names; efficientnet-pytorch's flat block numbering,
the file MONAI's ``pretrained=True`` downloads), not derived from this project's networks.
ResNet-50 and VGG-19 are built with torchvision's names and shapes, which tests/networks/test_factories.py
checks tensor by tensor; they are loaded here once more through the same path as a download.
"""
from __future__ import annotations

import hashlib
import urllib.request

import pytest
import torch

from mura_monai.engines import OverrideRefused, check_overrides
from mura_monai.networks import densenet169, efficientnet_b0, load_pretrained, resnet50, vgg19
from mura_monai.networks.weights import IMAGENET, PUBLISHED, expected_sha256, is_weights_source, resolve_weights
from tests.networks.test_factories import _torchvision_resnet50_shapes, _torchvision_vgg19_shapes

_BN = ("weight", "bias", "running_mean", "running_var")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fresh torch hub cache through $TORCH_HOME, as a user would set it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would win over $TORCH_HOME
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def _published(tmp_path, state: dict, stem: str, hash_digits: str | None = None) -> tuple:
    """``state`` saved as ``<stem>-<first 8 hex digits of its sha256>.pth`` (torchvision's naming), and its file:// URL."""
    staging = tmp_path / "staging.pth"
    torch.save(state, staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    path = tmp_path / "published" / f"{stem}-{hash_digits or digest[:8]}.pth"
    path.parent.mkdir(exist_ok=True)
    staging.rename(path)
    return path, path.as_uri(), digest


def test_url_downloads_once_into_the_hub_cache_and_loads(tmp_path, hub, monkeypatch):
    source = resnet50(in_channels=3, out_channels=1000).state_dict()
    path, url, _ = _published(tmp_path, source, "resnet50")
    net = resnet50(in_channels=3, out_channels=1, pretrained_path=url).state_dict()
    cached = hub / path.name
    assert cached.read_bytes() == path.read_bytes()
    assert all(torch.equal(net[k], v) for k, v in source.items() if not k.startswith("fc."))
    # the second use reads the cache: the published file is gone and no download is attempted
    path.unlink()
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded again"))
    again = resnet50(in_channels=1, pretrained_path=url).state_dict()
    assert torch.allclose(again["conv1.weight"], source["conv1.weight"].sum(1, keepdim=True))
    assert list(hub.iterdir()) == [cached]


def test_explicit_sha256_fragment_is_checked_in_full(tmp_path, hub):
    path, url, digest = _published(tmp_path, {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}, "linear")
    plain = tmp_path / "linear.pth"  # no hash in the name: only the fragment vouches for it
    path.rename(plain)
    assert expected_sha256(f"{plain.as_uri()}#sha256={digest}") == digest
    net = load_pretrained(torch.nn.Linear(2, 2), f"{plain.as_uri()}#sha256={digest}")
    assert torch.equal(net.weight, torch.ones(2, 2))
    assert (hub / "linear.pth").is_file()


def test_wrong_hash_names_url_and_both_hashes_and_leaves_nothing_in_the_cache(tmp_path, hub):
    _, url, digest = _published(tmp_path, {"weight": torch.ones(2, 2)}, "linear", hash_digits="deadbeef")
    with pytest.raises(ValueError) as refused:
        load_pretrained(torch.nn.Linear(2, 2), url)
    message = str(refused.value)
    assert url in message and "deadbeef" in message and digest in message
    assert not hub.exists() or list(hub.iterdir()) == []  # not even torch's .partial file


def test_corrupt_cached_file_is_named_not_loaded(tmp_path, hub):
    path, url, digest = _published(tmp_path, {"weight": torch.ones(2, 2)}, "linear")
    hub.mkdir(parents=True)
    (hub / path.name).write_bytes(path.read_bytes()[:-10])  # a truncated earlier download
    with pytest.raises(ValueError, match="cached weights .*" + path.name) as refused:
        load_pretrained(torch.nn.Linear(2, 2), url)
    assert digest[:8] in str(refused.value) and "delete" in str(refused.value)


def test_url_without_a_hash_is_refused_before_downloading(tmp_path, hub):
    plain = tmp_path / "weights.pth"
    torch.save({"weight": torch.ones(2, 2)}, plain)
    with pytest.raises(ValueError, match="no SHA-256"):
        load_pretrained(torch.nn.Linear(2, 2), plain.as_uri())
    assert not hub.exists()


def test_unreachable_url_says_how_to_work_offline(tmp_path, hub):
    url = (tmp_path / "gone-0123abcd.pth").as_uri()
    with pytest.raises(OSError, match="could not download .*gone-0123abcd.pth.*copy it to") as failed:
        load_pretrained(torch.nn.Linear(2, 2), url)
    assert str(hub / "gone-0123abcd.pth") in str(failed.value)
    assert list(hub.iterdir()) == []


def test_missing_local_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-weights.pth"):
        resolve_weights(tmp_path / "no-such-weights.pth")


def test_imagenet_names_the_backbones_published_file(tmp_path, hub, monkeypatch):
    fetched = []
    monkeypatch.setattr("mura_monai.networks.weights.cached_download", lambda url: fetched.append(url) or tmp_path)
    resolve_weights(IMAGENET, "densenet169")
    resolve_weights(IMAGENET, "vgg19_bn")
    assert fetched == [PUBLISHED["densenet169"], PUBLISHED["vgg19_bn"]]
    with pytest.raises(ValueError, match="no published weights"):
        resolve_weights(IMAGENET, None)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_published_url_names_its_hash(name):
    url = PUBLISHED[name]
    assert url.startswith("https://") and len(expected_sha256(url)) == 8
    assert is_weights_source(url)


def test_override_checker_accepts_urls_and_refuses_a_missing_path(tmp_path):
    local = tmp_path / "w.pth"
    local.write_bytes(b"")
    for value in ("", IMAGENET, PUBLISHED["densenet169"], (tmp_path / "x-0123abcd.pth").as_uri(),
                  "https://example.org/w.pth#sha256=" + "0" * 64, str(local)):
        check_overrides("densenet169_wbce", {"pretrained_path": value})
    for value in ("/no/such/weights.pt", "https://example.org/weights.pth", "https://example.org/w.pth#md5=00"):
        with pytest.raises(OverrideRefused) as refused:
            check_overrides("densenet169_wbce", {"pretrained_path": value})
        assert refused.value.message.startswith(f"densenet169_wbce: --pretrained_path {value!r} is not valid: give ")
        assert "\n" not in refused.value.message


# --- the publishers' layouts -------------------------------------------------------------------

def _torchvision_densenet169_file() -> dict[str, tuple]:
    """densenet169-b2777c0a.pth: torchvision's names, its dense layers' pre-0.4 ``norm.1``/``conv.1``, no num_batches_tracked."""
    shapes = {"features.conv0.weight": (64, 3, 7, 7), **{f"features.norm0.{b}": (64,) for b in _BN}}
    channels = 64
    for block, layers in enumerate((6, 12, 32, 32), start=1):
        for layer in range(1, layers + 1):
            p, width = f"features.denseblock{block}.denselayer{layer}", channels + (layer - 1) * 32
            shapes.update({f"{p}.norm.1.{b}": (width,) for b in _BN})
            shapes[f"{p}.conv.1.weight"] = (128, width, 1, 1)
            shapes.update({f"{p}.norm.2.{b}": (128,) for b in _BN})
            shapes[f"{p}.conv.2.weight"] = (32, 128, 3, 3)
        channels += layers * 32
        if block < 4:
            shapes.update({f"features.transition{block}.norm.{b}": (channels,) for b in _BN})
            shapes[f"features.transition{block}.conv.weight"] = (channels // 2, channels, 1, 1)
            channels //= 2
    shapes.update({f"features.norm5.{b}": (channels,) for b in _BN})
    shapes.update({"classifier.weight": (1000, channels), "classifier.bias": (1000,)})
    assert channels == 1664
    return shapes


def _efficientnet_pytorch_b0_file() -> dict[str, tuple]:
    """efficientnet-b0-355c32eb.pth: efficientnet-pytorch's B0, blocks numbered 0..15 across its 7 stages."""
    bn = lambda prefix, c: {f"{prefix}.{b}": (c,) for b in _BN}  # noqa: E731
    shapes = {"_conv_stem.weight": (32, 3, 3, 3), **bn("_bn0", 32)}
    # (repeats, kernel, expansion, output channels) of Tan and Le's B0; squeeze-excitation ratio 0.25
    stages, c_in, idx = ((1, 3, 1, 16), (2, 3, 6, 24), (2, 5, 6, 40), (3, 3, 6, 80), (3, 5, 6, 112), (4, 5, 6, 192),
                         (1, 3, 6, 320)), 32, 0
    for repeats, kernel, expand, c_out in stages:
        for _ in range(repeats):
            p, hidden, squeezed = f"_blocks.{idx}", c_in * expand, max(1, int(c_in * 0.25))
            if expand != 1:
                shapes.update({f"{p}._expand_conv.weight": (hidden, c_in, 1, 1), **bn(f"{p}._bn0", hidden)})
            shapes.update({f"{p}._depthwise_conv.weight": (hidden, 1, kernel, kernel), **bn(f"{p}._bn1", hidden)})
            shapes.update({f"{p}._se_reduce.weight": (squeezed, hidden, 1, 1), f"{p}._se_reduce.bias": (squeezed,),
                           f"{p}._se_expand.weight": (hidden, squeezed, 1, 1), f"{p}._se_expand.bias": (hidden,)})
            shapes.update({f"{p}._project_conv.weight": (c_out, hidden, 1, 1), **bn(f"{p}._bn2", c_out)})
            c_in, idx = c_out, idx + 1
    shapes.update({"_conv_head.weight": (1280, 320, 1, 1), **bn("_bn1", 1280)})
    shapes.update({"_fc.weight": (1000, 1280), "_fc.bias": (1000,)})
    assert idx == 16
    return shapes


def _tagged(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Each tensor filled with its own value (1000 + its index), so where it landed can be read back."""
    return {k: torch.full(shape, 1000.0 + i) for i, (k, shape) in enumerate(shapes.items())}


def _vgg_features(batch_norm: bool) -> dict[str, tuple]:
    """torchvision's vgg19(_bn) convolutions and the 1000-class layer; the 4096-wide layers (119M values) left out."""
    return {k: v for k, v in _torchvision_vgg19_shapes(batch_norm).items() if not k.startswith(("classifier.0", "classifier.3"))}


@pytest.mark.parametrize(("name", "layout", "build", "head"), [
    ("densenet169", _torchvision_densenet169_file, lambda p: densenet169(in_channels=3, pretrained_path=p), "classifier."),
    ("resnet50", _torchvision_resnet50_shapes, lambda p: resnet50(in_channels=3, pretrained_path=p), "fc."),
    ("efficientnet-b0", _efficientnet_pytorch_b0_file, lambda p: efficientnet_b0(in_channels=3, out_channels=7,
                                                                              pretrained_path=p), "_fc."),
    ("vgg19", lambda: _vgg_features(False), lambda p: vgg19(in_channels=3, batch_norm=False, hidden_features=8,
                                                            pretrained_path=p), "classifier."),
    ("vgg19_bn", lambda: _vgg_features(True), lambda p: vgg19(in_channels=3, batch_norm=True, hidden_features=8,
                                                              pretrained_path=p), "classifier."),
])
def test_every_backbone_tensor_of_the_published_layout_loads(tmp_path, hub, name, layout, build, head):
    source = _tagged(layout())
    _, url, _ = _published(tmp_path, source, name)
    state = build(url).state_dict()
    landed = {float(v.flatten()[0]) for v in state.values() if v.numel() and bool((v == v.flatten()[0]).all())}
    missing = [k for k, v in source.items() if not k.startswith(head) and float(v.flatten()[0]) not in landed]
    assert missing == []
    assert len(landed & {float(v.flatten()[0]) for v in source.values()}) == sum(not k.startswith(head) for k in source)


def test_file_url_reaches_the_network_through_the_bundle_config(tmp_path, hub, tiny_mura_root):
    """What ``--pretrained_path file:///...`` does in a bundle: accepted by the check, loaded by network_def."""
    from tests.bundles.test_overrides import _parser

    source = densenet169(in_channels=1).state_dict()
    _, url, _ = _published(tmp_path, source, "densenet169")
    parser = _parser("densenet169_wbce", tiny_mura_root, pretrained_path=url)
    parser.get_parsed_content("check_overrides")
    net = parser.get_parsed_content("network_def").state_dict()
    assert all(torch.equal(net[k], v) for k, v in source.items())


def test_http_url_is_fetched_through_urllib(tmp_path, hub, monkeypatch):
    """An https:// URL takes the same path as file://: torch's downloader, given the published name's hash."""
    path, _, _ = _published(tmp_path, {"weight": torch.ones(2, 2)}, "linear")
    opened = []
    real_urlopen = urllib.request.urlopen

    def urlopen(request, *args, **kwargs):
        opened.append(request.full_url)
        return real_urlopen(path.as_uri())

    monkeypatch.setattr(torch.hub, "urlopen", urlopen)
    url = f"https://download.example.org/models/{path.name}"
    assert torch.equal(load_pretrained(torch.nn.Linear(2, 2), url).weight, torch.ones(2, 2))
    assert opened == [url] and (hub / path.name).is_file()
