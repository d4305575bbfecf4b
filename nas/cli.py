"""The ``nas`` command: client commands talk to a server over REST; admin commands use the database.

Client commands read ``NAS_URL`` and ``NAS_API_KEY``, print results on stdout (a table, or JSON
with ``--json``) and messages on stderr, and exit with a code a script can branch on
(:class:`ExitCode`). ``nas serve`` comes from the ``nas.commands`` entry-point group (provided
by ``api.server``), so this module imports neither the API nor the workers.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.metadata
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape as escape_markup
from rich.table import Column, Table
from typer.core import TyperGroup

from nas.arch import flatten, key_order
from nas.metrics import METRICS, format_value
from nas.model_formats import FORMATS
from nas.safe_text import escape_controls

if TYPE_CHECKING:
    from typer import _click as click  # typer's own copy of click

    from nas.client import Client, Dataset, Model
    from nas.specs import Job, Trial


class ExitCode(enum.IntEnum):
    """What a client command's exit status means."""

    OK = 0
    JOB_FAILED = 1  # the job failed or was cancelled (--wait), or the server refused a change (409, 429)
    USAGE = 2  # bad arguments, an unreadable spec file, or a spec or dataset the server rejected (422, 413)
    AUTH = 3  # missing, wrong or revoked API key (401)
    NOT_FOUND = 4  # no such job, trial or dataset, or no model for it (404)
    SERVER = 5  # the server failed (5xx) or could not be reached


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 job failed or cancelled (--wait), or change refused (409/429); "
    "2 usage, or invalid spec or dataset; 3 authentication; 4 not found; 5 server error or unreachable."
)

SERVER_INSTALL = "pip install 'sparse-nas[server]'"


def escape(text: str) -> str:
    """``text`` safe to print: rich markup and control characters (terminal escapes, bidi overrides) escaped."""
    return escape_markup(escape_controls(text))


def _server_missing(module: str | None) -> typer.Exit:
    return fail(f"this command needs the server's dependencies (no module {module!r}): {SERVER_INSTALL}",
                ExitCode.USAGE)


@contextmanager
def server_dependencies() -> Iterator[None]:
    """Turn a missing server dependency into a message that says what to install: the light
    client (``pip install sparse-nas``) has no torch, Ray or database drivers."""
    try:
        yield
    except ModuleNotFoundError as exc:
        raise _server_missing(exc.name) from None


def _needs_server(missing: str | None) -> Callable[[], None]:
    """A stand-in for a plug-in command (``nas serve``) whose dependencies are not installed."""

    def command() -> None:
        raise _server_missing(missing)

    command.__doc__ = f"(not installed: {escape(SERVER_INSTALL)})"
    return command


def _guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command``, with the server dependencies it imports when run (not when loaded) checked."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        with server_dependencies():
            return command(*args, **kwargs)

    return run


def _plugin_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group="nas.commands")}


