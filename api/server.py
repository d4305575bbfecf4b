"""``nas serve``: the REST API, and beside it (as a child process) the dispatcher that runs jobs on Ray.

The API never talks to Ray. The dispatcher runs in a process of its own (``nas dispatch``) so
that Ray Tune's work never competes with requests for the interpreter lock; it dies with the
server, even when the server is killed with SIGKILL. When the server stops (SIGTERM, Ctrl-C) the
dispatcher drains and stops its Ray, and whatever it left behind is ended, so no process outlives
the server; readiness (``GET /readyz``) follows the dispatcher's heartbeats in the database.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import typer

if TYPE_CHECKING:
    from fastapi import FastAPI

    from nas.specs import Job
    from nas.store import Store

DEMO_SPEC = {
    "name": "demo: sparse MLPs on digits",
    "search_space": {"name": "sparse_mlp", "params": {}},
    "strategy": {"name": "random", "params": {}},
    "dataset": {"name": "digits", "params": {}},
    "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.9}},
    "training": {"epochs": 5, "batch_size": 64, "optimizer": "adam", "lr": 0.003},
    "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}],
    "budget": {"max_trials": 4, "max_concurrent": 2},
}
DEMO_OWNER = "demo"


def demo_key_and_job(store: Store, home: Path) -> tuple[str, Job, bool]:
    """The demo's key, its job, and whether the job is new. A restart reuses the key kept in
    ``home/demo-key`` (mode 0600) while it still authenticates, and the demo owner's job of the
    demo's name while it exists, so each start neither mints another key nor queues another job."""
    from nas.specs import JobSpec
    from nas.store import Principal

    key_file = home / "demo-key"
    key = key_file.read_text().strip() if key_file.exists() else ""
    principal = store.authenticate(key) if key else None
    if principal is None or principal.owner != DEMO_OWNER:
        key = store.create_api_key(DEMO_OWNER)
        partial = key_file.with_name(".demo-key.tmp")
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write(key + "\n")
        os.replace(partial, key_file)
    cursor: int | None = None
    while True:
        jobs, cursor = store.list_jobs(Principal(DEMO_OWNER), limit=100, cursor=cursor)
        earlier = next((job for job in jobs if job.name == DEMO_SPEC["name"]), None)
        if earlier is not None:
            return key, earlier, False
        if cursor is None:
            return key, store.create_job(JobSpec.model_validate(DEMO_SPEC), DEMO_OWNER), True


