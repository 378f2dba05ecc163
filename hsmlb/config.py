"""The one typed configuration model, validated once at start.

PINs never live in the YAML: a node names an environment variable or a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from hsmlb.audit.config import AuditConfig
from hsmlb.auth.config import AdminListenConfig, AuthConfig, TlsConfig
from hsmlb.limits import LimitsConfig
from hsmlb.router.routes_config import POOL_PATTERN, RouteConfig, ShadowConfig, check_routes
from hsmlb.telemetry.config import LoggingConfig, MetricsConfig, TracingConfig


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PinSource(_Frozen):
    pin_env: str | None = Field(None, description="environment variable holding the user PIN")
    pin_file: Path | None = Field(None, description="file holding the user PIN (first line)")

    @model_validator(mode="before")
    @classmethod
    def _no_literal_pin(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("pin" in data or "user_pin" in data):
            raise ValueError("a PIN may not be written in the config; name pin_env or pin_file instead")
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> PinSource:
        if (self.pin_env is None) == (self.pin_file is None):
            raise ValueError("exactly one of pin_env or pin_file is required")
        return self

    def read_pin(self) -> str:
        if self.pin_env is not None:
            value = os.environ.get(self.pin_env)
            if not value:
                raise ConfigError(f"pin_env: environment variable {self.pin_env} is not set")
            return value
        assert self.pin_file is not None
        try:
            return self.pin_file.read_text().splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as exc:  # the class only: never the file's bytes
            why = f"{exc.__class__.__name__}: {os.strerror(exc.errno)}" \
                if isinstance(exc, OSError) and exc.errno else exc.__class__.__name__  # EMFILE is not a bad PIN file
            raise ConfigError(f"pin_file: cannot read a PIN from {self.pin_file}: {why}") from None


class Pkcs11NodeConfig(PinSource):
    kind: Literal["pkcs11"] = "pkcs11"
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    module: Path = Field(description="path of the PKCS#11 library")
    token_label: str | None = None
    token_serial: str | None = None
    pool: str = Field("hsm", pattern=POOL_PATTERN, description="the routing pool this node belongs to")
    pool_size: int = Field(4, ge=1, le=256, description="logged-in sessions kept warm")
    queue_limit: int = Field(1024, ge=0, description="requests that may wait for a session")
    key_labels: dict[str, str] = Field(
        default_factory=dict, description="alias -> PKCS#11 label, where they differ (default: label = alias)"
    )
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for the token worker")
    worker_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a token worker that answers nothing for this long while requests wait "
        "for it is taken as hung: it is killed (its requests fail over) and restarted")
    session_key_copies: bool = Field(
        False, description="use each key through a session-object copy of it (C_CopyObject with CKA_TOKEN false, "
        "made once per session; the copy stays inside the token). SoftHSM2 re-reads its object store on every use "
        "of a token object: measured ~50 -> ~25 us per AES op. A key deleted or changed on the token is still "
        "served from the copies until the worker restarts. Keys that may not be copied are used as they are")
    allow_host_side_derivation: bool = Field(
        False, description="serve payment ops (CVV, PIN translation, DUKPT, EMV, ISO 9797 MACs) by computing with "
        "key material read from the token in the worker's memory. NOT PCI PIN compliant: test clusters only")

    @model_validator(mode="after")
    def _token_named(self) -> Pkcs11NodeConfig:
        if not (self.token_label or self.token_serial):
            raise ValueError("token_label or token_serial is required")
        return self


class ApcQuotas(_Frozen):
    """Client-side token buckets per region x key class. Defaults are APC's default account quotas
    (data plane: 500 requests/s with symmetric keys, 20/s with asymmetric keys, per region)."""

    symmetric_per_s: float = Field(500.0, gt=0)
    asymmetric_per_s: float = Field(20.0, gt=0)
    burst_s: float = Field(0.2, gt=0, description="bucket depth, in seconds of quota")
    max_wait_s: float = Field(0.05, ge=0, description="wait for a token at most this long, then try another node")


class ApcRegionConfig(_Frozen):
    """An AWS Payment Cryptography region as a node: SigV4-signed rest-json over warm HTTPS connections."""

    kind: Literal["apc"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    pool: str = Field("apc", pattern=POOL_PATTERN, description="the routing pool this node belongs to")
    endpoint_url: str | None = Field(None, description="data-plane endpoint; default: the region's APC endpoint")
    control_endpoint_url: str | None = Field(None, description="control plane (GetKey); default: endpoint_url "
                                             "when set, else the region's APC control-plane endpoint")
    profile: str | None = Field(None, description="boto3 profile; credentials come from the default chain")
    credentials_file: Path | None = Field(None, description="shared credentials file (dev clusters)")
    connections: int = Field(16, ge=1, le=1024, description="keep-alive connections, pre-connected at start")
    queue_limit: int = Field(1024, ge=0)
    request_timeout_s: float = Field(2.0, gt=0, le=60)
    connect_timeout_s: float = Field(1.0, gt=0, le=30)
    keys: dict[str, str] = Field(default_factory=dict, description="alias -> key ARN; default: every alias "
                                 "the region lists (ListAliases)")
    quotas: ApcQuotas = ApcQuotas()

    @property
    def pool_size(self) -> int:
        return self.connections


NODE_KINDS = ("pkcs11", "apc")


def _node_kind(value: Any) -> str:
    return (value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)) or "pkcs11"


# Discriminated on `kind`; a node without one is a PKCS#11 token, as before regions existed.
NodeConfig = Annotated[Annotated[Pkcs11NodeConfig, Tag("pkcs11")] | Annotated[ApcRegionConfig, Tag("apc")],
                       Discriminator(_node_kind)]


class CostWeights(_Frozen):
    """Relative cost of one op per class, for least-outstanding balancing (measured on SoftHSM2 2.6,
    warm session, this 2-core machine: AES-128 ECB ~20 us, ECDSA P-256 sign ~49 us, RSA-2048 sign ~510 us)."""

    symmetric: float = Field(1.0, gt=0)
    ecdsa: float = Field(2.5, gt=0)
    rsa: float = Field(25.0, gt=0)


class HealthCheckConfig(_Frozen):
    interval_s: float = Field(0.25, gt=0, le=60)
    jitter_s: float = Field(0.05, ge=0, le=10)
    timeout_s: float = Field(0.25, gt=0, le=30)
    unhealthy_threshold: int = Field(2, ge=1)
    healthy_threshold: int = Field(3, ge=1, description="consecutive good checks before readmission")


class OutlierConfig(_Frozen):
    consecutive_node_faults: int = Field(5, ge=1)
    failure_rate: float = Field(0.5, gt=0, le=1)
    failure_rate_min_requests: int = Field(20, ge=1)
    window_s: float = Field(10.0, gt=0)
    base_ejection_s: float = Field(1.0, gt=0)
    max_ejection_s: float = Field(60.0, gt=0)
    max_ejected_nodes: int = Field(1, ge=0, description="cap in absolute nodes, not a percentage")
    slow_start_s: float = Field(5.0, ge=0)
    observe_only: bool = False


class BreakerConfig(_Frozen):
    fail_max: int = Field(5, ge=1, description="consecutive node faults that open the breaker")
    reset_timeout_s: float = Field(2.0, gt=0, description="open -> half-open (one probe)")


class RetryConfig(_Frozen):
    max_attempts: int = Field(2, ge=1, le=5, description="attempts of an idempotent op, each on a different node")
    budget_ratio: float = Field(0.2, ge=0, le=1, description="retries per request over the window")
    min_retries_per_s: float = Field(5.0, ge=0)
    window_s: float = Field(10.0, gt=0)
    backoff_base_ms: float = Field(1.0, ge=0)
    backoff_max_ms: float = Field(20.0, ge=0)


class RouterConfig(_Frozen):
    balancer: Literal["least_outstanding", "key_affinity"] = "least_outstanding"
    hash_balance_factor: float = Field(1.5, ge=1.0, description="key_affinity: spill above factor x average load")
    cost_weights: CostWeights = CostWeights()
    health_check: HealthCheckConfig = HealthCheckConfig()
    outlier: OutlierConfig = OutlierConfig()
    breaker: BreakerConfig = BreakerConfig()
    retry: RetryConfig = RetryConfig()


class Config(_Frozen):
    listen: str = Field("127.0.0.1:50051", pattern=r"^[^:\s]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$")
    shutdown_grace_s: float = Field(5.0, ge=0, le=300)
    start_timeout_s: float = Field(30.0, gt=0, le=600)
    fault_injection: bool = Field(False, description="test-only hooks in the node adapters; never in production")
    router: RouterConfig = RouterConfig()
    limits: LimitsConfig = LimitsConfig()
    metrics: MetricsConfig | None = Field(None, description="Prometheus /metrics and the status page; off when absent")
    tracing: TracingConfig = TracingConfig()
    logging: LoggingConfig = LoggingConfig()
    nodes: list[NodeConfig] = Field(min_length=1)
    tls: TlsConfig | None = Field(None, description="TLS (mTLS with client_ca_file); none: plaintext, dev only")
    auth: AuthConfig = AuthConfig()
    admin_listen: AdminListenConfig | None = Field(None, description="the Admin service on its own address; "
                                                   "none: on `listen` beside Operations")
    audit: AuditConfig | None = None
    routes: list[RouteConfig] = Field(default_factory=list, description="pools per operation; none: one pool of all")
    shadow: ShadowConfig = ShadowConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        check_routes(self.routes)
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"node names must be unique: {', '.join(dupes)}")
        return self


class ConfigError(Exception):
    """A configuration problem, with the offending field named in the message."""


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = err["loc"]  # drop the union tag pydantic inserts after a node's index: nodes.0.pkcs11.x -> nodes.0.x
        parts = [p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and p in NODE_KINDS)]
        where = ".".join(str(p) for p in parts) or "(top level)"
        lines.append(f"{where}: {err['msg']}")
    return "\n".join(lines)


def check_node_sources(node: Any) -> str:
    """What a node reads at start that the model cannot check: its PIN source (token nodes) or its
    credentials file (regions). '' when all is readable, else "field: problem" (never the PIN)."""
    if isinstance(node, PinSource):
        try:
            node.read_pin()
        except ConfigError as exc:
            return str(exc)
    elif isinstance(node, ApcRegionConfig) and node.credentials_file is not None:
        try:
            node.credentials_file.read_bytes()
        except OSError as exc:
            return f"credentials_file: cannot read {node.credentials_file}: {exc.strerror}"
    return ""


def parse_config(data: Any) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_config(path: str | Path) -> Config:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    base = Path(path).resolve().parent
    if isinstance(data, dict):
        for node in data.get("nodes") or []:
            for field in ("pin_file", "credentials_file"):
                if isinstance(node, dict) and node.get(field) and not Path(node[field]).is_absolute():
                    node[field] = str(base / node[field])
        admin = data.get("admin_listen")
        tls_files = ("cert_file", "key_file", "client_ca_file")
        for part, fields in ((data.get("tls"), tls_files), (data.get("audit"), ("dir", "signing_key_file")),
                             (admin.get("tls") if isinstance(admin, dict) else None, tls_files)):
            for field in fields if isinstance(part, dict) else ():
                if part.get(field) and not Path(part[field]).is_absolute():
                    part[field] = str(base / part[field])
        shadow = data.setdefault("shadow", {}) if isinstance(data.get("shadow", {}), dict) else None
        if shadow is not None:  # runtime route changes live beside the config (router/route_state.py)
            state = shadow.get("state_file") or Path(path).resolve().with_suffix(".state.json")
            shadow["state_file"] = str(base / state) if not Path(state).is_absolute() else str(state)
    return parse_config(data)