class _PluginGroup(TyperGroup):
    """The ``nas`` group, with the commands other installed packages provide (``nas serve``
    among them, entry-point group ``nas.commands``) loaded only when one is run or listed: they
    import the server and torch, which client commands have no use for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        own = super().list_commands(ctx)
        return own + [name for name in _plugin_entry_points() if name not in own]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        entry_point = _plugin_entry_points().get(name)
        if command is not None or entry_point is None:
            return command
        single = typer.Typer()
        try:
            single.command(name=name)(_guarded(entry_point.load()))
        except ModuleNotFoundError as exc:
            # any arguments are accepted, so `nas serve --demo` reaches the message
            extra_args = {"ignore_unknown_options": True, "allow_extra_args": True}
            single.command(name=name, context_settings=extra_args)(_needs_server(exc.name))
        return typer.main.get_command(single)


ENVIRONMENT_HELP = (
    "Client commands read NAS_URL (the server, default http://127.0.0.1:8000) and NAS_API_KEY "
    "(a key from `nas keys create NAME`)."
)

app = typer.Typer(
    help=f"Neural architecture search for sparse neural networks.\n\n{ENVIRONMENT_HELP}",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    cls=_PluginGroup,
)
db_app = typer.Typer(help="Database administration.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
datasets_app = typer.Typer(help="Your datasets: upload or register one, list, show, remove.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
models_app = typer.Typer(help="Your trained models (ONNX): upload one, list, show, remove.", no_args_is_help=True)
app.add_typer(models_app, name="models")
from nas.cli_hardware import hardware_app  # noqa: E402  (its commands import torch only when run)

app.add_typer(hardware_app, name="hardware")
from nas.cli_agent import agent as agent_command  # noqa: E402  (the agent and its runtimes import when run)

app.command("agent")(agent_command)


@hardware_app.callback()
def _hardware() -> None:
    with server_dependencies():
        import nas.latency  # noqa: F401  (torch: every hardware command times models here)


# Piped output keeps whole ids on one line, so scripts can read them.
out = Console(width=None if sys.stdout.isatty() else 240, highlight=False)
# Messages are never wrapped: a log line stays one line.
err = Console(stderr=True, highlight=False, soft_wrap=True)

DatabaseUrl = Annotated[
    Optional[str], typer.Option("--database-url", envvar="NAS_DATABASE_URL", help="SQLAlchemy URL")
]
JsonOutput = Annotated[bool, typer.Option("--json", help="print JSON on stdout, for scripts")]


ModelFormat = enum.Enum("ModelFormat", {name: name for name in FORMATS}, type=str)  # type: ignore[misc]


class Color(str, enum.Enum):
    grayscale = "grayscale"
    rgb = "rgb"


def _store(database_url: str | None) -> Any:
    with server_dependencies():
        from nas.settings import Settings
        from nas.store import Store, make_engine, upgrade

    settings = Settings.from_env(database_url=database_url)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return Store(engine)


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Print ``error: message`` on stderr; raise the returned ``typer.Exit``."""
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(int(code))


