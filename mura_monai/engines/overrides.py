"""Every documented bundle override takes effect or stops the run at once with one line.

MONAI's bundle CLI accepts any ``--key value``: a key the config never reads is silently added,
so ``--pooling max`` on a bundle without global pooling would train the default model and say
nothing. Each bundle lists in ``unsupported_overrides`` the README's common overrides it cannot
honour (defaulted to ``null`` in its config, so a value means the user gave one) with what to
use instead, and its ``initialize`` step calls :func:`check_overrides` with the values it reads.
A bundle-specific option whose bad value would otherwise surface as MONAI's traceback of a
failed config expression (``--loss_name`` typo, too few ``--max_epochs`` for three stages) is
named in ``choices`` or ``at_least`` so it is refused the same way, before anything loads.
"""
from __future__ import annotations

import re
from pathlib import Path

__all__ = ["OverrideRefused", "check_overrides"]

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_POOLINGS = ("avg", "max")
# yes/no options: the command line hands "false" over as a (truthy) string, so only as_flag's words pass
_FLAGS = ("resume", "metadata", "skip_missing_images", "batch_norm", "freeze_batchnorm")


class OverrideRefused(SystemExit):
    """Ends a ``monai.bundle run`` with its message as the one line on stderr and exit status 1.

    A SystemExit, because MONAI wraps any Exception raised in a config expression into a
    multi-screen traceback that buries the reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_overrides(bundle: str, values: dict, unsupported: dict | None = None, choices: dict | None = None,
                    at_least: dict | None = None) -> None:
    """Refuse an override ``bundle`` cannot honour, or a value no component would accept.

    Args:
        bundle: the bundle's name, for the message.
        values: the config values the bundle reads (``None`` where unset).
        unsupported: ``{override: what to use instead}`` for overrides this bundle has no use for.
        choices: ``{override: accepted values}`` for this bundle's own options (the library's
            constants, so the list cannot drift from what the components accept).
        at_least: ``{override: (minimum, why)}``, for a bound that depends on the bundle's plan.
    """
    for name, instead in (unsupported or {}).items():
        if values.get(name) is not None:
            raise OverrideRefused(f"{bundle} does not take --{name}: {instead}")
    from mura_monai.networks.weights import is_weights_source
    from mura_monai.transforms.enhancement import ENHANCEMENTS

    checks = {
        "enhancement": (lambda v: v in ENHANCEMENTS, f"one of {', '.join(ENHANCEMENTS)}"),
        "pooling": (lambda v: v in _POOLINGS, "avg or max"),
        "device": (lambda v: bool(_DEVICE.match(str(v))), "auto, cpu, cuda or cuda:N"),
        "image_size": (lambda v: _positive_int(v, 16), "a whole number of pixels, at least 16"),
        "batch_size": (lambda v: _positive_int(v, 1), "a whole number, at least 1"),
        "max_epochs": (lambda v: _positive_int(v, 1), "a whole number, at least 1"),
        "early_stop_patience": (lambda v: _positive_int(v, 0), "a whole number of validations (0: never stop early)"),
        "pretrained_path": (is_weights_source, "an existing weights file, imagenet, or an http(s):// or file:// URL "
                                               "naming its sha256 (name-<hex>.pth or #sha256=<hex>)"),
        "backbone_ckpt": (lambda v: v == "" or Path(str(v)).is_file(), "a model.pt a resnet50 bundle training left"),
        **{flag: (_is_flag, "true or false") for flag in _FLAGS},
    }
    for name, value in values.items():
        if value is None or name not in checks:
            continue
        valid, expected = checks[name]
        if not valid(value):
            raise OverrideRefused(f"{bundle}: --{name} {value!r} is not valid: give {expected}")
    for name, accepted in (choices or {}).items():
        value = values.get(name)
        if value is not None and value not in tuple(accepted):
            raise OverrideRefused(
                f"{bundle}: --{name} {value!r} is not valid: give one of {', '.join(map(str, accepted))}")
    for name, (minimum, why) in (at_least or {}).items():
        value = values.get(name)
        if value is not None and _positive_int(value, 1) and value < int(minimum):
            raise OverrideRefused(f"{bundle}: --{name} {value!r} is too few: give at least {int(minimum)} ({why})")


def _is_flag(value) -> bool:
    from mura_monai.model_settings import as_flag

    try:
        as_flag(value)
    except ValueError:
        return False
    return True


def _positive_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
