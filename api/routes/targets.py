"""Targets: the server's own devices and the caller's agent targets, with their agents, queues and
predictors; calibration of an agent target's predictor through its agents.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import PrincipalDep, SettingsDep, StoreDep
from api.responses import errors
from nas.store.measurements import AgentRecord, CalibrationRecord, PredictorRecord, TargetRecord
from nas.timing.agent_targets import TARGET_PATTERN
from nas.timing.runtimes import RUNTIMES
from nas.timing.targets import describe_targets

router = APIRouter(prefix="/targets", tags=["targets"])


class AgentInfo(BaseModel):
    id: str
    name: str
    online: bool = Field(description="called the service within the last 90 s")
    last_seen_at: datetime
    registered_at: datetime
    hardware: dict[str, Any]
    runtimes: list[dict[str, Any]]
    concurrency: int
    leased: int = Field(description="tasks it holds now")
    measurements_done: int

    @classmethod
    def of(cls, agent: AgentRecord) -> AgentInfo:
        return cls(
            id=agent.id, name=agent.name, online=agent.online, last_seen_at=agent.last_seen_at,
            registered_at=agent.registered_at, hardware=agent.hardware, runtimes=agent.runtimes,
            concurrency=agent.concurrency, leased=agent.leased, measurements_done=agent.measurements_done,
        )  # fmt: skip


class PredictorInfo(BaseModel):
    """A target's newest predictor for one runtime, and how it did on held-out models measured on the target."""

    version: int
    runtime: str
    created_at: datetime
    models: int | None = None
    within_10: float | None = Field(None, description="share of held-out models predicted within ±10%")
    spearman: float | None = None
    noise_ceiling_within_10: float | None = Field(
        None, description="share of those models whose two measurements agree within ±10%: the best a predictor can do"
    )
    error_p90: float | None = Field(
        None, description="relative error that 90% of held-out models were within; candidates predicted this close to "
        "constraints.max_latency_ms are measured on an agent before training"
    )

    @classmethod
    def of(cls, record: PredictorRecord) -> PredictorInfo:
        accuracy = record.accuracy
        return cls(
            version=record.version, runtime=record.runtime, created_at=record.created_at,
            models=accuracy.get("models"), within_10=accuracy.get("within_10"), spearman=accuracy.get("spearman"),
            noise_ceiling_within_10=accuracy.get("noise_ceiling_within_10"), error_p90=accuracy.get("error_p90"),
        )  # fmt: skip


class TargetInfo(BaseModel):
    name: str
    kind: str = Field(description="builtin (the server's own workers) or agent (measured by the owner's agents)")
    owner: str | None
    description: str
    runtimes: list[str]
    queued: int = Field(description="measurement tasks waiting for an agent")
    online_agents: int
    agents: list[AgentInfo]
    predictor: PredictorInfo | None = Field(None, description="the newest predictor (of the first runtime that has one)")
    predictors: list[PredictorInfo] = Field(default_factory=list, description="the newest predictor of each runtime")

    @classmethod
    def of(cls, target: TargetRecord) -> TargetInfo:
        agents = [AgentInfo.of(agent) for agent in target.agents]
        runtimes = sorted({name for agent in target.agents for name in agent.runtime_names()}, key=RUNTIMES.index)
        predictors = [PredictorInfo.of(p) for p in target.predictors]
        hardware = next((a.hardware for a in target.agents if a.online), target.agents[0].hardware if target.agents else {})
        return cls(
            name=target.name, kind="agent", owner=target.owner,
            description=str(hardware.get("cpu") or "no agent has registered yet"), runtimes=runtimes,
            queued=target.queued, online_agents=sum(a.online for a in agents), agents=agents,
            predictor=predictors[0] if predictors else None, predictors=predictors,
        )  # fmt: skip


class TargetList(BaseModel):
    items: list[TargetInfo]


class CalibrationRequest(BaseModel):
    runtime: str | None = Field(None, description="the runtime to calibrate; default: the first its online agents offer")
    quick: bool = Field(True, description="the quick plan (minutes); false for the full plan")


class CalibrationInfo(BaseModel):
    id: str
    target: str
    runtime: str
    quick: bool
    state: str = Field(description="measuring, done or failed")
    progress: str | None
    error: str | None
    predictor_version: int | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, target: str, record: CalibrationRecord) -> CalibrationInfo:
        return cls(target=target, **{k: v for k, v in record.__dict__.items() if k != "target_id"})


def _builtin() -> list[TargetInfo]:
    return [
        TargetInfo(name=entry["name"], kind="builtin", owner=None, description=f"{entry['device']}: {entry['description']}",
                   runtimes=["torch-cuda" if entry["name"] == "cuda" else "torch"], queued=0, online_agents=0, agents=[])
        for entry in describe_targets()
    ]  # fmt: skip


@router.get("", response_model=TargetList, responses=errors())
async def list_targets(principal: PrincipalDep, store: StoreDep) -> TargetList:
    """The server's own targets, then the caller's agent targets (every owner's for an admin)."""
    owner = None if principal.is_admin else principal.owner
    targets = await run_in_threadpool(store.measurements.targets, owner)
    return TargetList(items=[*_builtin(), *(TargetInfo.of(t) for t in targets)])


@router.get("/{name}", response_model=TargetInfo, responses=errors(404))
async def get_target(principal: PrincipalDep, store: StoreDep, name: str = Path(pattern=TARGET_PATTERN)) -> TargetInfo:
    for builtin in _builtin():
        if builtin.name == name:
            return builtin
    return TargetInfo.of(await run_in_threadpool(store.measurements.target, principal.owner, name))


@router.post("/{name}/calibrations", response_model=CalibrationInfo, status_code=202, responses=errors(404, 409))
async def calibrate(
    body: CalibrationRequest, principal: PrincipalDep, store: StoreDep, settings: SettingsDep,
    name: str = Path(pattern=TARGET_PATTERN),
) -> CalibrationInfo:
    """Start calibrating the target's predictor through its agents: the service builds the calibration
    models, its agents time them, and the predictor fitted from what they report is stored as a new version."""
    from workers.agent_tasks import run_calibration

    target = await run_in_threadpool(store.measurements.target, principal.owner, name)
    offered = [r for a in target.agents if a.online for r in a.runtime_names()]
    runtime = body.runtime or next((r for r in RUNTIMES if r in offered), None)
    if runtime is None or runtime not in offered:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"no online agent of target {name!r} offers runtime {runtime or 'any'}; start one with "
            f"`nas agent --url URL --key AGENT_KEY --target {name}`",
        )
    record = await run_in_threadpool(store.measurements.create_calibration, target.id, runtime, body.quick)
    threading.Thread(
        target=run_calibration, args=(store, settings, target, record), name=f"calibrate-{name}", daemon=True
    ).start()
    return CalibrationInfo.of(name, record)


@router.get("/{name}/calibrations/{calibration_id}", response_model=CalibrationInfo, responses=errors(404))
async def get_calibration(
    principal: PrincipalDep, store: StoreDep, name: str = Path(pattern=TARGET_PATTERN),
    calibration_id: str = Path(max_length=32),
) -> CalibrationInfo:
    target = await run_in_threadpool(store.measurements.target, principal.owner, name)
    return CalibrationInfo.of(name, await run_in_threadpool(store.measurements.calibration, target.id, calibration_id))
