"""``nas agent``: measure models for the service on this device (docs/agents.md).

The command imports the agent only when run: the agent needs numpy and a runtime (onnxruntime, or
torch), which other client commands have no use for.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_HOME = Path("~/.nas-agent")


Target = Annotated[str, typer.Option("--target", help="the target this device measures for (created on first use)")]
Url = Annotated[Optional[str], typer.Option("--url", envvar="NAS_URL", help="the server (default http://127.0.0.1:8000)")]
Key = Annotated[Optional[str], typer.Option("--key", envvar="NAS_API_KEY", help="an agent key: nas keys create NAME --agent")]
Name = Annotated[Optional[str], typer.Option("--name", help="this agent's name (default: kept in --home, else hostname-XXXX)")]
Runtimes = Annotated[
    Optional[list[str]], typer.Option("--runtime", help="offer only these runtimes, repeated or comma-separated (default: all)")
]
Concurrency = Annotated[int, typer.Option("--concurrency", min=1, help="models timed at once (more disturb each other)")]
Home = Annotated[
    Optional[Path], typer.Option("--home", envvar="NAS_AGENT_HOME", help="folder of the agent's state (default ~/.nas-agent)")
]
Once = Annotated[bool, typer.Option("--once", help="exit after one task")]
Poll = Annotated[Optional[float], typer.Option("--poll", min=0, max=30, help="seconds a long poll waits (default: the server's)")]


def agent(
    target: Target,
    url: Url = None,
    key: Key = None,
    name: Name = None,
    runtime: Runtimes = None,
    concurrency: Concurrency = 1,
    home: Home = None,
    once: Once = False,
    poll: Poll = None,
) -> None:
    """Measure models for the service on this device: register the target, then lease, time and report tasks.

    Runtimes: onnxruntime, onnxruntime-cuda, torch, torch-cuda. The agent only calls out to the server.
    SIGTERM or Ctrl-C stops it after the measurements in progress. One line per measurement goes to stderr.
    """
    from nas.agent.hardware import RuntimeUnavailable
    from nas.agent.loop import EXIT_USAGE, Agent, AgentConfig, Fatal
    from nas.client import DEFAULT_URL

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if not key:
        typer.echo("error: an agent key is needed: --key or NAS_API_KEY (`nas keys create NAME --agent`)", err=True)
        raise typer.Exit(EXIT_USAGE)
    runtimes = tuple(part.strip() for value in runtime or () for part in value.split(",") if part.strip())
    config = AgentConfig(
        url=url or os.environ.get("NAS_URL") or DEFAULT_URL,
        key=key,
        target=target,
        home=(home or DEFAULT_HOME).expanduser(),
        name=name,
        runtimes=runtimes,
        concurrency=concurrency,
        once=once,
        poll=poll,
    )
    try:
        running = Agent(config)
        with running.signals():
            code = running.run()
    except RuntimeUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except Fatal as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.code) from None
    raise typer.Exit(code)
