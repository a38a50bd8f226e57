"""The settings a trained model depends on, stored beside its checkpoint.

A bundle trained with ``--image_size 128 --enhancement clahe`` must be evaluated and served
with the same input pipeline. Training writes them to ``<ckpt_dir>/model_settings.json``;
``mura-monai evaluate`` and ``mura-monai infer`` read them back as config overrides.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["SETTINGS_FILE", "as_flag", "save_model_settings", "load_model_settings"]

SETTINGS_FILE = "model_settings.json"


def save_model_settings(ckpt_dir: str | Path, **settings) -> Path:
    """Write ``settings`` (JSON-serialisable override values) to ``ckpt_dir/model_settings.json``."""
    path = Path(ckpt_dir) / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True))
    return path


def load_model_settings(ckpt_dir: str | Path) -> dict:
    """The recorded settings, or ``{}`` for a checkpoint trained elsewhere (config defaults apply)."""
    path = Path(ckpt_dir) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def as_flag(value, name: str = "value") -> bool:
    """A yes/no setting from a config or a command line.

    ``--resume true`` reaches a bundle config as the string ``"true"``, and ``--resume false``
    as ``"false"``, which Python calls truthy: the strings are read for what they say.
    """
    if isinstance(value, str):
        word = value.strip().lower()
        if word not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return word in ("true", "1", "yes")
    return bool(value)