def serve(
    host: Annotated[str, typer.Option(envvar="NAS_HOST", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="NAS_PORT", help="port to listen on")] = 8000,
    database_url: Annotated[
        Optional[str], typer.Option("--database-url", envvar="NAS_DATABASE_URL", help="SQLAlchemy URL")
    ] = None,
    ray_address: Annotated[
        Optional[str], typer.Option("--ray-address", envvar="RAY_ADDRESS", help="existing Ray cluster")
    ] = None,
    max_jobs: Annotated[int, typer.Option(help="jobs this server runs at once (0: run no dispatcher here)")] = 2,
    ray_dashboard: Annotated[
        bool, typer.Option("--ray-dashboard", envvar="NAS_RAY_DASHBOARD", help="start the local Ray with its dashboard")
    ] = False,
    workers: Annotated[
        int, typer.Option(envvar="NAS_WORKERS", min=1, help="API worker processes (the dispatcher is separate)")
    ] = 1,
    demo: Annotated[
        bool,
        typer.Option("--demo", help="a 'demo' key and a demo search (kept in NAS_HOME/demo-key: reused on restart)"),
    ] = False,
    log_format: Annotated[
        Literal["auto", "json", "text"],
        typer.Option(
            envvar="NAS_LOG_FORMAT",
            help="json: one object per line; text: for people; auto: text on a terminal, else json",
        ),
    ] = "auto",
    cors_origin: Annotated[
        Optional[list[str]],
        typer.Option("--cors-origin", help="browser origin allowed to call the API (repeatable; env NAS_CORS_ORIGINS, comma-separated)"),
    ] = None,
    limit_active_jobs: Annotated[
        Optional[int], typer.Option(envvar="NAS_LIMIT_ACTIVE_JOBS", min=1, help="queued+running jobs per owner")
    ] = None,
    limit_trials_per_job: Annotated[
        Optional[int], typer.Option(envvar="NAS_LIMIT_TRIALS_PER_JOB", min=1, help="most budget.max_trials")
    ] = None,
    limit_params: Annotated[
        Optional[int], typer.Option(envvar="NAS_LIMIT_PARAMS", min=1, help="most parameters of any architecture")
    ] = None,
    limit_trial_epochs: Annotated[
        Optional[int],
        typer.Option(envvar="NAS_LIMIT_TRIAL_EPOCHS", min=1, help="most budget.max_trials × training.epochs per job"),
    ] = None,
) -> None:
    """Start the REST API and the job dispatcher (SQLite and a local Ray by default)."""
    import uvicorn

    from api.routes import datasets, models
    from nas.logging_setup import configure_logging
    from nas.settings import Settings, make_private
    from nas.signing import ServerSecret
    from nas.store import Store, make_engine, upgrade
    from workers.dispatch_process import exit_now, new_runner_id, spawn_child, stop_child, watch_child

    configure_logging(log_format)
    os.environ.pop("NAS_DISPATCHER_ID", None)  # only the dispatcher started here is this server's own
    dispatcher_id = new_runner_id() if max_jobs > 0 else None
    settings = Settings.from_env(
        host=host, port=port, database_url=database_url, ray_address=ray_address, dispatcher_id=dispatcher_id,
        cors_origins=tuple(cors_origin) if cors_origin else None, limit_active_jobs=limit_active_jobs,
        limit_trials_per_job=limit_trials_per_job, limit_params=limit_params, limit_trial_epochs=limit_trial_epochs,
    )
    make_private(settings.home)
    assert settings.secret_file is not None
    ServerSecret(settings.secret_file).current()  # made once here, not raced for by the API workers
    engine = make_engine(settings.database_url)
    upgrade(engine)
    store = Store(engine)
    datasets.remove_strays(store, settings)  # before any API process takes an upload
    models.remove_strays(store, settings)
    # calibrations run in the API process that started them: one that was measuring has lost its fit
    store.measurements.abandon_calibrations("the server stopped during the calibration; start it again")
    # API workers and the dispatcher rebuild these settings from the environment.
    os.environ.update({**settings.to_env(), "NAS_LOG_FORMAT": log_format})
    dispatcher = spawn_child(max_jobs, dispatcher_id, ray_dashboard) if dispatcher_id else None
    stopping = threading.Event()
    if dispatcher is not None:
        threading.Thread(target=watch_child, args=(dispatcher, stopping), name="watch-dispatcher", daemon=True).start()
    if demo:
        key, job, new = demo_key_and_job(store, settings.home)
        typer.echo(f"demo job {job.id} submitted{'' if new else ' by an earlier start'} ({job.status.value}); "
                   f"follow it with:\n  NAS_URL=http://{host}:{port} NAS_API_KEY={key} nas trials {job.id}")
    # uvicorn re-raises the SIGTERM or SIGINT that stopped it once it is done; with the default
    # handlers that would end this process before the dispatcher and its Ray are stopped below.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        uvicorn.run(
            "api.server:app_from_env", factory=True, workers=workers, host=settings.host, port=settings.port,
            log_config=None, access_log=False,  # our handler formats uvicorn's records; RequestContext logs access
        )
    finally:
        stopping.set()
        if dispatcher is not None:
            stop_child(dispatcher)
    exit_now(0)


def app_from_env() -> FastAPI:
    """The API as one uvicorn worker builds it, from the settings ``nas serve`` put in the environment."""
    from api.app import create_app
    from nas.logging_setup import configure_logging
    from nas.settings import Settings
    from nas.store import Store, make_engine

    from nas.specs import JobSpec

    configure_logging(os.environ.get("NAS_LOG_FORMAT", "auto"))  # type: ignore[arg-type]
    settings = Settings.from_env()
    # Validating a spec loads the plug-ins and torch: do it before serving, not inside the first
    # submission while other requests wait for the interpreter lock.
    JobSpec.model_validate(DEMO_SPEC)
    return create_app(Store(make_engine(settings.database_url)), settings)
