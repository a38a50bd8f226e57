"""Where ``--pretrained_path`` weights come from: a local file, or a published URL fetched once.

The papers this project reproduces fine-tune ImageNet weights, and the files torchvision (and
MONAI, for EfficientNet) publish are the usual source. A URL is downloaded once into torch's hub
cache (``$TORCH_HOME/hub/checkpoints``, where ``torch.hub.load_state_dict_from_url`` keeps the same
files, so a machine that already ran torchvision or MONAI has them) and checked against the
SHA-256 it names: torchvision's convention puts the first hex digits of the hash in the file name
(``densenet169-b2777c0a.pth``); ``#sha256=<hex>`` after a URL gives it explicitly. A URL without
either is refused: weights that are not the published ones would train without any error. The
cached copy is checked on every use too, so a truncated or replaced file cannot load silently.
Hospitals and CI machines without a route to the internet keep passing a local file, or copy the
published file into the cache under its published name.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import torch

__all__ = ["IMAGENET", "PUBLISHED", "cached_download", "is_url", "is_weights_source", "resolve_weights"]

logger = logging.getLogger(__name__)

# "--pretrained_path imagenet": the PUBLISHED entry of the network's own backbone
IMAGENET = "imagenet"

# The published ImageNet weights of each backbone, with the SHA-256 prefix in the file name.
PUBLISHED = {
    # torchvision DenseNet169_Weights.IMAGENET1K_V1 (the weights Rajpurkar et al. started from)
    "densenet169": "https://download.pytorch.org/models/densenet169-b2777c0a.pth",
    # torchvision ResNet50_Weights.IMAGENET1K_V1, the original recipe, as in Han, Lee and Kim
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    # torchvision ResNet50_Weights.IMAGENET1K_V2 (torchvision's default since 2022, a longer recipe)
    "resnet50_v2": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    # torchvision VGG19_Weights / VGG19_BN_Weights.IMAGENET1K_V1; the BN layout must match --batch_norm
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "vgg19_bn": "https://download.pytorch.org/models/vgg19_bn-c79401a0.pth",
    # what MONAI's EfficientNetBN(pretrained=True) downloads: efficientnet-pytorch's names
    # (``_blocks.N.``), which load_pretrained nests into MONAI's stages. torchvision's own
    # efficientnet_b0 file (``features.S.B.block...``) has another layout and is not mapped.
    "efficientnet_b0":
        "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0/efficientnet-b0-355c32eb.pth",
}

URL_SCHEMES = ("http", "https", "file")
_HEX = re.compile(r"^[0-9a-f]+$")


def is_url(value) -> bool:
    """Whether ``value`` names a download (``http://``, ``https://``, ``file://``) rather than a path."""
    return isinstance(value, str) and urlsplit(value).scheme.lower() in URL_SCHEMES


def expected_sha256(url: str) -> str | None:
    """The SHA-256 (or its leading digits) ``url`` promises: ``#sha256=<hex>``, else torch's file-name convention."""
    parts = urlsplit(url)
    if parts.fragment:
        name, _, value = parts.fragment.partition("=")
        if name != "sha256" or not _HEX.match(value.lower()):
            raise ValueError(f"{url}: the only fragment understood is #sha256=<hex digits>")
        return value.lower()
    match = torch.hub.HASH_REGEX.search(os.path.basename(parts.path))
    return match[1] if match and match[1] else None


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cached_download(url: str) -> Path:
    """The local copy of ``url`` in torch's hub cache, downloaded and hash-checked on first use.

    Raises:
        ValueError: ``url`` names no hash, its download does not match it (nothing is kept in the
            cache), or the cached copy does not (it is left for the user to inspect or delete).
        OSError: the download failed (no network, no such file behind a ``file://`` URL).
    """
    expected = expected_sha256(url)
    if expected is None:
        raise ValueError(f"{url}: no SHA-256 to check the download against; name the file "
                         f"<name>-<first hex digits of its sha256>.pth as torchvision does, or append #sha256=<hex>")
    parts = urlsplit(url)
    filename = os.path.basename(parts.path)
    if not filename:
        raise ValueError(f"{url}: the URL names no file")
    cache = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cache.is_file():
        actual = _sha256(cache)
        if not actual.startswith(expected):
            raise ValueError(f"cached weights {cache} do not match {url}: expected sha256 {expected}, got {actual}; "
                             f"delete the file to download it again")
        logger.info("pretrained weights %s: cached at %s", url, cache)
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    source = urlunsplit(parts._replace(fragment=""))
    logger.info("downloading pretrained weights %s to %s", source, cache)
    try:  # torch writes to a temporary file and moves it into place only once the hash matches
        torch.hub.download_url_to_file(source, str(cache), hash_prefix=expected, progress=sys.stderr.isatty())
    except RuntimeError as err:
        if "hash" not in str(err):
            raise
        raise ValueError(f"{url}: the download does not match its sha256: {err}; nothing was kept in {cache.parent}") from None
    except OSError as err:  # urllib's URLError is an OSError
        raise OSError(f"could not download {url} ({getattr(err, 'reason', err)}); without a network, pass the "
                      f"local file, or copy it to {cache}") from err
    return cache


def resolve_weights(path: str | Path | None, backbone: str | None = None) -> Path | None:
    """The local file ``path`` names: itself, a URL's cached download, or for ``imagenet`` the backbone's published file.

    Args:
        path: a local file, an ``http(s)://`` or ``file://`` URL, ``imagenet``, or ``None``/``""`` (no weights).
        backbone: the network's key in :data:`PUBLISHED`, which ``imagenet`` stands for.

    Raises:
        FileNotFoundError: naming ``path`` when a local file does not exist.
        ValueError: ``imagenet`` for a network without published weights, or a hash problem
            (see :func:`cached_download`).
    """
    if path is None or str(path) == "":
        return None
    value = str(path)
    if value == IMAGENET:
        if backbone not in PUBLISHED:
            raise ValueError(f"--pretrained_path {IMAGENET}: no published weights for {backbone or 'this network'}; "
                             f"give a file or URL")
        value = PUBLISHED[backbone]
    if is_url(value):
        return cached_download(value)
    local = Path(value)
    if not local.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {local}")
    return local


def is_weights_source(value) -> bool:
    """What the override checker accepts: nothing, ``imagenet``, a URL naming its hash, or an existing file."""
    if value == "" or value == IMAGENET:
        return True
    if is_url(value):
        try:
            return expected_sha256(value) is not None and bool(os.path.basename(urlsplit(value).path))
        except ValueError:
            return False
    return Path(str(value)).is_file()
