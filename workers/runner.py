"""Runs one job on Ray Tune: our strategy behind a Tune ``Searcher``, persistence in callbacks.

The database is the truth. At start the runner rebuilds the strategy from the job's trials,
re-queues trials that were running when an earlier runner died, and continues; trial numbers
come from the store, so they never repeat. A heartbeat thread renews the job's lease, marks its
running trials alive, stops trials silent for ``budget.trial_stall_s`` and watches for
cancellation; Tune's ``Stopper`` ends the experiment within a controller step of a cancel or a
lost lease.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # results live in our database
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Tune's own experiment state is saved at the end and every 5 min, not as often as 5% of the run
# allows: a job resumes from the database, and the saves rewrite every trial's state each time.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "300")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from nas import registry  # noqa: E402
from nas.cluster import unmet  # noqa: E402
from nas.errors import IllegalTransition, NotFound  # noqa: E402
from nas.data.stored import scoped_catalog  # noqa: E402
from nas.metrics import BASELINE, beside_baseline  # noqa: E402

# What a trial knows before training and keeps when it completes.
PLANNED = ("params", "predicted_latency_ms", "probed_latency_ms", *BASELINE)
from nas.models.stored import scoped_model_catalog  # noqa: E402
from nas.pareto import best_trial  # noqa: E402
from nas.settings import Settings  # noqa: E402
from nas.specs import Budget, Job, JobSpec, JobStatus, LayerInfo, Trial, TrialResources, TrialState  # noqa: E402
from nas.store import Store  # noqa: E402
from nas.store.artifacts import save_model, tune_folder  # noqa: E402
from nas.store.dataset_catalog import StoreDatasetCatalog  # noqa: E402
from nas.store.model_catalog import StoreModelCatalog  # noqa: E402
from nas.store.observations import predict_with_store_observations  # noqa: E402
from nas.strategies import WAIT, Strategy  # noqa: E402
from nas.trial_log import LogTail, split_failure  # noqa: E402
from nas.store.measurements import TargetRecord, TaskRecord  # noqa: E402
from nas.timing.targets import all_targets  # noqa: E402
from nas.latency.predictor import Predictor  # noqa: E402
from nas.store.measurements import PredictorRecord  # noqa: E402
from workers.agent_tasks import (  # noqa: E402
    DEFAULT_ERROR_BAND,
    latency_metrics,
    load_stored_predictor,
    measured_by,
    observe_agent_trial,
    queue_measurement,
)
from workers.baseline import measure_baseline  # noqa: E402
from workers.cluster import ray_nodes  # noqa: E402
from workers.datasets import deliver  # noqa: E402
from workers.models import deliver as deliver_model  # noqa: E402
from workers.feasibility import planned_metrics, probe_onnx, uncertain, violation  # noqa: E402
from workers.schedulers import Fifo, tune_scheduler  # noqa: E402
from workers.trainable import EPOCH_METRICS, FINAL, LOG, train_trial  # noqa: E402

log = logging.getLogger(__name__)
# Tune's result grid looks for per-trial result files, which we do not write (see above).
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

TRIALS_PER_FIT = 2000
"""The most trials one Tune experiment starts; a longer job runs as several, one after the other.

