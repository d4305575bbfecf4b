"""The real app on a real localhost socket (uvicorn in a thread, with the app's lifespan), for the
SDK, CLI and HTTP tests.

``FaultInjector`` wraps the app to answer chosen requests with a gateway error, before or after
the app has handled them (the answer lost on the way back), so retries are tested against the
real routes.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.app import create_app
from nas.settings import Settings
from nas.specs import Trial, TrialState
from nas.store import Artifact, Store, make_engine, upgrade

SPEC: dict[str, Any] = {
    "name": "client-test",
    "search_space": {"name": "sparse_mlp", "params": {}},
    "dataset": {"name": "digits", "params": {}},
    "budget": {"max_trials": 3},
}


@dataclass
class FaultInjector:
    """ASGI middleware: the next ``fail`` requests (matching ``method``) get ``status``.

    ``after=True`` lets the app handle the request first and then replaces its answer, as a
    proxy does when the backend's answer is lost. ``seen`` counts every request that came in.
    """

    app: ASGIApp
    fail: int = 0
    status: int = 503
    method: str | None = None
    after: bool = False
    retry_after: str | None = None
    seen: list[str] = field(default_factory=list)

    def arm(self, fail: int, status: int = 503, method: str | None = None, after: bool = False,
            retry_after: str | None = None) -> None:
        self.fail, self.status, self.method, self.after, self.retry_after = fail, status, method, after, retry_after
        self.seen.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.seen.append(f"{scope['method']} {scope['path']}")
        if self.fail <= 0 or (self.method and scope["method"] != self.method):
            await self.app(scope, receive, send)
            return
        self.fail -= 1
        if self.after:
            async def swallow(message: Message) -> None:
                return None

            await self.app(scope, receive, swallow)
        headers = {"Retry-After": self.retry_after} if self.retry_after else None
        await JSONResponse({"detail": "bad gateway (injected)"}, self.status, headers=headers)(scope, receive, send)


@dataclass
class Server:
    url: str
    store: Store
    settings: Settings
    database_url: str
    faults: FaultInjector


def serve(home: Path, **settings_fields: Any) -> Iterator[Server]:
    """The app over a SQLite file in ``home`` on a free port, until the generator is closed;
    ``settings_fields`` override the :class:`Settings` defaults."""
    (home / "data").mkdir(exist_ok=True)
    database_url = f"sqlite:///{home / 'nas.db'}"
    settings = Settings(home=home, database_url=database_url, data_dir=home / "data", **settings_fields)
    engine = make_engine(database_url)
    upgrade(engine)
    store = Store(engine)
    faults = FaultInjector(create_app(store, settings))

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(faults, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
        time.sleep(0.01)
    try:
        yield Server(f"http://127.0.0.1:{port}", store, settings, database_url, faults)
    finally:
        uv.should_exit = True  # the lifespan's end shuts the app's worker pools down
        thread.join(timeout=30)
        sock.close()
        engine.dispose()


def complete_trial(store: Store, job_id: str, **metrics: float) -> Trial:
    trial = store.create_trial(job_id, {"metrics": sorted(metrics)})
    store.start_trial(trial.id)
    return store.finish_trial(trial.id, TrialState.complete, metrics=metrics)


def store_model(server: Server, trial: Trial, data: bytes, fmt: str = "safetensors") -> Artifact:
    """Put ``data`` in the artifact store as the trial's model, as the runner does."""
    from nas.store.artifacts import save_model

    artifact = save_model(server.settings.artifact_dir, trial.job_id, trial.id, data, fmt=fmt)
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    server.store.add_artifact(artifact)
    return artifact


def model_bytes(space_name: str = "sparse_mlp", params: dict[str, Any] | None = None,
                input_shape: tuple[int, ...] = (1, 8, 8), seed: int = 0, density: float = 0.3) -> bytes:
    """A model of ``space_name`` as a trial saves it: a sampled architecture, random masks at
    ``density``, batch-norm statistics from a few batches of noise (as training leaves them),
    and the metadata :func:`nas.training.load_trained_model` rebuilds it from."""
    import json
    import random

    import torch

    from nas import registry
    from torch.nn.utils import parametrize

    from nas.sparse.masks import harden_mask, prunable_weights, set_mask
    from nas.sparse.serialization import save_model

    torch.manual_seed(seed)
    space = registry.search_spaces.create(space_name, params or {})
    arch = space.sample(random.Random(seed))
    model = space.build(arch, input_shape, 10)
    for module, attr in prunable_weights(model).values():
        mask = torch.rand_like(getattr(module, attr)) < density
        # A layer built with its own mask (DASS's scores) gets this one instead, as training leaves it.
        (harden_mask if parametrize.is_parametrized(module, attr) else set_mask)(module, attr, mask)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, *input_shape))
    metadata = {
        "search_space": space_name,
        "search_space_params": json.dumps(params or {}, sort_keys=True),
        "arch": json.dumps(arch, sort_keys=True),
        "dataset": "digits",
        "input_shape": json.dumps(list(input_shape)),
        "num_classes": "10",
    }
    return save_model(model.eval(), metadata)
