"""Measurement agents' routes: register, lease a task (long-poll), fetch its model, renew, report.

Agents are pull-only clients, like CI runners: the device calls out, the service never connects
in. Only agent keys (``nas keys create NAME --agent``) are let in here, and an agent sees only
its own owner's targets and the tasks leased to it; it never reads jobs, trials or models.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from api.deps import AgentPrincipalDep, SettingsDep, StoreDep
from api.responses import errors
from nas.safe_text import check_printable
from nas.store.measurements import LEASE_S, AgentRecord, LeaseLost, TaskRecord
from nas.timing.agent_targets import TARGET_PATTERN
from nas.timing.runtimes import MODEL_FORMAT, RUNTIMES

router = APIRouter(prefix="/agents", tags=["agents"])

POLL_S = 20  # how long an agent's lease request waits for work before answering 204
_RECHECK_S = 0.25  # how often a waiting lease request looks for work again


class RuntimeOffer(BaseModel):
    name: str = Field(description=f"one of: {', '.join(RUNTIMES)}")
    version: str | None = Field(None, max_length=100)
    device: str | None = Field(None, max_length=200)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in RUNTIMES:
            raise ValueError(f"unknown runtime {name!r}; valid: {', '.join(RUNTIMES)}")
        return name


class Registration(BaseModel):
    """What an agent says of itself when it starts."""

    target: str = Field(pattern=TARGET_PATTERN, description="the target this agent measures for; created when new")
    name: str = Field(min_length=1, max_length=200, description="unique within the target; the same name is the same agent")
    hardware: dict[str, Any] = Field(default_factory=dict, description="cpu, cores, memory_gb, os, machine, python, accelerator")
    runtimes: list[RuntimeOffer] = Field(min_length=1, max_length=len(RUNTIMES))
    concurrency: int = Field(1, ge=1, le=64, description="tasks it times at once")

    @field_validator("name")
    @classmethod
    def _printable(cls, name: str) -> str:
        return check_printable(name)

    @field_validator("hardware")
    @classmethod
    def _small(cls, hardware: dict[str, Any]) -> dict[str, Any]:
        if len(str(hardware)) > 4000:
            raise ValueError("the hardware description is over 4000 characters")
        return hardware


class Registered(BaseModel):
    id: str
    target: str
    poll_s: int
    lease_s: float


class Task(BaseModel):
    """A model to time: download ``model_url``, time it under ``runtime``, report the statistics."""

    id: str
    lease_id: str
    lease_s: float
    runtime: str
    format: str
    input_shape: list[int]
    batch_size: int
    num_threads: int
    min_run_time: float
    rounds: int
    model_url: str

    @classmethod
    def of(cls, agent_id: str, task: TaskRecord) -> Task:
        assert task.lease_id is not None
        return cls(
            id=task.id, lease_id=task.lease_id, lease_s=LEASE_S, runtime=task.runtime, format=MODEL_FORMAT,
            input_shape=task.input_shape, batch_size=task.batch_size, num_threads=task.num_threads,
            min_run_time=task.min_run_time, rounds=task.rounds,
            model_url=f"/api/v1/agents/{agent_id}/tasks/{task.id}/model",
        )  # fmt: skip


class Lease(BaseModel):
    lease_id: str = Field(max_length=32)


class Renewed(BaseModel):
    lease_s: float


class Report(BaseModel):
    """An agent's measurement (``stats``, as ``nas.timing.protocol`` gives them) or why it could not measure."""

    lease_id: str = Field(max_length=32)
    stats: dict[str, float] | None = Field(None, description="p10_ms, median_ms, iqr_ms, ... in milliseconds")
    runtime: RuntimeOffer | None = None
    error: str | None = Field(None, max_length=4000)

    @field_validator("stats")
    @classmethod
    def _has_latency(cls, stats: dict[str, float] | None) -> dict[str, float] | None:
        if stats is not None:
            for name in ("p10_ms", "median_ms"):
                value = stats.get(name)
                if value is None or not (0 < value < 1e7):
                    raise ValueError(f"stats.{name} must be a positive number of milliseconds")
        return stats