def exit_code_for(exc: Exception) -> ExitCode:
    from nas.client import (
        AuthenticationError,
        ConnectionFailed,
        NotFoundError,
        PayloadTooLarge,
        ServerError,
        ValidationError,
    )

    if isinstance(exc, AuthenticationError):
        return ExitCode.AUTH
    if isinstance(exc, NotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(exc, (ValidationError, PayloadTooLarge, ValueError)):
        return ExitCode.USAGE
    if isinstance(exc, (ServerError, ConnectionFailed)):
        return ExitCode.SERVER
    return ExitCode.JOB_FAILED  # refused changes (409, 429) and anything else the server said no to


@contextmanager
def _client() -> Iterator[Client]:
    """A client from NAS_URL / NAS_API_KEY; SDK errors become a message and an exit code."""
    from nas.client import Client, NasError, ValidationError

    client = Client()
    try:
        yield client
    except ValidationError as exc:
        lines = "\n".join(f"  {e.path or '(request)'}: {e.message}" for e in exc.errors)
        raise fail(f"HTTP 422: the server rejected the request:\n{lines}", ExitCode.USAGE) from None
    except (NasError, ValueError) as exc:
        raise fail(str(exc), exit_code_for(exc)) from None
    finally:
        client.close()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _dump(items: Iterable[Any]) -> list[dict[str, Any]]:
    return [item.model_dump(mode="json") for item in items]


SHORT_ID = 8  # the shortest id a table shows: 4 billion values, so a copied one rarely needs more


def short_ids(ids: Iterable[str], minimum: int = SHORT_ID) -> dict[str, str]:
    """Each id cut to its shortest prefix that no other of ``ids`` shares, at least ``minimum``
    characters: what a table shows, so that what a user copies names the same thing (the server
    takes unique prefixes; ``--json`` keeps the full ids)."""
    ordered = sorted(set(ids))

    def shared(a: str, b: str) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    cut = {}
    for i, full in enumerate(ordered):
        neighbours = [ordered[j] for j in (i - 1, i + 1) if 0 <= j < len(ordered)]
        cut[full] = full[: max([minimum, *(shared(full, n) + 1 for n in neighbours)])]
    return cut


def id_column(header: str, shown: Iterable[str]) -> Column:
    """A table column of ids that stays whole in a narrow terminal: a cut id cannot be copied."""
    return Column(header, no_wrap=True, min_width=max((len(s) for s in shown), default=len(header)))


# -- admin -------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Apply the schema migrations."""
    store = _store(database_url)
    from nas.store.engine import current_revision

    out.print(f"database at revision {current_revision(store.engine)}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="owner of the key")],
    admin: Annotated[bool, typer.Option("--admin", help="may see and act on every owner's jobs")] = False,
    agent: Annotated[bool, typer.Option(
        "--agent", help="for `nas agent` on a device: it measures on NAME's targets and reads nothing else")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Mint an API key; it is printed once, alone on the last line (only its hash is stored)."""
    try:
        key = _store(database_url).create_api_key(name, is_admin=admin, kind="agent" if agent else "user")
    except ValueError as exc:  # an empty name, or one with control characters; --admin with --agent
        raise fail(str(exc), ExitCode.USAGE) from None
    rights = " (admin)" if admin else " (agent)" if agent else ""
    err.print(f"API key for {escape(repr(name))}{rights}; store it now, it cannot be shown again:")
    print(key)


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "-"


@keys_app.command("list")
def keys_list(
    owner: Annotated[Optional[str], typer.Option(help="only this owner's keys")] = None,
    json_output: JsonOutput = False,
    database_url: DatabaseUrl = None,
) -> None:
    """List API keys: id, owner, rights, created, last used (to the minute), revoked. Never a key."""
    keys = _store(database_url).list_api_keys(owner)
    if json_output:
        _print_json([
            {name: value.isoformat() if hasattr(value, "isoformat") else value
             for name, value in {**dataclasses.asdict(key), "revoked": key.revoked}.items()}
            for key in keys
        ])
        return
    table = Table("id", "owner", "kind", "admin", "created", "last used", "revoked")
    for key in keys:
        table.add_row(str(key.id), escape(key.owner), key.kind, "yes" if key.is_admin else "", _when(key.created_at),
                      _when(key.last_used_at), _when(key.revoked_at) if key.revoked else "")
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="a key id (from `nas keys list`), or an owner: all of that owner's keys")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke keys: every request with them answers 401 at once, and their open event streams end within seconds."""
    from nas.errors import NotFound

    store = _store(database_url)
    try:
        revoked = store.revoke_api_keys(key_id=int(key)) if key.isdigit() else store.revoke_api_keys(owner=key)
    except NotFound:
        raise fail(f"no API key with id or owner {key!r}", ExitCode.NOT_FOUND) from None
    for item in revoked:
        err.print(f"revoked key {item.id} of {escape(repr(item.owner))}")


@keys_app.command("rotate-secret")
def keys_rotate_secret() -> None:
    """Replace the server secret (NAS_SECRET_FILE, default NAS_HOME/server-secret): every event-stream
    token and signed cursor issued so far is refused from now on; API keys are not affected."""
    from nas.settings import Settings
    from nas.signing import ServerSecret

    settings = Settings.from_env()
    assert settings.secret_file is not None
    ServerSecret(settings.secret_file).rotate()
    err.print(f"new server secret in {settings.secret_file}; running servers use it from their next request")


# -- jobs --------------------------------------------------------------------------------------


class _ProgressLines:
    """``wait`` progress for a log or a pipe: one stderr line whenever the job's state changes."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.last: tuple[str, int, str | None] | None = None
        self.best: Trial | None = None

    def __call__(self, job: Job) -> None:
        from nas.client.progress import best_text

        state = (job.status.value, job.n_finished, job.best_trial_id)
        if state == self.last or job.status.finished:  # the end gets its own summary
            return
        self.last = state
        if job.best_trial_id and (self.best is None or self.best.id != job.best_trial_id):
            self.best = self.client.trial(job.best_trial_id)
        total = (job.spec.get("budget") or {}).get("max_trials", "?")
        best = best_text(job, self.best)
        err.print(escape(f"job {job.id} {job.status.value}: {job.n_finished}/{total} trials finished"
                         + (f", {best}" if best else "")))


def _follow(client: Client, job: Job, poll_s: float) -> Job:
    """Wait for the job: a live progress bar on a terminal, plain lines otherwise."""
    progress: bool | Callable[[Job], None] = True if err.is_terminal else _ProgressLines(client)
    try:
        return client.wait(job.id, progress=progress, poll_s=poll_s)
    except KeyboardInterrupt:
        err.print(f"stopped waiting; job {job.id} goes on (nas cancel {job.id} stops it)")
        raise typer.Exit(130) from None


@app.command()
def submit(
    spec: Annotated[
        Optional[Path],
        typer.Argument(exists=True, dir_okay=False, help="job spec, YAML or JSON; with --from, the changes to its spec"),
    ] = None,
    from_job: Annotated[
        Optional[str], typer.Option("--from", help="start from this job's spec (a clone), changed by SPEC if given")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the job until it ends")] = False,
    poll: Annotated[float, typer.Option(min=0.1, help="seconds between polls with --wait")] = 1.0,
    json_output: JsonOutput = False,
) -> None:
    """Submit a job and print its id; --wait follows it live and exits 0 only if it succeeded.

    With --from JOB the new job is a clone of JOB's spec; mappings in SPEC merge into it key by key
    (`budget: {max_trials: 50}` keeps the rest of the budget)."""
    from nas.client import load_spec

    if spec is None and from_job is None:
        raise fail("give a SPEC file, --from JOB, or both", ExitCode.USAGE)
    with _client() as client:
        job = client.submit(spec) if from_job is None else client.clone_job(from_job, **(load_spec(spec) if spec else {}))
        err.print(escape(f"submitted job {job.name!r}: {job.id}"))
        if not json_output:
            print(job.id, flush=True)
        if wait:
            job = _follow(client, job, poll)
            summary = f"job {job.id} {job.status.value}: {job.n_complete}/{job.n_trials} trials complete"
            err.print(escape(summary + (f" ({job.error})" if job.error else "")))
            if job.best_trial_id:
                err.print(f"best trial: {job.best_trial_id}")
        if json_output:
            _print_json(job.model_dump(mode="json"))
        if wait and job.status.value != "succeeded":
            raise typer.Exit(int(ExitCode.JOB_FAILED))


@app.command()
def jobs(
    status: Annotated[Optional[str], typer.Option(help="only jobs with this status")] = None,
    json_output: JsonOutput = False,
) -> None:
    """List your jobs, newest first."""
    with _client() as client:
        listed = list(client.jobs(status=status))
        if json_output:
            _print_json(_dump(listed))
            return
        short = short_ids(job.id for job in listed)
        best = short_ids(job.best_trial_id for job in listed if job.best_trial_id)
        table = Table(id_column("id", short.values()), "name", "status", "trials", "complete",
                      id_column("best trial", best.values()), "created")
        for job in listed:
            table.add_row(short[job.id], escape(job.name), job.status.value, str(job.n_trials), str(job.n_complete),
                          best.get(job.best_trial_id or "", "-"), job.created_at.strftime("%Y-%m-%d %H:%M:%S"))
        out.print(table)


# The metrics ``nas trials`` shows, headed by their labels (and units) in nas.metrics.
TRIAL_COLUMNS = ("val_accuracy", "accuracy", "sparsity", "nonzero_params", "latency_ms", "predicted_latency_ms")
# Architecture keys ``nas trials`` shows at most: a cell-based space has dozens, which no terminal fits.
MAX_ARCH_COLUMNS = 12


def _heading(name: str) -> str:
    metric = METRICS[name]
    return f"{metric.label} ({metric.unit})" if metric.unit else metric.label


@app.command()
def trials(
    job_id: Annotated[str, typer.Argument(help="job id (or a unique prefix of it)")],
    state: Annotated[Optional[str], typer.Option(help="only trials in this state")] = None,
    pareto: Annotated[bool, typer.Option("--pareto", help="only the Pareto-optimal trials")] = False,
    csv_output: Annotated[
        bool, typer.Option("--csv", help="print every trial as CSV (architecture keys as arch.KEY, every metric)")
    ] = False,
    json_output: JsonOutput = False,
) -> None:
    """List a job's trials: number, id (its shortest unique prefix), state, each architecture key,
    and the main metrics."""
    if csv_output and (pareto or state or json_output):
        raise fail("--csv prints every trial; it does not combine with --pareto, --state or --json", ExitCode.USAGE)
    with _client() as client:
        if csv_output:
            sys.stdout.write(client.trials_csv(job_id))
            return
        rows = client.pareto(job_id) if pareto else list(client.trials(job_id, state=state))
        if json_output:
            _print_json(_dump(rows))
            return
        archs = [flatten(t.arch) for t in rows]
        keys = key_order(archs)
        if len(keys) > MAX_ARCH_COLUMNS:
            err.print(f"the first {MAX_ARCH_COLUMNS} of {len(keys)} architecture keys are shown; --csv or --json has them all")
            keys = keys[:MAX_ARCH_COLUMNS]
        short = short_ids(t.id for t in rows)
        table = Table("#", id_column("id", short.values()), "state", *keys, *map(_heading, TRIAL_COLUMNS), "error")
        for t, arch in zip(rows, archs):
            shape = [escape(str(arch[k])) if k in arch else "-" for k in keys]
            values = [format_value(name, t.metrics.get(name)) for name in TRIAL_COLUMNS]
            table.add_row(str(t.number), short[t.id], t.state.value, *shape, *values, escape((t.error or "")[:60]))
        out.print(table)


@app.command()
def cancel(job_id: Annotated[str, typer.Argument(help="job id (or a unique prefix of it)")], json_output: JsonOutput = False) -> None:
    """Cancel a job: queued ones at once, running ones within seconds; its trials end cancelled and none starts after."""
    with _client() as client:
        job = client.cancel(job_id)
        err.print(f"job {job.id}: cancellation requested ({job.status.value})")
        if json_output:
            _print_json(job.model_dump(mode="json"))


@app.command()
def logs(trial_id: Annotated[str, typer.Argument(help="trial id (or a unique prefix of it)")]) -> None:
    """Print a trial's log: what its code logged and warned on its worker, and its traceback if it
    failed (the end, size-capped). Exit 4 when it has none yet, saying why."""
    with _client() as client:
        text = client.trial_log(trial_id)
    for line in text.splitlines():  # each line's terminal escapes made visible, as every output does
        print(escape_controls(line.replace("\t", "    ")))


def _attr(text: str) -> tuple[str, Any]:
    """``key=value``: the value as JSON when it reads as a number, boolean or null (which removes the key), else text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"{text!r} is not key=value")
    try:
        value = json.loads(raw)
    except ValueError:
        return key, raw
    return key, value if value is None or isinstance(value, (bool, int, float)) else raw


@app.command()
def note(
    id: Annotated[str, typer.Argument(help="a job or trial id")],
    text: Annotated[Optional[str], typer.Argument(help='the note; "" clears it; leave out to show the note')] = None,
    attr: Annotated[
        Optional[list[str]],
        typer.Option("--attr", help="key=value user attribute (repeatable); a number, true/false, or text; key=null removes it"),
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Show or set the note and user attributes of a job or a trial (the job is looked for first)."""
    from nas.client import NotFoundError

    attrs = dict(_attr(a) for a in attr or [])
    changing = text is not None or bool(attrs)
    with _client() as client:
        try:
            record: Job | Trial = client.annotate_job(id, text, attrs or None) if changing else client.job(id)
            what = "job"
        except NotFoundError:
            record = client.annotate_trial(id, text, attrs or None) if changing else client.trial(id)
            what = "trial"
        if json_output:
            _print_json(record.model_dump(mode="json"))
            return
        if changing:
            err.print(f"{what} {record.id}: note and attributes saved")
        out.print("\n".join(escape(line) for line in (record.note or "(no note)").splitlines()))
        for key, value in record.user_attrs.items():
            out.print(f"{escape(key)}={escape(value if isinstance(value, str) else json.dumps(value))}")


@app.command()
def extend(
    job_id: Annotated[str, typer.Argument(help="job id")],
    trials: Annotated[Optional[int], typer.Option("--trials", min=1, help="raise budget.max_trials to this")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=0, help="raise budget.timeout_s to this")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Raise a job's budget: a running job takes it up within seconds; a finished one is queued
    again and resumed with its trials (its time limit counting from the restart)."""
    if trials is None and timeout is None:
        raise fail("give --trials, --timeout or both", ExitCode.USAGE)
    with _client() as client:
        job = client.extend_job(job_id, max_trials=trials, timeout_s=timeout)
        budget = job.spec["budget"]
        err.print(f"job {job.id} {job.status.value}: max_trials {budget['max_trials']}, "
                  f"timeout_s {budget.get('timeout_s') or 'none'}")  # fmt: skip
        if json_output:
            _print_json(job.model_dump(mode="json"))


@app.command("rm")
def remove_job(job_id: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Delete a finished job with its trials and model files; refused (exit 1) while it is queued or
    running: `nas cancel` it first."""
    with _client() as client:
        client.delete_job(job_id)
    err.print(f"deleted job {escape(job_id)}")


@app.command()
def whoami(json_output: JsonOutput = False) -> None:
    """Print the owner NAS_API_KEY signs in as, and whether it is an admin key."""
    with _client() as client:
        identity = client.whoami()
    if json_output:
        _print_json(identity.model_dump(mode="json"))
    else:
        print(escape_controls(identity.owner) + (" (admin)" if identity.is_admin else ""))


@app.command("export")
def export_model(
    trial_id: Annotated[str, typer.Argument(help="trial id (or a unique prefix of it)")],
    format: Annotated[
        ModelFormat,
        typer.Option(
            "--format", "-f",
            help="safetensors (masked model), onnx (sparse inference model; CSR layers dense), "
                 "inference (torch sparse inference model) or report (per-layer sparsity report, JSON)",
        ),
    ] = ModelFormat.safetensors,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="file to write (default: trial-<id>.<suffix> here)")
    ] = None,
    report: Annotated[
        Optional[Path], typer.Option("--report", help="also write the per-layer sparsity report (JSON) to this file")
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Download a trial's model: safetensors (weights and masks), ONNX (the sparse inference model the
    latency was measured on, checked in onnxruntime; layers that run as CSR in torch are dense in
    ONNX), inference (the torch sparse inference model, for nas.export.load_inference_model) or its
    sparsity report."""
    with _client() as client:
        path = client.download_model(trial_id, output if output is not None else Path.cwd(), format=format.value)
        size = path.stat().st_size
        err.print(escape(f"wrote the {format.value} model of trial {trial_id} to {path} ({size} bytes)"))
        written = {"trial_id": trial_id, "format": format.value, "path": str(path), "bytes": size}
        if report is not None:
            report_path = client.download_model(trial_id, report, format="report")
            err.print(escape(f"wrote the sparsity report of trial {trial_id} to {report_path}"))
            written["report"] = str(report_path)
        if json_output:
            _print_json(written)
        else:
            print(path)


# -- datasets ----------------------------------------------------------------------------------

DatasetName = Annotated[Optional[str], typer.Option("--name", help="what to call it (default: the file's name, without extension)")]
LabelColumn = Annotated[Optional[str], typer.Option("--label-column", help="CSV, Parquet: the column of the classes")]
ImageSize = Annotated[
    Optional[int], typer.Option("--image-size", help="image archives: side of the square images are resized to")
]
ColorOption = Annotated[Optional[Color], typer.Option("--color", help="image archives: grayscale or rgb")]
TestFraction = Annotated[
    Optional[float], typer.Option("--test-fraction", help="share held out for testing when the data has no test split")
]
SplitSeed = Annotated[Optional[int], typer.Option("--split-seed", help="seed of that stratified split")]


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape))


def _stored(dataset: Dataset, json_output: bool) -> None:
    """Say what was stored on stderr; its id (the last line) or its JSON on stdout."""
    err.print(escape(f"dataset {dataset.name!r}: {dataset.id} ({dataset.format}, {_shape(dataset.input_shape)}, "
                     f"{dataset.num_classes} classes, {dataset.n_train} train and {dataset.n_test} test examples)"))
    if json_output:
        _print_json(dataset.model_dump(mode="json"))
    else:
        print(dataset.id)


@datasets_app.command("upload")
def datasets_upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=(
        ".npz (x, y, optionally x_test, y_test), .csv, .parquet, or .zip/.tar/.tar.gz of images in one folder "
        "per class"))],
    name: DatasetName = None,
    label_column: LabelColumn = None,
    image_size: ImageSize = None,
    color: ColorOption = None,
    test_fraction: TestFraction = None,
    split_seed: SplitSeed = None,
    json_output: JsonOutput = False,
) -> None:
    """Upload a dataset and print its id, for a job's `dataset: {name: upload, params: {id: ID}}`.

    The same file with the same options is stored once: uploading it again prints the same id.
    """
    with _client() as client:
        dataset = client.upload_dataset(path, name=name, label_column=label_column, image_size=image_size,
                                        color=color.value if color else None, test_fraction=test_fraction,
                                        split_seed=split_seed, progress=err.is_terminal)
        _stored(dataset, json_output)


