"""``nas serve``: the REST API, with the dispatcher that runs jobs on Ray, in one process.

The API itself never talks to Ray; this module only starts both side by side.
"""

from __future__ import annotations

import logging
import signal
from typing import Annotated, Optional

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
) -> None:
    """Start the REST API and the job dispatcher (SQLite and a local Ray by default)."""
    import uvicorn

    from api.app import create_app
    from nas.settings import Settings
    from nas.specs import JobSpec
    from nas.store import Store, make_engine, upgrade
    from workers.dispatcher import Dispatcher, connect_ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env(host=host, port=port, database_url=database_url, ray_address=ray_address)
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
        uvicorn.run(create_app(store, settings), host=settings.host, port=settings.port, log_level="info")
    finally:
        dispatcher.stop()
