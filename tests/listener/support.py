"""Listener configs and DICOM inputs for the listener tests."""
from __future__ import annotations

from pathlib import Path

from listener.config import load_config
from tests.listener.orthanc import free_port


def write_config(folder: Path, port: int | None = None, destinations=(), review: dict | None = None,
                 **listener) -> Path:
    """A listener.toml in ``folder`` (spool beside it), ``[listener]`` values overridable;
    ``review``: the ``[review]`` table, when given."""
    settings = {"ae_title": "MURA_AI", "host": "127.0.0.1", "port": port or free_port(), "spool_dir": "spool",
                "stable_age_s": 1.0, "min_free_disk_mb": 1, "log_format": "json", **listener}

    def value(v):
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    lines = ["[listener]"] + [f"{k} = {value(v)}" for k, v in settings.items() if not k.startswith("model_")]
    model = {k[len("model_"):]: v for k, v in settings.items() if k.startswith("model_")}
    if model:
        lines += ["", "[model]"] + [f"{k} = {value(v)}" for k, v in model.items()]
    for d in destinations:
        lines += ["", "[[destinations]]"] + [f"{k} = {value(v)}" for k, v in d.items()]
    if review is not None:
        lines += ["", "[review]"] + [f"{k} = {value(v)}" for k, v in review.items()]
    path = Path(folder) / "listener.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def load(folder: Path, **kwargs):
    return load_config(write_config(folder, **kwargs))
