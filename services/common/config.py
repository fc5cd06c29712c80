"""Typed settings, parsed once at start from environment variables.

A bad value stops start-up with a message that names the variable and what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """Raised when the environment holds a value the cluster cannot start with."""


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, got {port!r}")
    return value


def _postgres_url(value: str) -> str:
    if not value.startswith(("postgres://", "postgresql://")):
        raise ValueError("must start with postgresql:// or postgres://")
    return value


def _origins(value: str) -> str:
    bad = [
        o
        for o in value.split(",")
        if o.strip() and not o.strip().startswith(("http://", "https://"))
    ]
    if bad:
        raise ValueError(f"each origin must start with http:// or https:// (got {', '.join(bad)})")
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]
PostgresUrl = Annotated[str, AfterValidator(_postgres_url)]


class Settings(BaseSettings):
    """Every setting of the cluster. Each field is read from the upper-case variable
    named in its alias; see the README's configuration table."""

    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    state_dir: Path = Field(Path(".state"), alias="MINEACTION_STATE_DIR")
    database_url: PostgresUrl | None = Field(None, alias="DATABASE_URL")
    db_pool_min_size: int = Field(1, ge=1, le=100, alias="DB_POOL_MIN_SIZE")
    db_pool_max_size: int = Field(10, ge=1, le=100, alias="DB_POOL_MAX_SIZE")

    temporal_address: HostPort | None = Field(None, alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field("default", min_length=1, alias="TEMPORAL_NAMESPACE")
    temporal_port: int = Field(7233, ge=1, le=65535, alias="TEMPORAL_PORT")
    # How long a worker keeps trying to reach Temporal at start (one attempt a second).
    temporal_connect_timeout_seconds: int = Field(
        30, ge=1, le=3600, alias="TEMPORAL_CONNECT_TIMEOUT_SECONDS"
    )
    temporal_ui_port: int = Field(8233, ge=1, le=65535, alias="TEMPORAL_UI_PORT")

    eligibility_address: HostPort = Field("127.0.0.1:50051", alias="ELIGIBILITY_ADDRESS")
    lending_address: HostPort = Field("127.0.0.1:50052", alias="LENDING_ADDRESS")
    assistance_address: HostPort = Field("127.0.0.1:50053", alias="ASSISTANCE_ADDRESS")

    # Repayments, disbursements, write-offs and reschedules dated after today in Baku
    # are refused; only a ledger whose clock is simulated accepts them: the `simulate`
    # command's scratch ledger, and journeys run under time skipping.
    lending_accept_future_dates: bool = Field(False, alias="LENDING_ACCEPT_FUTURE_DATES")
    # Assessments and impact follow-ups dated after today in Baku are refused, but where
    # the clock is simulated (as above).
    eligibility_accept_future_dates: bool = Field(False, alias="ELIGIBILITY_ACCEPT_FUTURE_DATES")

    journey_task_queue: str = Field("survivor-journeys", min_length=1, alias="JOURNEY_TASK_QUEUE")
    no_demo: bool = Field(False, alias="MINEACTION_NO_DEMO")
    notification_channel: str = Field("file", min_length=1, alias="NOTIFICATION_CHANNEL")

    # Temporal payload encryption: a JSON keyring of AES-256 keys by id, one of them
    # active for new payloads; the codec server lets the Web UI show decrypted payloads.
    payload_keys_file: Path | None = Field(None, alias="PAYLOAD_KEYS_FILE")
    codec_server_address: HostPort = Field("127.0.0.1:8234", alias="CODEC_SERVER_ADDRESS")
    # Browser origins allowed to call the codec server (comma-separated); unset: the
    # local Web UI on TEMPORAL_UI_PORT. With a token set, callers must present it.
    codec_server_cors_origins: Annotated[str, AfterValidator(_origins)] | None = Field(
        None, alias="CODEC_SERVER_CORS_ORIGINS"
    )
    codec_server_token: str | None = Field(None, min_length=1, alias="CODEC_SERVER_TOKEN")

    # Prometheus metrics: each process serves /metrics on its own port, METRICS_BASE_PORT
    # plus its offset (9101 eligibility, 9102 lending, 9103 assistance, 9104 worker);
    # METRICS_PORT sets one process's port outright. Either set to 0 turns metrics off.
    metrics_host: str = Field("127.0.0.1", min_length=1, alias="METRICS_HOST")
    metrics_base_port: int = Field(9101, ge=0, le=65532, alias="METRICS_BASE_PORT")
    metrics_port: int | None = Field(None, ge=0, le=65535, alias="METRICS_PORT")

    # Authentication: bearer JWTs signed with Ed25519, verified against a JWKS file of
    # public keys by key id (several keys during a rotation). The signing key is only
    # needed where tokens are minted (the local cluster, the CLI's dev commands).
    auth_jwks_file: Path | None = Field(None, alias="AUTH_JWKS_FILE")
    auth_jwks: str | None = Field(None, min_length=2, alias="AUTH_JWKS")  # inline JSON instead
    auth_signing_key_file: Path | None = Field(None, alias="AUTH_SIGNING_KEY_FILE")
    auth_issuer: str = Field("mineaction", min_length=1, alias="AUTH_ISSUER")
    auth_audience: str = Field("mineaction-api", min_length=1, alias="AUTH_AUDIENCE")
    auth_leeway_seconds: int = Field(30, ge=0, le=600, alias="AUTH_LEEWAY_SECONDS")
    # The worker's own token (role `service`).
    service_token_file: Path | None = Field(None, alias="SERVICE_TOKEN_FILE")
    service_token: str | None = Field(None, min_length=1, alias="SERVICE_TOKEN")  # inline

    # Optional mutual TLS. Server side: certificate and key; with a client CA, clients
    # must present a certificate it signed. Client side: the CA that signed the servers'
    # certificates, and the client's own certificate and key.
    tls_cert_file: Path | None = Field(None, alias="TLS_CERT_FILE")
    tls_key_file: Path | None = Field(None, alias="TLS_KEY_FILE")
    tls_client_ca_file: Path | None = Field(None, alias="TLS_CLIENT_CA_FILE")
    tls_ca_file: Path | None = Field(None, alias="TLS_CA_FILE")
    tls_client_cert_file: Path | None = Field(None, alias="TLS_CLIENT_CERT_FILE")
    tls_client_key_file: Path | None = Field(None, alias="TLS_CLIENT_KEY_FILE")

    # OpenTelemetry tracing across gRPC and Temporal: off, otlp (OTEL_EXPORTER_OTLP_*
    # variables name the collector) or console.
    tracing: Literal["off", "otlp", "console"] = Field("off", alias="TRACING")

    log_level: Literal["debug", "info", "warning", "error"] = Field("info", alias="LOG_LEVEL")
    log_format: Literal["auto", "json", "console"] = Field("auto", alias="LOG_FORMAT")
    shutdown_grace_seconds: float = Field(5.0, ge=0, le=300, alias="SHUTDOWN_GRACE_SECONDS")

    @property
    def embedded_temporal_address(self) -> str:
        """Where the embedded dev server listens when TEMPORAL_ADDRESS is not set."""
        return f"127.0.0.1:{self.temporal_port}"

    @property
    def effective_payload_keys_file(self) -> Path:
        return self.payload_keys_file or self.state_dir / "payload-keys.json"

    @property
    def effective_jwks_file(self) -> Path:
        return self.auth_jwks_file or self.state_dir / "jwks.json"

    @property
    def effective_signing_key_file(self) -> Path:
        return self.auth_signing_key_file or self.state_dir / "signing-key.json"

    @property
    def effective_service_token_file(self) -> Path:
        return self.service_token_file or self.state_dir / "service-token"

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        """A certificate without its key (or the reverse) is a mistake, not a choice."""
        for cert, key, names in (
            (self.tls_cert_file, self.tls_key_file, "TLS_CERT_FILE and TLS_KEY_FILE"),
            (
                self.tls_client_cert_file,
                self.tls_client_key_file,
                "TLS_CLIENT_CERT_FILE and TLS_CLIENT_KEY_FILE",
            ),
        ):
            if (cert is None) != (key is None):
                raise ValueError(f"{names} must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
        return self

    @property
    def effective_temporal_address(self) -> str:
        return self.temporal_address or self.embedded_temporal_address


def load_settings(**overrides: object) -> Settings:
    """Read the environment (plus explicit overrides, used by tests) into Settings.

    Raises ConfigError with one line per bad variable.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            if not error["loc"]:  # a check across several variables names them itself
                lines.append(f"  {error['msg'].removeprefix('Value error, ')}")
                continue
            name = str(error["loc"][0])
            field = Settings.model_fields.get(name)
            variable = field.alias if field is not None and field.alias else name.upper()
            message = error["msg"].removeprefix("Value error, ")
            got = f"got {error.get('input')!r}"
            lines.append(f"  {variable}: {message}" + ("" if got in message else f" ({got})"))
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