@datasets_app.command("register")
def datasets_register(
    path: Annotated[str, typer.Argument(help="a path or file:// URI on the server, under its NAS_DATA_ROOTS")],
    name: DatasetName = None,
    label_column: LabelColumn = None,
    image_size: ImageSize = None,
    color: ColorOption = None,
    test_fraction: TestFraction = None,
    split_seed: SplitSeed = None,
    json_output: JsonOutput = False,
) -> None:
    """Register a dataset by its path on the server (for data too large to upload) and print its id.

    The path must lie under the server's NAS_DATA_ROOTS; the workers read it there. Same formats as upload.
    """
    with _client() as client:
        dataset = client.register_dataset(path, name=name, label_column=label_column, image_size=image_size,
                                          color=color.value if color else None, test_fraction=test_fraction,
                                          split_seed=split_seed)
        _stored(dataset, json_output)


@datasets_app.command("list")
def datasets_list(json_output: JsonOutput = False) -> None:
    """List your datasets, newest first."""
    from rich.filesize import decimal

    with _client() as client:
        listed = list(client.datasets())
        if json_output:
            _print_json(_dump(listed))
            return
        short = short_ids(d.id for d in listed)
        table = Table(id_column("id", short.values()), "name", "format", "shape", "classes", "train", "test", "size", "created")
        for d in listed:
            table.add_row(short[d.id], escape(d.name), d.format, _shape(d.input_shape), str(d.num_classes), str(d.n_train),
                          str(d.n_test), decimal(d.size_bytes), d.created_at.strftime("%Y-%m-%d %H:%M:%S"))
        out.print(table)


