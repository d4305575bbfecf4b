"""Server settings, read from the environment when asked for (never at import time)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _default_home() -> Path:
    return Path(os.environ.get("NAS_HOME") or Path.home() / ".local" / "share" / "nas")


def _default_data_dir(home: Path) -> Path:
    return Path(os.environ.get("NAS_DATA_DIR") or home / "data")


def _with_password(url: str, password_file: Path) -> str:
    """``url`` with its password read from a file (a Docker secret), so no password is written in
    a compose file or a command line."""
    from sqlalchemy.engine import make_url

    password = password_file.read_text().strip()
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def make_private(home: Path) -> None:
    """``home`` with mode 0700, and this process's umask 077, inherited by the dispatcher and its
    Ray: whatever the server writes (database, artifacts, latency files, the secret) is readable
    by the user it runs as, and no one else."""
    os.umask(0o077)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)


# Settings fields read from integer environment variables.
LIMIT_ENV = {
    "limit_active_jobs": "NAS_LIMIT_ACTIVE_JOBS",
    "limit_trials_per_job": "NAS_LIMIT_TRIALS_PER_JOB",
    "limit_params": "NAS_LIMIT_PARAMS",
    "limit_trial_epochs": "NAS_LIMIT_TRIAL_EPOCHS",
    "auth_failures_per_minute": "NAS_AUTH_FAILURES_PER_MINUTE",
    "limit_jobs_per_hour": "NAS_LIMIT_JOBS_PER_HOUR",
    "limit_spec_bytes": "NAS_LIMIT_SPEC_BYTES",
    "limit_owner_spec_bytes": "NAS_LIMIT_OWNER_SPEC_BYTES",
    "limit_event_streams": "NAS_LIMIT_EVENT_STREAMS",
    "limit_expensive_requests": "NAS_LIMIT_EXPENSIVE_REQUESTS",
    "limit_predict_elements": "NAS_LIMIT_PREDICT_ELEMENTS",
    "limit_predict_recurrent_steps": "NAS_LIMIT_PREDICT_RECURRENT_STEPS",
    "limit_yaml_bytes": "NAS_LIMIT_YAML_BYTES",
    "limit_yaml_depth": "NAS_LIMIT_YAML_DEPTH",
    "work_processes": "NAS_WORK_PROCESSES",
    "work_queue": "NAS_WORK_QUEUE",
    "work_timeout_s": "NAS_WORK_TIMEOUT_S",
    "limit_upload_bytes": "NAS_LIMIT_UPLOAD_BYTES",
    "limit_owner_dataset_bytes": "NAS_LIMIT_OWNER_DATASET_BYTES",
    "limit_dataset_expanded_bytes": "NAS_LIMIT_DATASET_EXPANDED_BYTES",
    "limit_image_pixels": "NAS_LIMIT_IMAGE_PIXELS",
    "ingest_timeout_s": "NAS_INGEST_TIMEOUT_S",
    "limit_model_bytes": "NAS_LIMIT_MODEL_BYTES",
    "limit_model_params": "NAS_LIMIT_MODEL_PARAMS",
}


@dataclass(frozen=True)
class Settings:
    """Where state lives and how to reach the database and Ray.

    ``database_url`` defaults to a SQLite file under ``home``; ``ray_address`` ``None`` means a
    local Ray instance started by the server; ``secret_file`` (the server secret that signs
    tokens, see :mod:`nas.signing`) defaults to ``home/server-secret``.
    """

    home: Path = field(default_factory=_default_home)
    database_url: str = ""
    data_dir: Path | None = None
    ray_address: str | None = None
    # The dispatcher `nas serve` started beside this API (its runner id); readiness follows it.
    # None: an API without a dispatcher of its own, ready while any dispatcher serves its database.
    dispatcher_id: str | None = None
    secret_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1 << 20
    # Per-owner limits, checked at submission (see api/limits.py); they bind admins too.
    limit_active_jobs: int = 10
    limit_trials_per_job: int = 500
    limit_params: int = 50_000_000
    limit_trial_epochs: int = 10_000
    # Per-owner quotas (429 with Retry-After), and per-request budgets (422 naming the limit);
    # see api/limits.py and README's "Limits".
    limit_jobs_per_hour: int = 100
    limit_spec_bytes: int = 64 * 1024  # one job's spec as stored JSON
    limit_owner_spec_bytes: int = 32 << 20  # all of one owner's stored specs
    limit_event_streams: int = 8  # open event streams per owner, per API process
    limit_expensive_requests: int = 2  # latency predictions and ONNX exports at once, per owner and API process
    limit_predict_elements: int = 1 << 24  # values of the largest tensor of a prediction, batch included
    limit_predict_recurrent_steps: int = 4096  # batch × steps × layers × directions, over all recurrent layers
    limit_yaml_bytes: int = 64 * 1024
    limit_yaml_depth: int = 32
    # Worker processes per API process for CPU-heavy requests, requests that may wait for one,
    # and the seconds one request may run before its process is killed.
    work_processes: int = 2
    work_queue: int = 8
    work_timeout_s: int = 30
    # Users' datasets (api/routes/datasets.py, nas/data/ingest.py): the largest upload (413 beyond
    # it; CIFAR-10 as float32 arrays is 0.7 GiB), all of one owner's stored datasets, what an
    # upload may expand to once decompressed (archives, npz members), the pixels of one image
    # (Pillow's decompression-bomb guard), and the seconds reading and checking one upload may take.
    limit_upload_bytes: int = 2 << 30
    limit_owner_dataset_bytes: int = 20 << 30
    limit_dataset_expanded_bytes: int = 8 << 30
    limit_image_pixels: int = 1 << 25
    ingest_timeout_s: int = 900
    # Users' models (nas/models/onnx_import.py): the largest ONNX file and the most values its
    # weights may hold (a ResNet-50 is 25 M).
    limit_model_bytes: int = 256 << 20
    limit_model_params: int = 50_000_000
    # Folders (and everything under them) that datasets registered by path may be read from;
    # empty: registering by path is off. NAS_DATA_ROOTS, separated like PATH.
    data_roots: tuple[Path, ...] = ()
    # Failed authentications one client address may make per minute before it gets 429.
    auth_failures_per_minute: int = 10
    # Origins allowed to call the API from a browser; empty keeps CORS closed.
    cors_origins: tuple[str, ...] = ()
    # Swagger UI at /api/v1/docs (its scripts come from a CDN); the OpenAPI document is always served.
    api_docs: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser().resolve())
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.home / 'nas.db'}")
        if self.data_dir is None:
            object.__setattr__(self, "data_dir", _default_data_dir(self.home))
        object.__setattr__(self, "data_roots", tuple(Path(root).expanduser().resolve() for root in self.data_roots))
        secret_file = Path(self.secret_file).expanduser() if self.secret_file else self.home / "server-secret"
        object.__setattr__(self, "secret_file", secret_file)

    @property
    def artifact_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def dataset_cache_dir(self) -> Path:
        """This machine's copies of stored datasets, as trials read them (a worker node's own NAS_HOME)."""
        return self.home / "cache" / "datasets"

    @property
    def model_cache_dir(self) -> Path:
        """This machine's copies of stored models' ONNX files, as trials read them (a worker node's own NAS_HOME)."""
        return self.home / "cache" / "models"

    def to_env(self) -> dict[str, str]:
        """The environment from which :meth:`from_env` rebuilds these settings in another process."""
        env = {
            "NAS_HOME": str(self.home),
            "NAS_DATABASE_URL": self.database_url,
            "NAS_DATA_DIR": str(self.data_dir),
            "NAS_SECRET_FILE": str(self.secret_file),
            "NAS_HOST": self.host,
            "NAS_PORT": str(self.port),
            "NAS_CORS_ORIGINS": ",".join(self.cors_origins),
            "NAS_API_DOCS": "1" if self.api_docs else "",
            "NAS_DATA_ROOTS": os.pathsep.join(str(root) for root in self.data_roots),
            **{var: str(getattr(self, name)) for name, var in LIMIT_ENV.items()},
        }
        if self.ray_address:
            env["RAY_ADDRESS"] = self.ray_address
        if self.dispatcher_id:
            env["NAS_DISPATCHER_ID"] = self.dispatcher_id
        return env

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from ``NAS_*`` and ``RAY_ADDRESS``; explicit non-None overrides win."""
        env: dict[str, object] = {
            "database_url": os.environ.get("NAS_DATABASE_URL", ""),
            "ray_address": os.environ.get("RAY_ADDRESS") or None,
            "dispatcher_id": os.environ.get("NAS_DISPATCHER_ID") or None,
            "secret_file": os.environ.get("NAS_SECRET_FILE") or None,
            "host": os.environ.get("NAS_HOST", "127.0.0.1"),
            "port": int(os.environ.get("NAS_PORT", "8000")),
            "api_docs": os.environ.get("NAS_API_DOCS", "") not in ("", "0"),
            "data_roots": tuple(Path(r) for r in os.environ.get("NAS_DATA_ROOTS", "").split(os.pathsep) if r.strip()),
            "cors_origins": tuple(o.strip() for o in os.environ.get("NAS_CORS_ORIGINS", "").split(",") if o.strip()),
        }
        env.update({name: int(os.environ[var]) for name, var in LIMIT_ENV.items() if os.environ.get(var)})
        env.update({k: v for k, v in overrides.items() if v is not None})
        password_file = os.environ.get("NAS_DATABASE_PASSWORD_FILE")
        if password_file and env["database_url"]:
            env["database_url"] = _with_password(str(env["database_url"]), Path(password_file))
        return cls(**env)  # type: ignore[arg-type]
