"""Work for measurement agents: a trial's latency, and a target's calibration, timed on the user's device.

A trial of a job whose ``target`` is an agent target trains on Ray as any other; its inference
model is then exported to ONNX and queued as a measurement task of that target, and the trial stays
``running`` until an agent reports (or ``budget.target_timeout_s`` passes). A calibration builds
the calibration models here, queues one task per model and fits the target's predictor from what
the agents report (:class:`AgentTimer` is the calibration's timer).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nas.settings import Settings
from nas.store import Store
from nas.store.artifacts import save_measurement_model
from nas.store.measurements import DONE, CalibrationRecord, PredictorRecord, TaskRecord, TargetRecord

if TYPE_CHECKING:
    from torch import nn

    from nas.latency.predictor import Predictor

log = logging.getLogger(__name__)

TRIAL_MIN_RUN_TIME = 0.2  # seconds of timing per trial model, as the service's own trial measurement
CALIBRATION_WAIT_S = 3600.0  # a calibration whose models are not all measured by then fails
DEFAULT_ERROR_BAND = 0.25
"""A predictor's relative error band where its calibration did not say (probe candidates this close to the limit)."""


def queue_measurement(
    store: Store, settings: Settings, target: TargetRecord, purpose: str, runtime: str, onnx_bytes: bytes,
    input_shape: Sequence[int], **fields: Any,
) -> TaskRecord:  # fmt: skip
    """Keep an ONNX file for the target's agents and queue it; ``purpose`` is ``trial`` (``fields`` holds
    its ``trial_id`` and the ``payload`` it ends with, so a runner that takes the job over can end it
    too), ``probe`` (a candidate before training) or ``calibration``."""
    task_id = uuid.uuid4().hex
    path = save_measurement_model(settings.artifact_dir, task_id, onnx_bytes)
    return store.measurements.create_task(target.id, purpose, runtime, list(input_shape), path, task_id=task_id,
                                          **{"min_run_time": TRIAL_MIN_RUN_TIME, **fields})  # fmt: skip


_predictors: dict[tuple[str, str, int], Predictor] = {}


def load_stored_predictor(record: PredictorRecord) -> Predictor:
    """A target's stored predictor, parsed once per version in this process."""
    from nas.latency.predictor import Predictor

    key = (record.target_id, record.runtime, record.version)
    if key not in _predictors:
        _predictors[key] = Predictor.from_json(json.loads(record.predictor))
    return _predictors[key]


def observe_agent_trial(predictor: Predictor, model_bytes: bytes, runtime: str, measured_ms: float) -> dict[str, Any]:
    """The observation (as :func:`nas.latency.observe` makes them) of a trial an agent measured: its
    inference model as the agent received it, predicted by the target's predictor, beside the measurement."""
    from nas.export import read_metadata
    from nas.latency.api import predict_on
    from nas.sparse.inference import to_inference
    from nas.sparse.masks import prunable_weights
    from nas.training import load_trained_model
    from workers.feasibility import runtime_kernels

    model = load_trained_model(model_bytes)
    input_shape = tuple(json.loads(read_metadata(model_bytes)["input_shape"]))
    inference, _ = to_inference(model, input_shape, kernels=dict.fromkeys(prunable_weights(model), "dense"))
    kernels = runtime_kernels(runtime, inference)
    predicted = predict_on(predictor, inference, input_shape, kernels=kernels)
    return {
        "target_key": predicted["target_key"], "predictor_id": predicted["predictor_id"],
        "features": predicted["features"], "sum_ms": predicted["sum_ms"], "predicted_ms": predicted["latency_ms"],
        "measured_ms": float(measured_ms), "time": time.time(),
    }  # fmt: skip


def latency_metrics(task: TaskRecord) -> dict[str, float]:
    """A trial's latency metrics from its task's result: ``latency_ms`` is the per-call 10th percentile,
    as on the service's own targets."""
    assert task.result is not None
    stats = task.result["stats"]
    metrics = {"latency_ms": float(stats["p10_ms"]), "latency_median_ms": float(stats["median_ms"])}
    if "iqr_ms" in stats:
        metrics["latency_iqr_ms"] = float(stats["iqr_ms"])
    return metrics