Tune keeps every trial of an experiment in memory (about 160 kB each with their results) and some
of its bookkeeping grows with them, so a 10,000-trial job in one experiment slowed as it went and
held 1.6 GB. The next experiment continues from the store, as a resumed job does, and costs a few
seconds to start its trial workers: about a millisecond a trial at this size."""

# Tune pickles its searcher, stopper and callbacks into its own experiment checkpoints. Ours
# carry only the job id and find their runner here, so nothing unpicklable travels with them.
_RUNNERS: dict[str, JobRunner] = {}
_TUNE_REGISTRY_LOCK = threading.Lock()


class _RunnerRef:
    def __init__(self, job_id: str) -> None:
        self._job_id = job_id

    @property
    def _runner(self) -> JobRunner:
        return _RUNNERS[self._job_id]


class _StrategySearcher(_RunnerRef, Searcher):
    """Adapts our ask/tell strategy to Tune; re-queued trials are offered before new ones."""

    def __init__(self, job_id: str) -> None:
        Searcher.__init__(self)
        _RunnerRef.__init__(self, job_id)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._runner.fit_full():
            return Searcher.FINISHED  # the next fit takes over (TRIALS_PER_FIT)
        trial = self._runner.next_trial()
        if trial is None:
            return Searcher.FINISHED if self._runner.exhausted() else None
        return self._runner.trial_config(trial)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # the persistence callback tells the strategy, once the store has the outcome

    # The search state lives in the database, not in Tune's experiment checkpoints.
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


def _trial_dirname(trial: Any) -> str:
    return f"trial-{trial.config['number']}-{trial.trial_id}"


class _Stop(_RunnerRef, tune.Stopper):

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self._runner.stop_reason is not None or self._runner.out_of_time()


class _Persist(_RunnerRef, tune.Callback):
    """Writes each report to the store as it arrives."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        config = trial.config
        self._runner.guard(self._runner.trial_started, config["trial_id"], config["attempt"])
        self._runner.progressed(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        trial_id = trial.config["trial_id"]
        self._runner.progressed(trial)
        self._runner.logged(trial_id, result.pop(LOG, ""))
        if FINAL in result:
            self._runner.end_reported(trial_id, result.pop(FINAL), result.pop("model"), result.pop("onnx", None))
        elif EPOCH_METRICS in result:
            self._runner.epoch_reported(trial_id, result["epoch"], result.pop(EPOCH_METRICS))
        # Tune keeps the result as the trial's last and writes it into its experiment state; what the
        # store has now (the final report, the model, the trial's config copied into every result)
        # would only cost memory and encoding there, per trial.
        result.pop("config", None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error, log_text = _error_text(trial)
        self._runner.logged(trial.config["trial_id"], log_text)
        self._runner.guard(self._runner.trial_errored, trial.config["trial_id"], error)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._runner.guard(self._runner.trial_ended, trial.config["trial_id"])


def _error_text(trial: Any) -> tuple[str, str]:
    """The last line of the trial's traceback, which names the exception, and the log its failure
    carried (:func:`nas.trial_log.split_failure`)."""
    try:
        trace, log_text = split_failure(Path(trial.error_file).read_text())
    except (OSError, TypeError):
        return "the trial's worker failed", ""
    lines = [line for line in trace.splitlines() if line.strip()]
    return (lines[-1][:2000] if lines else "the trial's worker failed"), log_text


class JobRunner:
    """Executes one claimed job to its end (or until the server stops or loses the lease)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        job_id: str,
        runner_id: str,
        lease_s: float = 15.0,
        trainable: Callable[[dict[str, Any]], None] = train_trial,
    ) -> None:
        self.store = store
        predict_with_store_observations(store)  # candidates are planned with what every worker measured
        self.trainable = trainable
        self.settings = settings
        self.job_id = job_id
        self.runner_id = runner_id
        self.lease_s = lease_s
        self.stop_reason: str | None = None  # "cancel", "shutdown", "lease_lost"
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._pending: deque[Trial] = deque()
        self._live: set[str] = set()
        # Stall watch: the Tune trial and the monotonic time of its last start or report.
        self._stall_s: float | None = None
        self._progress: dict[str, tuple[Any, float]] = {}
        self._stalled: set[str] = set()
        self._strategy_done = False
        self._waiting = False  # the strategy's last answer was WAIT
        self._started = time.time()  # the job's start (epoch seconds), from which budget.timeout_s counts
        self._simulated_s = 0.0  # the finished trials' train_time_s, which budget.max_simulated_s caps
        self._started_on_creation: set[str] = set()  # new trials, created running, that Tune has not started yet
        self._fit_started = 0  # trials the current Tune experiment started (TRIALS_PER_FIT)
        # Trial endings are written by one thread of their own, in the order they arrived, so Tune's
        # controller starts the next trials while the database commits; these are still being written.
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ends-{job_id[:8]}")
        self._ending: set[str] = set()
        # Metrics known before training (params, predicted latency) and the last epoch's report,
        # per live trial: a complete trial keeps the former, a pruned one ends with the latter.
        self._planned: dict[str, dict[str, float]] = {}
        self._last_epoch: dict[str, dict[str, float]] = {}
        self._dataset: dict[str, Any] | None = None  # workers.datasets.deliver's answer, for every trial
        self._model: dict[str, Any] | None = None  # workers.models.deliver's answer, for every trial
        # The dense reference's metrics (workers.baseline), recorded on every trial; empty without one.
        self._baseline: dict[str, float] = {}
        self._logs: dict[str, LogTail] = {}  # per trial not yet finished: its log so far, kept at finish
        # An agent target's trials, trained and waiting for its agents: trial id -> (task id, deadline, epoch s).
        self._measuring: dict[str, tuple[str, float]] = {}
        self._target: TargetRecord | None = None  # the job's agent target, if its target is one
        self._target_predictor: PredictorRecord | None = None  # its newest predictor for the job's runtime
        self._predictor_read = -math.inf  # when it was last looked up (monotonic s)

    # -- lifecycle ----------------------------------------------------------------------------

    def run(self) -> None:
        heartbeat = threading.Thread(target=self._heartbeat, name=f"lease-{self.job_id[:8]}", daemon=True)
        heartbeat.start()
        try:
            job = self.store.get_job(self.job_id)
            if self.store.cancel_requested(self.job_id):
                self.stop_reason = "cancel"
            elif self._unrunnable(job):
                return
            else:
                # Planning (the spec's checks, each candidate's cost) reads stored datasets' shapes
                # and stored models from the store (and builds candidates from the model's file here); the
                # owner's scope was checked when the job was submitted.
                with scoped_catalog(StoreDatasetCatalog(self.store, None)), \
                        scoped_model_catalog(StoreModelCatalog(self.store, None, self.settings.artifact_dir)):
                    self._prepare(job)
                    with deliver(self.store, self.settings, self.job_id, self.spec) as self._dataset, \
                            deliver_model(self.store, self.settings, self.job_id, self.space) as self._model:
                        self._measure_baseline()
                        self._fit()
            self._conclude()
            ran_under = self.spec.budget.model_dump(mode="json")
            if self.stop_reason is None and self.store.requeue_if_raised(self.job_id, ran_under):
                log.info("job %s: its budget was raised as it ended; queued again", self.job_id)
        except Exception as exc:  # a bug must end the job visibly, never leave it running
            log.exception("job %s failed in its runner", self.job_id)
            self._fail_unfinished(f"runner error: {exc}")
            self.guard(self.store.finish_job, self.job_id, JobStatus.failed, f"runner error: {exc!r}")
        finally:
            self._writes.shutdown(wait=True)
            self._stopped.set()
            heartbeat.join()

    def stop(self) -> None:
        """Server shutdown: stop the trials and give the job back for another runner."""
        if self.stop_reason is None:
            self.stop_reason = "shutdown"

    def _unrunnable(self, job: Job) -> bool:
        """Fail the job if no node of the cluster has the CPUs and GPUs one of its trials asks for
        (nodes may have left since it was submitted): Tune would keep its trials pending for ever."""
        nodes = ray_nodes()
        problem = unmet(TrialResources.model_validate(job.spec.get("resources", {})), nodes) if nodes else None
        if problem is None:
            return False
        reason = f"its trials cannot start: {problem[1]}"
        self._fail_unfinished(reason)
        self.store.finish_job(self.job_id, JobStatus.failed, reason)
        return True

    def _prepare(self, job: Job) -> None:
        spec = JobSpec.model_validate(job.spec)
        if spec.target not in all_targets():
            self._target = self.store.measurements.target(self.store.job_owner(self.job_id), spec.target)
        trials, _ = self.store.list_trials(self.job_id)
        for trial in trials:
            if trial.state is TrialState.running and self._resume_measuring(trial.id, spec):
                continue  # trained, its model with the agents: an earlier runner waited for it
            if trial.state is TrialState.running:  # its runner died mid-trial
                if trial.attempts <= spec.budget.max_retries:
                    self._pending.append(self.store.requeue_trial(trial.id, "its runner stopped; re-run"))
                else:
                    self.store.finish_trial(trial.id, TrialState.failed, error="its runner stopped too often")
            elif trial.state is TrialState.queued:
                self._pending.append(trial)
        trials, _ = self.store.list_trials(self.job_id)
        self._n_trials = len(trials)
        self.space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
        strategy_cls: type[Strategy] = registry.strategies.get(spec.strategy.name)
        params = strategy_cls.Params.model_validate(spec.strategy.params)
        self.strategy = strategy_cls.from_history(params, self.space, spec, trials)
        self.spec = spec
        self._stall_s = spec.budget.trial_stall_s
        self._best = best_trial(trials, spec.objectives)
        self._simulated_s = sum(t.metrics.get("train_time_s", 0.0) for t in trials if t.state.finished)
        # measured by an earlier runner of the job: every trial it created carries it
        recorded = (t.metrics for t in trials if all(name in t.metrics for name in BASELINE))
        self._baseline = {name: metrics[name] for metrics in recorded for name in BASELINE}

    def _resume_measuring(self, trial_id: str, spec: JobSpec) -> bool:
        """Wait again for a trained trial's measurement that an earlier runner queued; False if it has none."""
        if self._target is None:
            return False
        task = self.store.measurements.trial_task(trial_id)
        if task is None or task.state == "failed":
            return False
        with self._lock:
            self._measuring[trial_id] = (task.id, task.created_at.timestamp() + spec.budget.target_timeout_s)
        return True

    def _measure_baseline(self) -> None:
        """The dense reference's accuracy and latency, once per job, on a worker as the trials are measured."""
        if self._baseline:
            return
        shape = registry.datasets.create(self.spec.dataset.name, self.spec.dataset.params).shape()
        if self.space.reference_model(*shape) is None:
            return
        self._baseline = measure_baseline({
            "spec": self.spec.model_dump(mode="json"), "data_dir": str(self.settings.data_dir),
            "dataset": self._dataset, "model": self._model,
        })  # fmt: skip

    def _fit(self) -> None:
        """Run Tune until the budget is spent, again while the owner raised it as the last trials ended."""
        job = self.store.get_job(self.job_id)
        self._started = job.started_at.timestamp() if job.started_at is not None else time.time()
        while True:
            self._fit_once(self.spec)
            self._await_measurements()
            self._follow_budget()
            with self._lock:
                more = self._n_trials < self.spec.budget.max_trials and not self._strategy_done
            if self.stop_reason is not None or self.out_of_time() or self.simulated_spent() or self._waiting or not more:
                return

    def _await_measurements(self) -> None:
        """Wait for the trials the agents still measure (each up to its ``target_timeout_s``)."""
        while self.stop_reason is None:
            self.guard(self._collect_measurements)  # the database may be away for a moment
            with self._lock:
                if not self._measuring:
                    return
            time.sleep(0.5)

    def _collect_measurements(self) -> None:
        """End the trials whose agents reported, or whose ``budget.target_timeout_s`` passed."""
        with self._lock:
            waiting = dict(self._measuring)
        for trial_id, (task_id, deadline) in waiting.items():
            task = self.store.measurements.task(task_id)
            if task.state == "done":
                self.guard(self._measured, trial_id, task)
            elif task.state == "failed":
                reason = f"no agent of target {self.spec.target!r} could measure it: {task.error}"
                self.guard(self._unmeasured, trial_id, reason)
            elif time.time() > deadline:
                self.store.measurements.fail_task(task_id, "its trial stopped waiting (budget.target_timeout_s)")
                online = sum(a.online for a in self.store.measurements.target(self._target.owner, self._target.name).agents) \
                    if self._target is not None else 0
                self.guard(self._unmeasured, trial_id, (
                    f"no agent of target {self.spec.target!r} measured it within budget.target_timeout_s="
                    f"{self.spec.budget.target_timeout_s:g} s ({online} agents online)"))  # fmt: skip

    def _agent_predictor(self) -> tuple[Predictor, float] | None:
        """The agent target's newest predictor for the job's runtime and its error band (the held-out
        relative error at the 90th percentile), looked up again at most every 30 s."""
        if self._target is None:
            return None
        if time.monotonic() - self._predictor_read > 30.0:
            self._predictor_read = time.monotonic()
            self._target_predictor = self.store.measurements.predictor(self._target.id, str(self.spec.target_runtime))
        record = self._target_predictor
        if record is None:
            return None
        return load_stored_predictor(record), float(record.accuracy.get("error_p90") or DEFAULT_ERROR_BAND)

    def _probe(self, arch: dict[str, Any]) -> float | None:
        """Measure an untrained candidate on the agent target before deciding on it (confidence-gated
        measurement); ``None`` when no agent measured it within ``budget.target_timeout_s``."""
        assert self._target is not None
        try:
            onnx, input_shape = probe_onnx(self.spec, self.space, type(self.strategy), arch)
            task = queue_measurement(self.store, self.settings, self._target, "probe", str(self.spec.target_runtime),
                                     onnx, input_shape)  # fmt: skip
        except Exception:
            log.exception("job %s: could not queue a candidate's measurement", self.job_id)
            return None
        deadline = time.monotonic() + self.spec.budget.target_timeout_s
        while self.stop_reason is None and time.monotonic() < deadline:
            task = self.store.measurements.task(task.id)
            if task.state == "done":
                return latency_metrics(task)["latency_ms"]
            if task.state == "failed":
                break
            time.sleep(0.25)
        self.guard(self.store.measurements.fail_task, task.id, "its job stopped waiting for it")
        return None

    def _observe(self, trial_id: str, task: TaskRecord) -> None:
        """Keep what an agent measured for a trial as an observation of the target's predictor, so the
        next candidates are predicted with the correction refitted on it."""
        found = self._agent_predictor()
        if found is None:
            return
        artifact = self.store.get_artifact(trial_id, "model", "safetensors")
        model_bytes = (self.settings.artifact_dir / artifact.path).read_bytes()
        observation = observe_agent_trial(found[0], model_bytes, str(self.spec.target_runtime),
                                          latency_metrics(task)["latency_ms"])  # fmt: skip
        self.store.add_latency_observation(observation, self.job_id, trial_id)

    def _claim(self, trial_id: str) -> bool:
        """Take a waiting trial off the list: the heartbeat and the end of the run both collect, and
        only the one that takes it ends it."""
        with self._lock:
            return self._measuring.pop(trial_id, None) is not None

    def _measured(self, trial_id: str, task: TaskRecord) -> None:
        if not self._claim(trial_id):
            return
        self.guard(self._observe, trial_id, task)
        payload = task.payload
        metrics = {**payload["metrics"], **latency_metrics(task)}
        trial = self._finish(
            trial_id, TrialState.complete,
            metrics={**metrics, **beside_baseline(self._baseline, metrics)},
            layers=[LayerInfo.model_validate(layer) for layer in payload["layers"]],
            node_id=payload.get("node_id"),
            outputs={**payload.get("outputs", {}), "measured_by": measured_by(self.spec.target, task)},
        )  # fmt: skip
        self._completed(trial)

    def _unmeasured(self, trial_id: str, reason: str) -> None:
        if self._claim(trial_id):
            self._finished(self._finish(trial_id, TrialState.failed, reason))

    def out_of_time(self) -> bool:
        """Whether the job's time budget (``budget.timeout_s`` from its start) is spent; read as the
        budget is now, so a raised timeout lets a running job go on."""
        timeout = self.spec.budget.timeout_s
        return timeout is not None and time.time() - self._started >= timeout

    def simulated_spent(self) -> bool:
        """Whether the finished trials' ``train_time_s`` reached ``budget.max_simulated_s``: trials running
        then finish, no new one starts (papers report a search's anytime performance this way)."""
        limit = self.spec.budget.max_simulated_s
        return limit is not None and self._simulated_s >= limit

    def _follow_budget(self) -> None:
        """Take up a budget the owner raised (``PATCH /jobs/{id}``) since the runner last looked."""
        budget = Budget.model_validate(self.store.job_budget(self.job_id))
        if budget != self.spec.budget:
            log.info("job %s: budget now %s", self.job_id, budget.model_dump(exclude_defaults=True))
            with self._lock:
                self.spec = self.spec.model_copy(update={"budget": budget})

    def _fit_once(self, spec: JobSpec) -> None:
        # Tune's trainable registry is process-global and not thread-safe; registering under a
        # lock here means the jobs' own fits find the name and register nothing concurrently.
        trainable_name = f"nas-job-{self.job_id}"
        self._fit_started = 0
        with _TUNE_REGISTRY_LOCK:
            resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
            tune.register_trainable(trainable_name, tune.with_resources(self.trainable, resources))
        scheduler: Any = Fifo()
        if spec.early_stopping is not None:
            rule = registry.early_stopping.create(spec.early_stopping.name, spec.early_stopping.params)
            scheduler = tune_scheduler(rule, spec)
        tuner = tune.Tuner(
            trainable_name,
            tune_config=tune.TuneConfig(
                search_alg=_StrategySearcher(self.job_id),
                scheduler=scheduler,
                num_samples=-1,
                max_concurrent_trials=spec.budget.max_concurrent,
                reuse_actors=True,  # no time_budget_s: _Stop ends the run at the budget as it is then
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=tune_folder(self.settings.home, self.job_id).name,
                storage_path=str(tune_folder(self.settings.home, self.job_id).parent),
                stop=_Stop(self.job_id),
                callbacks=[_Persist(self.job_id)],
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        _RUNNERS[self.job_id] = self
        try:
            tuner.fit()
        finally:
            del _RUNNERS[self.job_id]
            self._writes.submit(lambda: None).result()  # every ending written (an agent target's queued)

    def _conclude(self) -> None:
        if self.stop_reason == "lease_lost":
            return  # another runner owns the job now
        if self.stop_reason == "shutdown":
            for trial in self._unfinished():
                if trial.state is TrialState.running and trial.id not in self._measuring:
                    self.guard(self.store.requeue_trial, trial.id, "server stopped; re-run", False)
            self.store.release_lease(self.job_id, self.runner_id)
            return
        if self.stop_reason == "cancel":
            self._fail_unfinished("its job was cancelled", TrialState.cancelled)
            self.store.finish_job(self.job_id, JobStatus.cancelled, "cancelled by its owner")
            return
        self._fail_unfinished("job ended before this trial ran (time budget)")
        trials, _ = self.store.list_trials(self.job_id)
        if any(t.state is TrialState.complete for t in trials):
            self.store.finish_job(self.job_id, JobStatus.succeeded)
        else:
            errors = sorted({t.error for t in trials if t.error})[:3]
            reason = "no trial completed" + (": " + "; ".join(errors) if errors else "")
            self.store.finish_job(self.job_id, JobStatus.failed, reason)

    def _unfinished(self) -> list[Trial]:
        trials, _ = self.store.list_trials(self.job_id)
        return [t for t in trials if not t.state.finished]

    def _fail_unfinished(self, reason: str, state: TrialState = TrialState.failed) -> None:
        """End every queued or running trial in ``state`` (``failed``, or ``cancelled`` for a cancelled job);
        the agents drop the measurements such trials waited for."""
        with self._lock:
            measuring, self._measuring = dict(self._measuring), {}
        for task_id, _ in measuring.values():
            self.guard(self.store.measurements.fail_task, task_id, reason)
        for trial in self._unfinished():
            self.guard(self._finish, trial.id, state, reason)

    def _heartbeat(self) -> None:
        interval = min(2.0, self.lease_s / 4)
        while not self._stopped.wait(interval):
            try:
                if not self.store.renew_lease(self.job_id, self.runner_id, self.lease_s):
                    self.stop_reason = "lease_lost"
                elif self.stop_reason is None and self.store.cancel_requested(self.job_id):
                    self.stop_reason = "cancel"
                self._follow_budget()
                with self._lock:
                    live = [*self._live, *self._measuring]
                self.store.touch_trials(live)
                self._stop_stalled()
                self._collect_measurements()
            except Exception:  # the database may be away for a moment; the lease has slack
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)

    def _stop_stalled(self) -> None:
        """Kill the actor of a trial silent for ``budget.trial_stall_s``: a hung trial then fails
        like one whose worker died (retried, or failed), instead of staying running forever."""
        if self._stall_s is None:
            return
        now = time.monotonic()
        with self._lock:
            for trial_id in set(self._progress) - self._live:
                del self._progress[trial_id]
            stalled = [(trial_id, tune_trial) for trial_id, (tune_trial, seen) in self._progress.items()
                       if now - seen > self._stall_s and trial_id not in self._stalled]
            self._stalled.update(trial_id for trial_id, _ in stalled)
        for trial_id, tune_trial in stalled:
            actor = tune_trial.temporary_state.ray_actor
            log.warning("job %s: trial %s reported nothing for %g s; stopping its worker",
                        self.job_id, trial_id, self._stall_s)
            if actor is not None:
                ray.kill(actor)

    # -- called from the searcher and the callbacks (Tune's controller thread) -----------------

    def progressed(self, tune_trial: Any) -> None:
        """A trial started or reported: it is not stalled."""
        with self._lock:
            self._progress[tune_trial.config["trial_id"]] = (tune_trial, time.monotonic())

    def next_trial(self) -> Trial | None:
        """A re-queued trial, or a new feasible one from the strategy while the budget lasts.

        Candidates that break the job's constraints are recorded as ``infeasible`` without
        training (they count against ``max_trials``) and the strategy is asked again.
        """
        with self._lock:
            if self.stop_reason is not None or self.out_of_time() or self.simulated_spent():
                return None
            if self._pending:
                trial = self._pending.popleft()
            else:
                try:
                    trial = self._new_feasible_trial()
                except IllegalTransition:  # the store takes no new trial once the job's cancel was requested
                    self.stop_reason = "cancel"
                    return None
                if trial is None:
                    return None
            self._live.add(trial.id)
            self._fit_started += 1
            self._planned[trial.id] = {
                k: v for k, v in trial.metrics.items() if k in PLANNED
            }
            self._progress.pop(trial.id, None)
            return trial

    def _new_feasible_trial(self) -> Trial | None:
        while self._n_trials < self.spec.budget.max_trials:
            plan = self.strategy.ask()
            if plan is WAIT:
                self._waiting = True
                return None
            self._waiting = False
            if plan is None:
                self._strategy_done = True
                return None
            predictor = self._agent_predictor()
            planned = {
                **planned_metrics(self.spec, self.space, type(self.strategy), plan.arch,
                                  None if predictor is None else predictor[0]),
                **self._baseline,
            }  # fmt: skip
            if predictor is not None and uncertain(self.spec, planned, predictor[1]):
                probed = self._probe(plan.arch)
                if probed is not None:
                    planned["probed_latency_ms"] = probed
            reason = violation(self.spec, planned)
            self._n_trials += 1
            if reason is None:
                trial = self.store.create_trial(self.job_id, plan.arch, plan.parent_id, TrialState.running,
                                                metrics=planned)  # started as Tune takes it: one write, not two
                self._started_on_creation.add(trial.id)
                return trial
            refused = self.store.create_trial(
                self.job_id, plan.arch, plan.parent_id, TrialState.infeasible, reason, planned
            )
            self.strategy.tell(refused)
        return None

    def trial_started(self, trial_id: str, attempt: int) -> None:
        """Tune started the trial's worker: mark it running, unless its job's cancel request came
        first (the store then ended it ``cancelled``), which stops the job's run here too. A new
        trial was created running; a cancel request after that reaches it through the heartbeat."""
        with self._lock:
            if trial_id in self._started_on_creation:
                self._started_on_creation.discard(trial_id)
                return
        trial = self.store.start_trial(trial_id, None, attempt)
        if trial.state is TrialState.cancelled and self.stop_reason is None:
            self.stop_reason = "cancel"
        if attempt > 1:
            with self._lock:
                earlier = trial_id not in self._logs
            if earlier:  # a runner that took the job over: the attempts before it left their log in the store
                self.logged(trial_id, self.store.trial_log(trial_id) or "")
            self.logged(trial_id, f"--- attempt {attempt} ---\n")

    def logged(self, trial_id: str, text: str) -> None:
        """Keep the log lines a trial's worker sent with a report or its failure."""
        if text:
            with self._lock:
                self._logs.setdefault(trial_id, LogTail()).append(text)

    def _finish(self, trial_id: str, state: TrialState, error: str | None = None, **ending: Any) -> Trial:
        """End the trial in the store with the log its worker sent, which the runner then forgets."""
        with self._lock:
            kept = self._logs.pop(trial_id, None)
        return self.store.finish_trial(trial_id, state, error=error, log=None if kept is None else kept.text, **ending)

    def epoch_reported(self, trial_id: str, epoch: int, metrics: dict[str, float]) -> None:
        """Store the epoch with the trial's log so far, which a viewer can read while it runs."""
        with self._lock:
            self._last_epoch[trial_id] = {**metrics, "epoch": float(epoch)}
            kept = self._logs.get(trial_id)
        self.guard(self.store.report_epoch, trial_id, epoch, metrics, None if kept is None else kept.text)

    def fit_full(self) -> bool:
        """Whether this Tune experiment has started its :data:`TRIALS_PER_FIT` trials."""
        return self._fit_started >= TRIALS_PER_FIT

    def exhausted(self) -> bool:
        """Whether the search is over: no trial left to run, and none to ask for (the trial budget
        spent, the strategy done or waiting with nothing running, or the time budget spent)."""
        with self._lock:
            budget_used = (self._n_trials >= self.spec.budget.max_trials or self._strategy_done or self.out_of_time()
                           or self.simulated_spent())
            idle = not self._pending and not self._live and not self._measuring and not self._ending
            if idle and self._waiting and not budget_used:
                log.warning("job %s: its strategy waits with no trial running; ending the job", self.job_id)
            return idle and (budget_used or self._waiting)

    def trial_config(self, trial: Trial) -> dict[str, Any]:
        parent_model = None
        if trial.parent_id is not None:
            try:
                artifact = self.store.get_artifact(trial.parent_id, "model", "safetensors")
                parent_model = (self.settings.artifact_dir / artifact.path).read_bytes()
            except NotFound:
                pass  # a parent that ended without a model (failed, pruned, infeasible)
        return {
            "parent_model": parent_model,
            "planned": self._planned.get(trial.id, {}),  # params, predicted latency: for early stopping
            "trial_id": trial.id,
            "number": trial.number,
            # makes a retried start_trial write a no-op; a new trial was created running, in its first attempt
            "attempt": trial.attempts if trial.state is TrialState.running else trial.attempts + 1,
            "arch": trial.arch,
            "spec": self.spec.model_dump(mode="json"),
            "data_dir": str(self.settings.data_dir),
            "dataset": self._dataset,  # how a stored dataset reaches the trial's node (workers.datasets)
            "model": self._model,  # how a stored model reaches it (workers.models)
        }

    def end_reported(self, trial_id: str, final: dict[str, Any], model: bytes | None, onnx: bytes | None) -> None:
        """A trial's final report arrived: hand it to the writing thread; until it is written the trial
        counts as running (its job does not end) but not as unreported."""
        with self._lock:
            self._ending.add(trial_id)
            planned = self._planned.pop(trial_id, {})
            self._last_epoch.pop(trial_id, None)
        self._writes.submit(self._write_end, trial_id, final, model, onnx, planned)

    def _write_end(self, trial_id: str, final: dict[str, Any], model: bytes | None, onnx: bytes | None,
                   planned: dict[str, float]) -> None:  # fmt: skip
        try:
            self.guard(self.complete_trial, trial_id, final, model, onnx, planned)
        finally:
            with self._lock:
                self._ending.discard(trial_id)

    def complete_trial(self, trial_id: str, final: dict[str, Any], model: bytes | None, onnx: bytes | None,
                       planned: dict[str, float]) -> None:  # fmt: skip
        """Keep a trained trial's model and end it complete with ``planned`` (what was known before it
        trained) and its final metrics; on an agent target, queue its measurement instead."""
        if model is not None:  # a trial looked up in a tabular benchmark trained none
            self.store.add_artifact(save_model(self.settings.artifact_dir, self.job_id, trial_id, model))
        observation = final.get("latency_observation")
        if observation is not None:  # before the trial completes, so the next candidates are planned with it
            self.guard(self.store.add_latency_observation, observation, self.job_id, trial_id)
        if self._target is not None:
            self._queue_measurement(trial_id, final, {**planned, **final["metrics"]}, onnx)
            return
        last_epoch = final.get("last_epoch")
        trial = self._finish(
            trial_id,
            TrialState.complete,
            metrics={**planned, **final["metrics"], **beside_baseline(self._baseline, final["metrics"])},
            layers=[LayerInfo.model_validate(layer) for layer in final["layers"]],
            node_id=final.get("node_id"),
            outputs=final.get("outputs") or {},
            epoch=None if last_epoch is None else (int(last_epoch[0]), last_epoch[1]),
        )
        self._completed(trial)

    def _queue_measurement(self, trial_id: str, final: dict[str, Any], metrics: dict[str, float], onnx: bytes | None) -> None:
        """Hand a trained trial's ONNX model to its target's agents; it stays running until they report."""
        assert self._target is not None and self.spec.target_runtime is not None
        if onnx is None:
            raise RuntimeError("the trial's worker sent no ONNX model for the agent target")
        input_shape = registry.datasets.create(self.spec.dataset.name, self.spec.dataset.params).shape()[0]
        payload = {"metrics": metrics, "layers": final["layers"], "node_id": final.get("node_id"),
                   "outputs": final.get("outputs") or {}}  # fmt: skip
        task = queue_measurement(self.store, self.settings, self._target, "trial", self.spec.target_runtime, onnx,
                                 input_shape, trial_id=trial_id, payload=payload)  # fmt: skip
        self.logged(trial_id, f"trained; waiting for an agent of target {self.spec.target!r} "
                              f"({self.spec.target_runtime}) to measure it (task {task.id})\n")  # fmt: skip
        with self._lock:
            self._measuring[trial_id] = (task.id, time.time() + self.spec.budget.target_timeout_s)
            self._live.discard(trial_id)

    def _completed(self, trial: Trial) -> None:
        """A trial completed: tell the strategy, and keep the job's best trial."""
        self._finished(trial)
        best = best_trial([t for t in (self._best, trial) if t is not None], self.spec.objectives)
        if best is not None and best is not self._best:
            self._best = best
            self.store.set_best_trial(self.job_id, best.id)

    def trial_ended(self, trial_id: str) -> None:
        """Tune ended a trial. One still live never sent its final report: the early-stopping
        rule stopped it after an epoch (``pruned``, with that epoch's metrics), or it failed."""
        with self._lock:
            unreported = trial_id in self._live and trial_id not in self._ending
            last_epoch = self._last_epoch.pop(trial_id, None)
            planned = self._planned.pop(trial_id, {})
        try:
            if unreported and self.stop_reason is None:
                if self.spec.early_stopping is not None and last_epoch is not None:
                    metrics = {**planned, **last_epoch, **beside_baseline(self._baseline, last_epoch)}
                    ended = self._finish(trial_id, TrialState.pruned, metrics=metrics)
                else:
                    ended = self._finish(trial_id, TrialState.failed, "the trial ended without its final report")
                self._finished(ended)
        finally:
            with self._lock:
                self._live.discard(trial_id)

    def trial_errored(self, trial_id: str, error: str) -> None:
        with self._lock:
            if trial_id in self._stalled:
                self._stalled.discard(trial_id)
                error = f"no report for {self._stall_s:g} s (budget.trial_stall_s); its worker was stopped"
        trial = self.store.get_trial(trial_id)
        if trial.state is not TrialState.running:
            with self._lock:
                self._live.discard(trial_id)
            return
        if self.stop_reason is None and trial.attempts <= self.spec.budget.max_retries:
            requeued = self.store.requeue_trial(trial_id, error)
            with self._lock:
                self._live.discard(trial_id)
                self._pending.append(requeued)
            return
        if self.stop_reason == "cancel":  # stopped by the cancel, or failing as it came: either way not run out
            self._finished(self._finish(trial_id, TrialState.cancelled, f"its job was cancelled; its worker said: {error}"))
            return
        self._finished(self._finish(trial_id, TrialState.failed, error))

    def _finished(self, trial: Trial) -> None:
        with self._lock:
            self._live.discard(trial.id)
            self._simulated_s += trial.metrics.get("train_time_s", 0.0)
            self.strategy.tell(trial)

    def guard(self, fn: Any, *args: Any) -> Any:
        """Run a store call from a Tune hook without letting an exception break Tune's loop."""
        try:
            return fn(*args)
        except IllegalTransition as exc:
            log.info("job %s: %s", self.job_id, exc)
        except Exception:
            log.exception("job %s: %s failed", self.job_id, getattr(fn, "__name__", fn))
        return None
