"""``listener.toml``: the keys of docs/formats.md, checked once at start so a typo fails loudly.

A PACS administrator edits this file by hand; an unknown key or a wrong type is reported with
its table and name rather than ignored (a misspelt ``allowed_calling_aets`` would otherwise
leave the service open to every modality).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from mura_monai.constants import BACKEND_CHOICES, HEATMAP_STUDIES

__all__ = ["ROLES", "ConfigError", "Destination", "ListenerConfig", "ListenerSettings", "ModelSettings", "OidcSettings",
           "ReviewSettings", "StoreSettings", "load_config"]

ROLES = ("viewer", "reviewer", "admin")  # each may do what the one before it may, and more


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
    metrics_port: int = 0                 # Prometheus /metrics of each role's process; 0: off


@dataclass
class ModelSettings:
    bundle: str = "bundles/ensemble"
    device: str = "auto"
    models_dir: str = ""                  # where ensemble.json is (default: the bundle's models/)
    members_models_dir: str = ""          # one folder per member (default: each member bundle's models/)
    heatmaps: bool = True                 # keep the heatmap PNGs in the spool
    heatmap_studies: str = "all"          # which studies get heatmaps: all | abnormal | uncertain | none
    max_attempts: int = 3                 # analysis attempts before a study is marked failed
    batch_images: int = 16                # the most images that go through the networks together
    batch_studies: int = 8                # the most waiting studies one worker takes at once
    backend: str = "auto"                 # what runs the members: auto | torch | torchscript | onnxruntime
    onnx_threads: int = 0                 # ONNX Runtime's intra-op threads; 0: as many as torch uses
    prescore_images: int = 32             # instances of receiving studies scored ahead and kept; 0: off


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
class OidcSettings:
    """``[review.oidc]``: sign-on through the hospital's OpenID Connect provider."""

    issuer: str = ""                      # the provider's issuer URL (its /.well-known/openid-configuration)
    client_id: str = ""
    client_secret: str = ""
    scope: str = "openid profile email"
    username_claim: str = "preferred_username"
    name_claim: str = "name"              # the full name the corrected SR names
    role_claim: str = "roles"             # a string or a list of strings
    admin_values: list[str] = field(default_factory=lambda: ["admin"])
    reviewer_values: list[str] = field(default_factory=lambda: ["reviewer"])
    viewer_values: list[str] = field(default_factory=lambda: ["viewer"])
    button: str = "Sign in with single sign-on"


@dataclass
class ReviewSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str = ""                       # deprecated shared token; with no token, no account and no sign-on,
                                          # the app listens on 127.0.0.1 only
    token_user: str = "shared-token"      # the identity the shared token signs in as
    token_full_name: str = ""
    token_role: str = "reviewer"
    show_patient_name: bool = False       # patient names on the worklist and in the API
    session_idle_minutes: float = 30.0    # a browser session ends after this long without a request
    session_max_hours: float = 12.0       # and after this long in any case
    sign_in_attempts: int = 5             # failed sign-ins per user name and per client address ...
    sign_in_window_s: float = 300.0       # ... within this window; more are refused (429) until it passes
    max_upload_mb: float = 256.0          # PUT /datastore/ (a DICOM upload); other requests: 1 MiB
    tls: bool = True                      # HTTPS with tls_cert/tls_key, else [listener]'s; false: plain HTTP
    tls_cert: str = ""
    tls_key: str = ""
    audit_log: str = ""                   # the audit trail as JSON lines (default: <spool_dir>/audit.jsonl)
    public_url: str = ""                  # the address users open (sign-on redirects); default: the request's
    oidc: OidcSettings | None = None


@dataclass
class StoreSettings:
    """``[store]``: where the queue, results, labels and accounts are kept."""

    url: str = ""                         # empty: SQLite in the spool; postgresql://user@host:port/db to share
    lease_s: float = 60.0                 # a worker's claim on a study lasts this long unless renewed


_STORE_SCHEMES = ("postgresql", "postgresql+psycopg")
_BACKENDS = BACKEND_CHOICES


