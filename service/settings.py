"""FlexBin's configuration: one pydantic Settings object read from the environment.

Everything (API, Celery, database, demo) is configured from `get_settings()`. The defaults
are the *embedded* setup: SQLite under `var/` and Celery's SQLAlchemy transport on another
SQLite file, so `make run` needs no external server. Set `DATABASE_URL` and
`CELERY_BROKER_URL` to run on PostgreSQL and Redis.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.paths import REPO_ROOT, default_data_dir

DEFAULT_DATABASE_URL = "sqlite:///var/flexbin.db"
DEFAULT_BROKER_URL = "sqla+sqlite:///var/broker.db"
DEV_TENANT = "dev"
DEV_KEY = "dev"
KNOWN_DEFAULT_SECRETS = frozenset({
    "change-me", "changeme", "dev", "demo", "flexbin", "postgres", "password", "secret", "admin", "test",
})
"""Secrets that appear in FlexBin's docs, examples and compose defaults, or that anyone would guess:
a PostgreSQL deployment refuses to start with one (`Settings.check_secrets`)."""
# The detectors the demo can binarize (service/demo.py): Intel's pretrained SSD or FlexBin's own.
DemoModel = Literal["pedestrian_adas_0002", "pednet"]


class Settings(BaseSettings):
    """All configuration. Each field reads `FLEXBIN_<NAME>` unless noted."""

    model_config = SettingsConfigDict(env_prefix="FLEXBIN_", extra="ignore", populate_by_name=True)

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "FLEXBIN_DATABASE_URL", "database_url"),
        description="SQLAlchemy URL; relative sqlite paths are relative to the repo root.",
    )
    celery_broker_url: str = Field(
        default=DEFAULT_BROKER_URL,
        validation_alias=AliasChoices("CELERY_BROKER_URL", "FLEXBIN_CELERY_BROKER_URL", "celery_broker_url"),
        description="Celery broker URL (redis://... in production).",
    )
    api_keys: str = Field(
        default="",
        description='"tenant_a:key_a,tenant_b:key_b"; when set, the full set of valid keys (keys no longer '
        'listed are revoked at start-up; only digests are stored). Empty: nothing revoked, and on the embedded '
        'SQLite default the key `dev` for tenant `dev` (logged). A PostgreSQL deployment refuses known '
        'default keys (FLEXBIN_ALLOW_DEFAULT_SECRETS).',
    )
    host: str = Field(default="127.0.0.1", description="The API's address.")
    port: int = Field(default=8000, ge=1, le=65535, description="The API's port.")
    device: str = Field(default="auto", description='"auto" (CUDA when present), "cpu", "cuda", "cuda:1"...')
    torch_threads: int = Field(default=0, ge=0, description="CPU threads per worker process (0: torch's default).")
    demo_data: Path = Field(default_factory=default_data_dir, description="Penn-Fudan root for the demo "
                               "(default ../shared/data/PennFudanPed beside the checkout).")
    demo: bool = Field(default=True, description="Seed the demo on an empty database.")
    demo_model: DemoModel = Field(
        default="pedestrian_adas_0002",
        description="What the demo binarizes: Intel's pretrained pedestrian-detection-adas-0002 (bundled "
        "weights) or `pednet`, FlexBin's own detector trained from scratch (service/demo.py).",
    )
    # Sized for well under 30 minutes on 2 idle CPU cores. pednet: about 0.3 s per training
    # iteration at batch 8 (bench/results/tradeoff.md), so ~8 min of training and ~7 steps x 60
    # iterations of fine-tuning to reach 8x. pedestrian_adas_0002 (service/demo.py): no training;
    # 37 steps x 60 iterations at 192x336 to reach 8x: 18 min in a timed run on a busy machine.
    demo_train_iters: int = Field(default=1500, ge=1, description="Training iterations of the demo PedNet.")
    demo_finetune_iters: int = Field(default=60, ge=0, description="Fine-tuning iterations per demo step.")
    demo_min_compression_ratio: float = Field(default=8.0, gt=1.0, description="The demo job's target.")
    embedded_worker: bool | None = Field(
        default=None,
        description="`python -m api.run` also starts a worker; default: only with the embedded broker.",
    )
    log_level: str = Field(default="INFO", description="Python logging level of the API and the workers.")
    allow_default_secrets: bool = Field(
        default=False, description="Let a PostgreSQL deployment start with a known default API key or database "
        "password (drills and tests only; the embedded SQLite default never needs it).")

    # Upload limits (HTTP 413 beyond them).
    max_model_bytes: int = Field(default=512 * 2**20, gt=0, description="Weights upload limit (413 beyond).")
    max_dataset_bytes: int = Field(default=1024 * 2**20, gt=0, description="Dataset zip limit (413 beyond).")
    max_dataset_files: int = Field(default=20_000, gt=0, description="Files in a dataset zip (zip-bomb guard, 422).")
    max_dataset_uncompressed_bytes: int = Field(
        default=4 * 2**30, gt=0, description="Uncompressed bytes of a dataset zip (zip-bomb guard, 422).")
    max_dataset_entry_bytes: int = Field(
        default=64 * 2**20, gt=0, description="Any one file in a dataset zip (refused by its declared size, unread)."
    )
    max_card_bytes: int = Field(default=64 * 2**10, gt=0, description="Model card limit (413 beyond).")
    max_detect_bytes: int = Field(default=64 * 2**20, gt=0, description="`POST /detect` request limit (413 beyond).")
    max_request_bytes: int = Field(default=2**20, gt=0, description="Any other request body.")

    # Serving (`POST /detect`; api/serving.py).
    max_detect_images: int = Field(default=32, gt=0, description="Images per /detect request (413 beyond).")
    max_detect_pixels: int = Field(
        default=25_000_000, gt=0, description="Pixels per /detect image, after EXIF orientation (413 beyond)."
    )
    # Per-API-key rate limits (HTTP 429 + Retry-After beyond them; api/ratelimit.py). `limits`
    # strings ("600/minute", "10/second;600/minute"); empty or "0" disables.
    rate_limit: str = Field(
        default="600/minute", description="Authenticated requests per API key, every endpoint (moving window)."
    )
    rate_limit_detect: str = Field(
        default="120/minute", description="POST /detect requests per API key, counted on top of rate_limit."
    )
    rate_limit_storage_url: str = Field(
        default="memory://", description="Where the counts live: memory:// (one process) or redis://host:6379/2 "
        "(shared by API replicas). Unreachable storage fails open (allowed, logged)."
    )

    @field_validator("rate_limit", "rate_limit_detect")
    @classmethod
    def _parse_rate_limit(cls, value: str) -> str:
        value = value.strip()
        if value and value != "0":
            parse_many(value)  # ValueError naming the string when malformed
        return value

    serving_max_batch_size: int = Field(
        default=8, ge=1, description="Images per forward pass of the micro-batcher (1: no batching)."
    )
    serving_max_wait_ms: float = Field(
        default=0.0, ge=0, description="How long the first image of a batch waits for others to join it "
        "(0, as Triton's default: a batch is what queued while the previous forward ran; bench/results/serve.md)."
    )
    serving_cache_max_bytes: int = Field(
        default=1024 * 2**20, gt=0, description="Model cache budget: bytes of unpacked weights kept loaded (LRU)."
    )
    serving_torch_threads: int = Field(
        default=0, ge=0, description="torch intra-op threads of the API's inference thread (0: half the CPUs "
        "this process may use, at least 1: the other half decodes images and speaks HTTP)."
    )
    serving_refresh_seconds: float = Field(
        default=2.0, gt=0, description="How often the API looks for new deployments to load and warm up."
    )
    serving_backend: Literal["openvino", "torch"] = Field(
        default="openvino", description="What runs /detect: the checkpoint's OpenVINO IR (made by the worker "
        "at each step; a checkpoint without one falls back to torch) or PyTorch (the unpacked checkpoint)."
    )
    serving_compiled_shapes: int = Field(
        default=8, ge=1, description="OpenVINO backend: compiled input shapes kept per checkpoint (LRU; "
        "1-bit convolutions need static shapes, so each batch shape compiles once)."
    )
    int8_calibration_images: int = Field(
        default=100, ge=1, le=1000, description="Training images NNCF calibrates a checkpoint's int8 file on "
        "(`?format=openvino-int8`: made on first request in the API, or in the job for every step with "
        "`deploy_format` openvino-int8).")
    serving_precision: Literal["f32", "bf16", "auto"] = Field(
        default="f32", description="OpenVINO backend: f32 (what a job measured: detections equal to its "
        "metrics'), bf16, or auto (each compiled shape timed at both, the faster kept; f32 on CPUs without "
        "bf16). bf16 leaves float and int8 MR^-2 within 0.001 and moves binary-input checkpoints' by up to "
        "0.07 either way (the 1-bit thresholds see rounded inputs; bench/results/speed*.md).")
    train_bf16: bool = Field(
        default=False, description="Workers fine-tune with bfloat16 autocast on CUDA (recorded in each step's "
        "provenance). Off until measured equal in accuracy (bench.gpu_check compares it).")
    train_fuse_binarizers: bool = Field(
        default=True, description="Workers compile the input binarizers' straight-through estimators with "
        "torch.compile while fine-tuning (one fused loop instead of a dozen elementwise passes; the first step "
        "spends seconds compiling; unfused, with a warning, where no C++ compiler is found). Same maths, equal "
        "within float rounding; bench/results/fused_binarizers.md has the gain.")
    export_openvino: bool = Field(
        default=True, description="Workers export every step's checkpoint to OpenVINO IR and time its forward "
        "pass (latency_ms; about 1-3 s per step). Off: no IR, no latency, /detect serves those with torch."
    )

    # Job execution.
    job_lease_seconds: float = Field(
        default=60.0, gt=0, description="A running job whose worker stopped heart-beating this long is requeued."
    )
    progress_interval_seconds: float = Field(
        default=2.0, gt=0, description="Progress writes to the jobs row, at most this often.")
    cancel_poll_seconds: float = Field(default=0.5, ge=0, description="How often a running job reads its cancel flag.")
    broker_visibility_timeout: int = Field(
        default=6 * 3600, gt=0, description="Seconds before Redis redelivers an unacknowledged job (the lease recovers sooner).")

    # Timeouts and retries on external calls (database, broker).
    database_connect_timeout_seconds: int = Field(
        default=5, ge=1, le=300, description="PostgreSQL connect timeout (also the pool's wait for a connection x2)."
    )
    database_statement_timeout_seconds: int = Field(
        default=300, ge=0, le=86_400, description="PostgreSQL statement timeout; 0 disables."
    )
    database_retry_seconds: float = Field(
        default=120.0, ge=0,
        description="How long a worker retries a database write (with backoff) before handing the job back.",
    )
    broker_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Broker connect and socket timeout."
    )
    broker_publish_retries: int = Field(
        default=3, ge=0, le=20, description="Retries (with backoff) when sending a task before giving up with 503."
    )
    stranded_job_seconds: float = Field(
        default=60.0, gt=0,
        description="A queued job whose message was never sent (the API died in between) is sent after this long.",
    )

    @field_validator("database_url")
    @classmethod
    def _anchor_sqlite(cls, url: str) -> str:
        return _anchor_sqlite_url(url, "sqlite:///")

    @field_validator("celery_broker_url")
    @classmethod
    def _anchor_broker(cls, url: str) -> str:
        return _anchor_sqlite_url(url, "sqla+sqlite:///")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded(self) -> bool:
        """True when the broker is the SQLite-backed one (no external server)."""
        return self.celery_broker_url.startswith("sqla+sqlite")

    @property
    def run_embedded_worker(self) -> bool:
        return self.embedded if self.embedded_worker is None else self.embedded_worker

    def dataset_zip_limits(self) -> dict[str, int]:
        """The keyword limits of `core.data.read_dataset_zip`."""
        return {"max_files": self.max_dataset_files, "max_uncompressed_bytes": self.max_dataset_uncompressed_bytes,
                "max_entry_bytes": self.max_dataset_entry_bytes}

    def parsed_api_keys(self) -> list[tuple[str, str]]:
        """[(tenant, key), ...] from FLEXBIN_API_KEYS, in order; ValueError when malformed."""
        pairs: list[tuple[str, str]] = []
        for item in self.api_keys.split(","):
            item = item.strip()
            if not item:
                continue
            tenant, sep, key = item.partition(":")
            if not sep or not tenant.strip() or not key.strip():
                raise ValueError(f"FLEXBIN_API_KEYS: entry {item.split(':')[0]!r}... must be tenant:key")
            pairs.append((tenant.strip(), key.strip()))
        return pairs

    def default_secrets(self) -> list[str]:
        """What of this configuration is a known default secret (`KNOWN_DEFAULT_SECRETS`), named
        without the secret itself: API keys by tenant, and the database password."""
        found = [f"the API key of tenant {tenant!r}" for tenant, key in self.parsed_api_keys()
                 if key.lower() in KNOWN_DEFAULT_SECRETS]
        password = urlsplit(self.database_url).password
        if password is not None and password.lower() in KNOWN_DEFAULT_SECRETS:
            found.append("the database password in DATABASE_URL")
        return found

    def check_secrets(self) -> None:
        """Refuse to start a PostgreSQL deployment with a known default secret: ValueError naming
        which ones, unless FLEXBIN_ALLOW_DEFAULT_SECRETS=1. The embedded SQLite default (`make run`)
        is a local run and keeps its `dev` key."""
        if self.is_sqlite or self.allow_default_secrets:
            return
        found = self.default_secrets()
        if found:
            raise ValueError(f"refusing to start: {', '.join(found)} is a known default secret "
                             f"({', '.join(sorted(KNOWN_DEFAULT_SECRETS))}); set your own in FLEXBIN_API_KEYS / "
                             "DATABASE_URL, or FLEXBIN_ALLOW_DEFAULT_SECRETS=1 for a drill")

    def demo_tenant(self) -> str:
        pairs = self.parsed_api_keys()
        return pairs[0][0] if pairs else DEV_TENANT


def _anchor_sqlite_url(url: str, prefix: str) -> str:
    """Make a relative SQLite path absolute (relative to the repo root) and create its folder."""
    if not url.startswith(prefix) or url == prefix or url.startswith(prefix + ":memory:"):
        return url
    raw = url[len(prefix):]
    path = Path(raw.split("?", 1)[0])
    query = "?" + raw.split("?", 1)[1] if "?" in raw else ""
    if not path.is_absolute():
        path = REPO_ROOT / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{prefix}{path}{query}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
