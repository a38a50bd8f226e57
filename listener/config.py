"""``listener.toml``: the keys of docs/formats.md, checked once at start so a typo fails loudly.

A PACS administrator edits this file by hand; an unknown key or a wrong type is reported with
its table and name rather than ignored (a misspelt ``allowed_calling_aets`` would otherwise
leave the service open to every modality).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

__all__ = ["ConfigError", "Destination", "ListenerConfig", "ListenerSettings", "ModelSettings", "ReviewSettings",
           "load_config"]


class ConfigError(ValueError):
    """listener.toml is missing, unparsable, or holds an unknown key or a bad value."""


@dataclass
class ListenerSettings:
    ae_title: str = "MURA_AI"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aets: list[str] = field(default_factory=list)
    spool_dir: str = "var/spool"
    stable_age_s: float = 10.0
    min_free_disk_mb: int = 500           # below this, C-STORE answers "out of resources" (0xA700)
    max_associations: int = 10
    max_pdu_size: int = 16382
    tls_cert: str = ""                    # PEM certificate and key: TLS on when both are set
    tls_key: str = ""
    tls_ca: str = ""                      # when set, calling modalities must present a certificate it signed
    log_format: str = "json"              # json | text


@dataclass
class ModelSettings:
    bundle: str = "bundles/ensemble"
    device: str = "auto"
    models_dir: str = ""                  # where ensemble.json is (default: the bundle's models/)
    members_models_dir: str = ""          # one folder per member (default: each member bundle's models/)
    heatmaps: bool = True
    max_attempts: int = 3                 # analysis attempts before a study is marked failed


@dataclass
class Destination:
    ae_title: str = "PACS"
    host: str = "127.0.0.1"
    port: int = 4242
    calling_ae_title: str = ""            # our AE title towards this PACS (default: [listener] ae_title)
    retry_initial_s: float = 5.0
    retry_max_s: float = 600.0
    give_up_after_s: float = 86400.0


@dataclass
class ReviewSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str = ""                       # empty: no sign-in, and the app listens on 127.0.0.1 only
    show_patient_name: bool = False       # patient names on the worklist and in the API


@dataclass
class ListenerConfig:
    listener: ListenerSettings = field(default_factory=ListenerSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    destinations: list[Destination] = field(default_factory=list)
    review: ReviewSettings | None = None
    path: Path | None = None

    @property
    def spool_dir(self) -> Path:
        """The spool, relative paths taken from the config file's folder (not the caller's)."""
        return self.resolve(self.listener.spool_dir)

    def resolve(self, value: str) -> Path:
        path = Path(value)
        if path.is_absolute() or self.path is None:
            return path
        return (self.path.parent / path).resolve()


def _section(cls, table: dict, name: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(unknown)}; expected {', '.join(known)}")
    values = {}
    for key, value in table.items():
        default = getattr(cls(), key)
        if isinstance(default, bool) != isinstance(value, bool) or (
            isinstance(default, (int, float)) and not isinstance(value, (int, float))
            or isinstance(default, str) and not isinstance(value, str)
            or isinstance(default, list) and not (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            raise ConfigError(f"[{name}] {key} = {value!r}: expected a {type(default).__name__}")
        values[key] = float(value) if isinstance(default, float) else value
    return cls(**values)


def load_config(path: str | Path) -> ListenerConfig:
    """Read and check ``listener.toml``; raises :class:`ConfigError` naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"listener config not found: {path}")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"listener", "model", "destinations", "review"})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(unknown)}")
    try:
        config = ListenerConfig(
            listener=_section(ListenerSettings, doc.get("listener", {}), "listener"),
            model=_section(ModelSettings, doc.get("model", {}), "model"),
            destinations=[_section(Destination, d, "destinations") for d in doc.get("destinations", [])],
            review=_section(ReviewSettings, doc["review"], "review") if "review" in doc else None,
            path=path.resolve(),
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    _check(config, path)
    return config


def _check(config: ListenerConfig, path: Path) -> None:
    settings = config.listener
    for title in [settings.ae_title, *settings.allowed_calling_aets, *(d.ae_title for d in config.destinations)]:
        if not 0 < len(title.strip()) <= 16 or "\\" in title:
            raise ConfigError(f"{path}: AE title {title!r} must be 1 to 16 characters without a backslash")
    if not 0 < settings.port < 65536 or any(not 0 < d.port < 65536 for d in config.destinations) or (
            config.review is not None and not 0 < config.review.port < 65536):
        raise ConfigError(f"{path}: ports must be between 1 and 65535")
    if settings.stable_age_s < 0:
        raise ConfigError(f"{path}: [listener] stable_age_s must not be negative")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError(f"{path}: [listener] tls_cert and tls_key go together")
    for key in ("tls_cert", "tls_key", "tls_ca"):
        value = getattr(settings, key)
        if value and not config.resolve(value).is_file():
            raise ConfigError(f"{path}: [listener] {key} not found: {config.resolve(value)}")
    if settings.log_format not in ("json", "text"):
        raise ConfigError(f"{path}: [listener] log_format must be json or text")
    if config.model.device not in ("auto", "cpu") and not config.model.device.startswith("cuda"):
        raise ConfigError(f"{path}: [model] device must be auto, cpu or cuda[:N]")