class Reported(BaseModel):
    state: str


async def _agent(store: Any, principal: Any, agent_id: str) -> AgentRecord:
    return await run_in_threadpool(store.measurements.agent, principal, agent_id)


@router.post("", response_model=Registered, status_code=201, responses=errors())
async def register(body: Registration, principal: AgentPrincipalDep, store: StoreDep) -> Registered:
    """Register (or re-register) an agent for one of the key owner's targets."""
    agent = await run_in_threadpool(
        store.measurements.register_agent, principal, body.target, body.name, body.hardware,
        [offer.model_dump() for offer in body.runtimes], body.concurrency,
    )  # fmt: skip
    return Registered(id=agent.id, target=agent.target, poll_s=POLL_S, lease_s=LEASE_S)


@router.post("/{agent_id}/lease", response_model=Task, responses={**errors(404), 204: {"description": "no work came within `wait` seconds"}})
async def lease(
    principal: AgentPrincipalDep, store: StoreDep, agent_id: str = Path(max_length=32),
    wait: float = Query(POLL_S, ge=0, le=30, description="seconds to wait for work before answering 204"),
) -> Any:
    """The next measurement task of the agent's target in a runtime it offers, leased to it for ``lease_s``."""
    deadline = time.monotonic() + wait
    agent = await _agent(store, principal, agent_id)
    while True:
        task = await run_in_threadpool(store.measurements.lease, agent)
        if task is not None:
            return Task.of(agent_id, task)
        if time.monotonic() >= deadline:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        await asyncio.sleep(min(_RECHECK_S, max(0.0, deadline - time.monotonic())))


@router.get("/{agent_id}/tasks/{task_id}/model", response_class=FileResponse, responses=errors(404, 410))
async def task_model(
    principal: AgentPrincipalDep, store: StoreDep, settings: SettingsDep,
    agent_id: str = Path(max_length=32), task_id: str = Path(max_length=32),
) -> FileResponse:
    """The ONNX file of a task of the agent's target."""
    agent = await _agent(store, principal, agent_id)
    task = await run_in_threadpool(store.measurements.task_for_agent, agent, task_id)
    path = settings.artifact_dir / task.model_path
    if not path.is_file():
        raise HTTPException(status.HTTP_410_GONE, f"the model of task {task_id} is gone (its trial or calibration ended)")
    return FileResponse(path, media_type="application/octet-stream", filename=f"{task_id}.onnx")


@router.post("/{agent_id}/tasks/{task_id}/heartbeat", response_model=Renewed, responses=errors(404, 409))
async def heartbeat(
    body: Lease, principal: AgentPrincipalDep, store: StoreDep,
    agent_id: str = Path(max_length=32), task_id: str = Path(max_length=32),
) -> Renewed:
    """Extend the lease while measuring; 409 when it was lost (it expired and another agent took the task)."""
    agent = await _agent(store, principal, agent_id)
    try:
        await run_in_threadpool(store.measurements.heartbeat, agent, task_id, body.lease_id)
    except LeaseLost as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return Renewed(lease_s=LEASE_S)


@router.put("/{agent_id}/tasks/{task_id}/result", response_model=Reported, responses=errors(404, 409))
async def result(
    body: Report, principal: AgentPrincipalDep, store: StoreDep,
    agent_id: str = Path(max_length=32), task_id: str = Path(max_length=32),
) -> Reported:
    """Report a task's statistics (or error) once; reporting a finished task again changes nothing."""
    if (body.stats is None) == (body.error is None):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "send either stats or error")
    agent = await _agent(store, principal, agent_id)
    measured = None
    if body.stats is not None:
        measured = {
            "stats": body.stats, "runtime": None if body.runtime is None else body.runtime.model_dump(),
            "agent_id": agent.id, "agent": agent.name, "hardware": agent.hardware,
        }  # fmt: skip
    try:
        task = await run_in_threadpool(store.measurements.report, agent, task_id, body.lease_id, measured, body.error)
    except LeaseLost as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return Reported(state=task.state)