@dataclass
class ListenerConfig:
    listener: ListenerSettings = field(default_factory=ListenerSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    destinations: list[Destination] = field(default_factory=list)
    review: ReviewSettings | None = None
    store: StoreSettings = field(default_factory=StoreSettings)
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


def _review(table: dict) -> ReviewSettings:
    table = dict(table)
    oidc = table.pop("oidc", None)
    if oidc is not None and not isinstance(oidc, dict):
        raise ConfigError("[review] oidc must be a table: [review.oidc]")
    settings = _section(ReviewSettings, table, "review")
    if oidc is not None:
        settings.oidc = _section(OidcSettings, oidc, "review.oidc")
    return settings


def load_config(path: str | Path) -> ListenerConfig:
    """Read and check ``listener.toml``; raises :class:`ConfigError` naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"listener config not found: {path}")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"listener", "model", "destinations", "review", "store"})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(unknown)}")
    try:
        config = ListenerConfig(
            listener=_section(ListenerSettings, doc.get("listener", {}), "listener"),
            model=_section(ModelSettings, doc.get("model", {}), "model"),
            destinations=[_section(Destination, d, "destinations") for d in doc.get("destinations", [])],
            review=_review(doc["review"]) if "review" in doc else None,
            store=_section(StoreSettings, doc.get("store", {}), "store"),
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
    if not 0 <= settings.metrics_port < 65535:
        raise ConfigError(f"{path}: [listener] metrics_port must be between 0 (off) and 65534")
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
    if config.review is not None:
        _check_review(config, path)
    if config.model.device not in ("auto", "cpu") and not config.model.device.startswith("cuda"):
        raise ConfigError(f"{path}: [model] device must be auto, cpu or cuda[:N]")
    if config.model.heatmap_studies not in HEATMAP_STUDIES:
        raise ConfigError(f"{path}: [model] heatmap_studies must be one of {', '.join(HEATMAP_STUDIES)}; "
                          f"got {config.model.heatmap_studies!r}")
    if config.model.batch_images < 1 or config.model.batch_studies < 1:
        raise ConfigError(f"{path}: [model] batch_images and batch_studies must be at least 1")
    if config.model.backend not in _BACKENDS:
        raise ConfigError(f"{path}: [model] backend must be one of {', '.join(_BACKENDS)}; got {config.model.backend!r}")
    if config.model.prescore_images < 0:
        raise ConfigError(f"{path}: [model] prescore_images must be 0 (off) or more; got {config.model.prescore_images}")
    if config.model.onnx_threads < 0:
        raise ConfigError(f"{path}: [model] onnx_threads must be 0 (as many as torch uses) or more; "
                          f"got {config.model.onnx_threads}")
    _check_store(config.store, path)


def _check_store(store: StoreSettings, path: Path) -> None:
    """The URL is not repeated in a message: it may hold the database's password."""
    if store.url:
        scheme = store.url.split("://", 1)[0].lower() if "://" in store.url else ""
        if scheme not in _STORE_SCHEMES:
            raise ConfigError(f"{path}: [store] url: unsupported scheme {scheme or '(none)'!r}; leave it empty for SQLite "
                              "in the spool, or give postgresql://user@host:port/database")
    if store.lease_s <= 0:
        raise ConfigError(f"{path}: [store] lease_s must be positive")


def _check_review(config: ListenerConfig, path: Path) -> None:
    review = config.review
    assert review is not None
    if review.token_role not in ROLES:
        raise ConfigError(f"{path}: [review] token_role must be one of {', '.join(ROLES)}")
    if review.session_idle_minutes <= 0 or review.session_max_hours <= 0:
        raise ConfigError(f"{path}: [review] session_idle_minutes and session_max_hours must be positive")
    if review.sign_in_attempts < 1 or review.sign_in_window_s <= 0 or review.max_upload_mb <= 0:
        raise ConfigError(f"{path}: [review] sign_in_attempts, sign_in_window_s and max_upload_mb must be positive")
    if bool(review.tls_cert) != bool(review.tls_key):
        raise ConfigError(f"{path}: [review] tls_cert and tls_key go together")
    for key in ("tls_cert", "tls_key"):
        value = getattr(review, key)
        if value and not config.resolve(value).is_file():
            raise ConfigError(f"{path}: [review] {key} not found: {config.resolve(value)}")
    if review.public_url and not review.public_url.startswith(("http://", "https://")):
        raise ConfigError(f"{path}: [review] public_url must start with http:// or https://")
    oidc = review.oidc
    if oidc is not None:
        missing = [key for key in ("issuer", "client_id") if not getattr(oidc, key)]
        if missing:
            raise ConfigError(f"{path}: [review.oidc] needs {' and '.join(missing)}")
        if not oidc.issuer.startswith(("http://", "https://")):
            raise ConfigError(f"{path}: [review.oidc] issuer must be an http(s) URL")
