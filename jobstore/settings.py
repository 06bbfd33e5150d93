"""Service settings: one pydantic-settings class, read once through ``get_settings``.

Every field is read from ``SANITIZER_<NAME>``; ``DATABASE_URL`` and ``REDIS_URL`` are also
accepted plainly. Tests call ``get_settings.cache_clear()`` after changing the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sanitizer.hub import cache_dir

MiB = 1 << 20


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANITIZER_", extra="ignore")

    data_dir: Path = Field(
        default_factory=lambda: cache_dir() / "service",
        description="root of the SQLite database, the embedded broker, artifacts and work dirs",
    )
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("SANITIZER_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; default sqlite:///<data_dir>/sanitizer.db",
    )
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("SANITIZER_REDIS_URL", "REDIS_URL"),
        description="Celery broker; unset = embedded broker on SQLite (no server needed)",
    )
    artifacts_dir: Path | None = Field(None, description="default <data_dir>/artifacts")
    artifacts_url: str | None = Field(
        None,
        description="s3://bucket/prefix: keep blobs in an S3-compatible store (endpoint and "
        "credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) so API and workers on "
        "different hosts share no disk; unset: files under artifacts_dir",
    )
    work_dir: Path | None = Field(None, description="worker scratch space; default <data_dir>/work")
    model_cache: Path | None = Field(
        None,
        description="where base models published to the artifact store (`sanitizer models "
        "push`) are cached on this host; default <data_dir>/model-cache",
    )
    model_cache_bytes: int = Field(
        50 * 1024**3, ge=0, description="size bound of the model cache; least recently used "
        "models are evicted beyond it",
    )  # fmt: skip
    queue: str = Field("sanitize", description="Celery queue the GPU workers consume")
    webhooks_queue: str = Field("webhooks", description="Celery queue of webhook deliveries")
    redis_key_prefix: str = Field("", description="prefix of every broker key (shared Redis)")

    max_adapter_bytes: int = Field(512 * MiB, description="upload limit for adapters")
    max_dataset_bytes: int = Field(256 * MiB, description="upload limit for datasets")
    max_extracted_bytes: int = Field(2048 * MiB, description="adapter size once unpacked")
    max_archive_files: int = Field(64, description="files allowed in an adapter archive")

    job_time_limit: int = Field(6 * 3600, description="hard time limit of one job (s)")
    heartbeat_interval: float = Field(5.0, description="worker heartbeat period (s)")
    heartbeat_timeout: float = Field(120.0, description="a running job silent this long is lost")
    download_redirect: bool = Field(
        False,
        description="with an S3 artifact store: answer an adapter download with a 307 to a "
        "short-lived pre-signed URL (the bytes then bypass the API)",
    )
    presign_seconds: int = Field(
        300, ge=10, le=7 * 24 * 3600, description="lifetime of a pre-signed download URL (s)"
    )
    auth_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="an API process remembers a verified key this long (0: never), so polling "
        "does not query the key table; a revoked key stops working within this time",
    )
    reaper_interval: float = Field(15.0, description="how often the API looks for lost jobs (s)")
    max_attempts: int = Field(2, ge=1, description="runs of a job before it fails worker_lost")
    redispatch_after: float = Field(
        900.0,
        gt=0,
        description="a job still queued this long after its task was published is published "
        "again (a broker restart without persistence loses messages); duplicates are dropped",
    )
    progress_interval: float = Field(1.0, description="min seconds between progress writes")
    file_retention_days: float = Field(
        0.0,
        ge=0,
        description="uploaded files older than this many days that no active job reads are "
        "deleted by the reaper; 0 keeps them until deleted with DELETE /v1/files/{id}",
    )

    webhook_max_retries: int = Field(6, description="webhook retries after the first attempt")
    webhook_backoff: float = Field(2.0, description="first retry delay (s), doubled each time")
    webhook_timeout: float = Field(10.0, description="per-attempt HTTP timeout (s)")
    webhook_allow_hosts: str = Field(
        "",
        description="comma-separated host names, addresses or CIDR networks that webhooks may "
        "reach although they are private/loopback (internal hooks, tests); default: none, "
        "webhooks go to public addresses only",
    )

    @property
    def webhook_allow(self) -> list[str]:
        return [h.strip() for h in self.webhook_allow_hosts.split(",") if h.strip()]

    api_key: str | None = Field(None, description="embedded mode: the key `serve` installs")
    worker_status_file: str | None = Field(
        None,
        description="set by `sanitizer serve`: where its worker supervisor writes the state of "
        "the workers it runs; /readyz reports them when set",
    )
    auto_migrate: bool = Field(True, description="apply migrations when the API starts")
    enqueue_timeout: float = Field(2.0, description="give up publishing to the broker after (s)")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'sanitizer.db'}"

    @property
    def embedded(self) -> bool:
        return not self.redis_url

    @property
    def broker_url(self) -> str:
        return self.redis_url or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    def broker_transport_options(self) -> dict[str, object]:
        """Transport options shared by the API (publisher) and the workers (consumers)."""
        if self.embedded:
            # kombu's SQLAlchemy transport hands these to create_engine
            return {"connect_args": {"timeout": 30}}
        opts: dict[str, object] = {
            "visibility_timeout": self.visibility_timeout,
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
        }
        if self.redis_key_prefix:
            opts["global_keyprefix"] = self.redis_key_prefix
        return opts

    @property
    def artifacts_path(self) -> Path:
        return self.artifacts_dir or self.data_dir / "artifacts"

    @property
    def model_cache_path(self) -> Path:
        return self.model_cache or self.data_dir / "model-cache"

    @property
    def work_path(self) -> Path:
        return self.work_dir or self.data_dir / "work"

    @property
    def visibility_timeout(self) -> int:
        """Redis redelivers an unacked task after this; must exceed the longest job."""
        return self.job_time_limit + 3600


@lru_cache
def get_settings() -> Settings:
    s = Settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    return s