@datasets_app.command("show")
def datasets_show(
    dataset_id: Annotated[str, typer.Argument(help="dataset id")], json_output: JsonOutput = False
) -> None:
    """Show a dataset: where it came from, its shape and split, and how many examples each class has."""
    from rich.filesize import decimal

    with _client() as client:
        d = client.dataset(dataset_id)
    if json_output:
        _print_json(d.model_dump(mode="json"))
        return
    options = ", ".join(f"{k}={v}" for k, v in d.options.model_dump().items() if v is not None)
    fields = Table("field", "value", show_header=False)
    for label, value in (
        ("id", d.id), ("name", d.name), ("owner", d.owner), ("format", d.format),
        ("source", f"{d.source} {d.path}" if d.path else d.source), ("input shape", _shape(d.input_shape)),
        ("classes", str(d.num_classes)),
        ("examples", f"{d.n_train} train, {d.n_test} test ({'given' if d.test_given else 'split at upload'})"),
        ("size", f"{decimal(d.size_bytes)} ({decimal(d.stored_bytes)} stored)"), ("sha256", d.sha256),
        ("options", options), ("created", d.created_at.strftime("%Y-%m-%d %H:%M:%S")),
    ):
        fields.add_row(label, escape(value))
    out.print(fields)
    balance = Table("class", "train", "test")
    for i, class_name in enumerate(d.class_names):
        balance.add_row(escape(class_name), str(d.class_counts["train"][i]), str(d.class_counts["test"][i]))
    out.print(balance)