def measured_by(target: str, task: TaskRecord) -> dict[str, Any]:
    """Which agent measured a trial, with which runtime, on what hardware (the trial's ``outputs.measured_by``)."""
    assert task.result is not None
    result = task.result
    runtime = result.get("runtime") or {"name": task.runtime}
    return {
        "target": target, "agent_id": result.get("agent_id"), "agent": result.get("agent"), "runtime": runtime,
        "hardware": result.get("hardware") or {}, "task_id": task.id, "attempts": task.attempts,
    }  # fmt: skip


class AgentTimer:
    """A calibration timer whose models are timed by a target's agents (``nas.latency.timers.ModelTimer``)."""

    def __init__(
        self, store: Store, settings: Settings, target: TargetRecord, calibration: CalibrationRecord,
        progress: Callable[[str], None] = lambda message: None, wait_s: float = CALIBRATION_WAIT_S,
    ) -> None:  # fmt: skip
        self.store, self.settings, self.target, self.calibration = store, settings, target, calibration
        self.runtime = calibration.runtime
        self.progress = progress
        self.wait_s = wait_s

    def time(
        self, models: Sequence[tuple[nn.Module, tuple[int, ...]]], batch_size: int = 1, num_threads: int = 1,
        min_run_time: float = 0.1, rounds: int = 3,
    ) -> list[dict[str, float]]:  # fmt: skip
        """Queue every model, wait until the agents have timed them all; their statistics, in order."""
        from nas.latency.timers import module_to_onnx

        tasks = [
            queue_measurement(
                self.store, self.settings, self.target, "calibration", self.runtime, module_to_onnx(model, input_shape),
                input_shape, calibration_id=self.calibration.id, batch_size=batch_size, num_threads=num_threads,
                min_run_time=min_run_time, rounds=rounds,
            )
            for model, input_shape in models
        ]  # fmt: skip
        return [task.result["stats"] for task in self._wait([t.id for t in tasks])]  # type: ignore[index]

    def _wait(self, task_ids: list[str]) -> list[TaskRecord]:
        deadline = time.monotonic() + self.wait_s
        while True:
            found = {t.id: t for t in self.store.measurements.calibration_tasks(self.calibration.id)}  # one query
            tasks = [found[task_id] for task_id in task_ids]
            failed = [t for t in tasks if t.state == "failed"]
            if failed:
                raise RuntimeError(f"an agent could not measure a calibration model: {failed[0].error}")
            done = sum(t.state == DONE for t in tasks)
            if done == len(tasks):
                return tasks
            if time.monotonic() > deadline:
                raise TimeoutError(f"the agents measured {done} of {len(tasks)} calibration models in {self.wait_s:g} s")
            self.progress(f"agents measured {done} of {len(tasks)} models")
            time.sleep(0.5)


def run_calibration(store: Store, settings: Settings, target: TargetRecord, calibration: CalibrationRecord) -> None:
    """Calibrate the target's predictor through its agents and store it as a new version (a thread of the API)."""
    from nas.latency.calibrate import calibrate
    from nas.timing.targets import TargetIdentity

    def progress(message: str) -> None:
        try:
            store.measurements.update_calibration(calibration.id, progress=message[:500])
        except Exception:
            log.warning("could not record calibration progress", exc_info=True)

    try:
        online = [a for a in target.agents if a.online and calibration.runtime in a.runtime_names()]
        hardware = (online or target.agents)[0].hardware if target.agents else {}
        runtime = next((r for a in online for r in a.runtimes if r.get("name") == calibration.runtime), {})
        identity = TargetIdentity(
            target=f"agent:{target.name}", device=str(hardware.get("cpu") or target.name), num_threads=1,
            batch_size=1, torch=f"{calibration.runtime}-{runtime.get('version') or 'unknown'}",
        )  # fmt: skip
        timer = AgentTimer(store, settings, target, calibration, progress)
        outcome = calibrate(identity=identity, timer=timer, quick=calibration.quick, save=False, progress=progress)
        predictor = outcome["predictor"]
        accuracy = dict(outcome.get("accuracy") or {})
        version = store.measurements.add_predictor(
            target.id, calibration.runtime, json.dumps(predictor.to_json()), accuracy
        )
        store.measurements.update_calibration(calibration.id, state="done", predictor_version=version,
                                              progress=f"predictor version {version} stored")  # fmt: skip
    except Exception as exc:
        log.exception("calibrating target %s failed", target.name)
        store.measurements.update_calibration(calibration.id, state="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
