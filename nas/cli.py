"""The ``nas`` command: client commands talk to a server over REST; admin commands use the database.

``nas serve`` comes from the ``nas.commands`` entry-point group (provided by ``api.server``), so
this module imports neither the API nor the workers.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Neural architecture search for sparse neural networks.", no_args_is_help=True)
db_app = typer.Typer(help="Database administration.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")

# Piped output keeps whole ids on one line, so scripts can read them.
out = Console(width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True)

DatabaseUrl = Annotated[
    Optional[str], typer.Option("--database-url", envvar="NAS_DATABASE_URL", help="SQLAlchemy URL")
]


def _store(database_url: str | None) -> Any:
    from nas.settings import Settings
    from nas.store import Store, make_engine, upgrade

    settings = Settings.from_env(database_url=database_url)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return Store(engine)


@contextmanager
def _client() -> Iterator[Any]:
    """A client from NAS_URL / NAS_API_KEY; API errors become a message and exit code 1."""
    from nas.client import ApiError, Client

    client = Client()
    try:
        yield client
    except ApiError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        err.print(f"[red]error:[/red] cannot reach the server at {client.url}: {exc}")
        raise typer.Exit(1) from None
    finally:
        client.close()


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Apply the schema migrations."""
    from nas.store.engine import current_revision

    store = _store(database_url)
    out.print(f"database at revision {current_revision(store.engine)}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="owner of the key")],
    admin: Annotated[bool, typer.Option("--admin", help="may see and act on every owner's jobs")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Mint an API key; it is printed once, alone on the last line (only its hash is stored)."""
    key = _store(database_url).create_api_key(name, is_admin=admin)
    err.print(f"API key for {name!r}{' (admin)' if admin else ''}; store it now, it cannot be shown again:")
    print(key)


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="job spec, YAML or JSON")],
    wait: Annotated[bool, typer.Option("--wait", help="follow the job until it ends")] = False,
) -> None:
    """Submit a job; prints its id. With --wait, exits 0 only if the job succeeded."""
    with _client() as client:
        job = client.submit(spec)
        err.print(f"submitted job {job.name!r}")
        print(job.id)
        if wait:
            job = client.wait(job.id, progress=sys.stderr.isatty())
            err.print(f"job {job.id} {job.status.value}: {job.n_complete}/{job.n_trials} trials complete"
                      + (f" ({job.error})" if job.error else ""))
            if job.status.value != "succeeded":
                raise typer.Exit(1)


@app.command()
def jobs(status: Annotated[Optional[str], typer.Option(help="only jobs with this status")] = None) -> None:
    """List your jobs, newest first."""
    with _client() as client:
        table = Table("id", "name", "status", "trials", "complete", "created")
        for job in client.jobs(status=status):
            table.add_row(job.id, job.name, job.status.value, str(job.n_trials), str(job.n_complete),
                          job.created_at.strftime("%Y-%m-%d %H:%M:%S"))
        out.print(table)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


@app.command()
def trials(
    job_id: Annotated[str, typer.Argument(help="job id")],
    state: Annotated[Optional[str], typer.Option(help="only trials in this state")] = None,
    pareto: Annotated[bool, typer.Option("--pareto", help="only the Pareto-optimal trials")] = False,
) -> None:
    """List a job's trials with their main metrics."""
    with _client() as client:
        rows = client.pareto(job_id) if pareto else client.trials(job_id, state=state)
        table = Table("#", "id", "state", "accuracy", "sparsity", "nonzero", "latency ms", "error")
        for t in rows:
            m = t.metrics
            table.add_row(str(t.number), t.id, t.state.value, _fmt(m.get("accuracy")), _fmt(m.get("sparsity")),
                          _fmt(m.get("nonzero_params")), _fmt(m.get("latency_ms")), (t.error or "")[:60])
        out.print(table)


@app.command()
def cancel(job_id: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Cancel a job: queued ones at once, running ones within seconds."""
    with _client() as client:
        job = client.cancel(job_id)
        err.print(f"job {job.id}: cancellation requested ({job.status.value})")


def _plugin_commands() -> None:
    """Add commands that other installed packages provide (``nas serve`` among them)."""
    for ep in importlib.metadata.entry_points(group="nas.commands"):
        command: Callable[..., Any] = ep.load()
        app.command(name=ep.name)(command)


_plugin_commands()