@datasets_app.command("rm")
def datasets_rm(dataset_id: Annotated[str, typer.Argument(help="dataset id")]) -> None:
    """Delete a dataset and its stored files; refused (exit 1) while a queued or running job uses it."""
    with _client() as client:
        client.delete_dataset(dataset_id)
    err.print(f"deleted dataset {escape(dataset_id)}")


# -- models ------------------------------------------------------------------------------------


def _latency(model: Model) -> str:
    return ", ".join(f"{target} {ms:.3g} ms" for target, ms in model.dense_latency_ms.items()) or "-"


@models_app.command("upload")
def models_upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="an ONNX file, its weights inside it")],
    name: Annotated[Optional[str], typer.Option("--name", help="what to call it (default: the file's name, without extension)")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Upload a trained network as ONNX and print its id, for a job's
    `search_space: {name: model_sparsity, params: {model_id: ID}}`.

    The server checks and converts it and times it dense; a refusal names the failed check or
    operator (exit 2). The same file is stored once: uploading it again prints the same id.
    """
    with _client() as client:
        model = client.upload_model(path, name=name, progress=err.is_terminal)
    err.print(escape(f"model {model.name!r}: {model.id} (input {_shape(model.input_shape)}, {model.num_outputs} "
                     f"outputs, {model.params} parameters, {len(model.layers)} prunable layers, dense {_latency(model)})"))
    if json_output:
        _print_json(model.model_dump(mode="json"))
    else:
        print(model.id)


@models_app.command("list")
def models_list(json_output: JsonOutput = False) -> None:
    """List your models, newest first."""
    from rich.filesize import decimal

    with _client() as client:
        listed = list(client.models())
    if json_output:
        _print_json(_dump(listed))
        return
    short = short_ids(m.id for m in listed)
    table = Table(id_column("id", short.values()), "name", "input", "outputs", "params", "layers", "dense latency", "size", "created")
    for m in listed:
        table.add_row(short[m.id], escape(m.name), _shape(m.input_shape), str(m.num_outputs), str(m.params), str(len(m.layers)),
                      _latency(m), decimal(m.size_bytes), m.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    out.print(table)


@models_app.command("show")
def models_show(model_id: Annotated[str, typer.Argument(help="model id")], json_output: JsonOutput = False) -> None:
    """Show a model: its input, parameters, dense latency and every prunable layer with its shape."""
    from rich.filesize import decimal

    with _client() as client:
        m = client.model(model_id)
    if json_output:
        _print_json(m.model_dump(mode="json"))
        return
    fields = Table("field", "value", show_header=False)
    for label, value in (
        ("id", m.id), ("name", m.name), ("owner", m.owner), ("input shape", _shape(m.input_shape)),
        ("outputs", str(m.num_outputs)), ("parameters", str(m.params)), ("dense latency", _latency(m)),
        ("opset", str(m.opset)), ("producer", m.producer), ("size", decimal(m.size_bytes)), ("sha256", m.sha256),
        ("created", m.created_at.strftime("%Y-%m-%d %H:%M:%S")),
    ):
        fields.add_row(label, escape(value))
    out.print(fields)
    layers = Table("layer", "kind", "shape", "params")
    for layer in m.layers:
        layers.add_row(escape(str(layer["name"])), escape(str(layer["kind"])), _shape(layer["shape"]), str(layer["params"]))
    out.print(layers)


@models_app.command("rm")
def models_rm(model_id: Annotated[str, typer.Argument(help="model id")]) -> None:
    """Delete a model and its stored file; refused (exit 1) while a queued or running job searches it."""
    with _client() as client:
        client.delete_model(model_id)
    err.print(f"deleted model {escape(model_id)}")


@app.command("open")
def open_dashboard(
    job_id: Annotated[str, typer.Argument(help="job id")],
    browser: Annotated[bool, typer.Option("--browser", help="also open it in the default web browser")] = False,
    json_output: JsonOutput = False,
) -> None:
    """Print the dashboard URL of a job (NAS_URL/#/jobs/JOB); --browser opens it too."""
    from nas.client import dashboard_url

    url = dashboard_url(None, job_id)
    if json_output:
        _print_json({"job_id": job_id, "url": url})
    else:
        print(url)
    if browser:
        import webbrowser

        if not webbrowser.open(url):
            err.print("[yellow]warning:[/yellow] no web browser could be started; open the URL above")
