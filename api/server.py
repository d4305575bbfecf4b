"""``nas serve``: the REST API, with the dispatcher that runs jobs on Ray, in one process.

The API itself never talks to Ray; this module only starts both side by side.
"""

from __future__ import annotations

import signal
from typing import Annotated, Literal, Optional

import typer

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


def serve(
    host: Annotated[str, typer.Option(envvar="NAS_HOST", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="NAS_PORT", help="port to listen on")] = 8000,
    database_url: Annotated[
        Optional[str], typer.Option("--database-url", envvar="NAS_DATABASE_URL", help="SQLAlchemy URL")
    ] = None,
    ray_address: Annotated[
        Optional[str], typer.Option("--ray-address", envvar="RAY_ADDRESS", help="existing Ray cluster")
    ] = None,
    max_jobs: Annotated[int, typer.Option(help="jobs this server runs at once")] = 2,
    demo: Annotated[bool, typer.Option("--demo", help="mint a 'demo' key and submit a demo search")] = False,
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

    from api.app import create_app
    from api.logging_setup import configure_logging
    from nas.settings import Settings
    from nas.specs import JobSpec
    from nas.store import Store, make_engine, upgrade
    from workers.dispatcher import Dispatcher, connect_ray

    configure_logging(log_format)
    settings = Settings.from_env(
        host=host, port=port, database_url=database_url, ray_address=ray_address,
        cors_origins=tuple(cors_origin) if cors_origin else None, limit_active_jobs=limit_active_jobs,
        limit_trials_per_job=limit_trials_per_job, limit_params=limit_params, limit_trial_epochs=limit_trial_epochs,
    )
    engine = make_engine(settings.database_url)
    upgrade(engine)
    store = Store(engine)
    connect_ray(settings)
    # ray.init makes SIGTERM exit at once with status 15; uvicorn handles SIGTERM itself while it
    # serves (a graceful shutdown, then the drain below), so the process then ends with 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    dispatcher = Dispatcher(store, settings, max_jobs=max_jobs)
    dispatcher.start()
    if demo:
        key = store.create_api_key("demo")
        job = store.create_job(JobSpec.model_validate(DEMO_SPEC), "demo")
        typer.echo(f"demo job {job.id} submitted; follow it with:\n"
                   f"  NAS_URL=http://{host}:{port} NAS_API_KEY={key} nas trials {job.id}")
    try:
        uvicorn.run(
            create_app(store, settings), host=settings.host, port=settings.port,
            log_config=None, access_log=False,  # our handler formats uvicorn's records; RequestContext logs access
        )
    finally:
        dispatcher.stop()
