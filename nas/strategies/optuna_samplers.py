"""Optuna's TPE and NSGA-II samplers as ask/tell strategies (Optuna does the sampling, not us).

Each strategy keeps an in-memory Optuna study whose directions are the job's objectives. ``ask``
creates an Optuna trial and samples an architecture define-by-run: the search space's
``arch_from`` (see :class:`nas.search_space.SearchSpace`) asks for its keys, drawn from its
``dimensions()``, so a conditional key (``width_2`` when ``depth`` is 2) is never sampled, and
never stored, for an architecture that does not use it. ``tell`` finishes the Optuna trial from
the job's trial record:

* ``complete``: COMPLETE with the objective values, plus the job's constraints (below). Accuracy
  and loss are told as measured on the validation split (:func:`nas.metrics.selection_metric`):
  the samplers never see a test number.
* ``infeasible`` (refused before training): COMPLETE with the values it has (``latency_ms``
  falls back to ``predicted_latency_ms``, a missing one is 0) and a positive constraint violation.
  Both samplers rank a violating trial behind every feasible one whatever its values (constrained
  domination in NSGA-II, the infeasible split of c-TPE), so they learn to avoid the region.
* ``pruned``: single-objective jobs tell PRUNED with the objective per epoch as intermediate
  values, which TPE ranks natively (NSGA-II ignores pruned trials). Multi-objective jobs tell
  COMPLETE with the last epoch's values (accuracy at the epoch it was stopped, the latency that
  was predicted), which the early-stopping rule has just shown to be dominated; without a value
  for every objective it is told PRUNED.
* ``failed`` and ``cancelled``: FAIL (ignored by both samplers).

Constraints: ``max_latency_ms`` on ``predicted_latency_ms`` (the quantity the runner refuses
candidates by; ``latency_ms`` when no prediction was recorded) and ``max_params`` on ``params``,
as ``(value - limit) / limit`` through ``Trial.set_constraint``.

Restart: ``from_history`` adds every finished trial of the job to a fresh study with
``optuna.trial.create_trial`` (NSGA-II generations re-derived in trial order); unfinished ones are
told when the runner finishes them. The sampler is re-seeded for every proposal from (job seed,
proposals so far), so a job's proposals depend only on its seed and its history. An architecture
the job already has (finished or running) is not proposed again: the duplicate Optuna trial is
told FAIL and the sampler asked again, up to ``max_resample`` times, then a random unseen
architecture is enqueued instead.
"""

from __future__ import annotations

import random
import warnings
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from nas.arch import fingerprint
from nas.search_space import SearchSpace
from nas.metrics import PER_EPOCH, objective_value, selection_metric
from nas.specs import JobSpec, Trial, TrialState
from nas.strategies.base import Problem, Strategy, TrialPlan

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution



def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """``trial.suggest_*`` for an Optuna distribution (the public calls, one per kind)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"dimension {name!r}: unsupported distribution {type(dist).__name__}")


class _SamplerParams(BaseModel):
    """Options every Optuna strategy has."""

    model_config = ConfigDict(extra="forbid")

    max_resample: int = Field(20, ge=0, le=1000, description="proposals to try before an unseen random one")


class _OptunaStrategy(Strategy):
    """Shared ask/tell bookkeeping; subclasses choose the sampler."""

    Params: ClassVar[type[_SamplerParams]]
    params: _SamplerParams

    def __init__(self, params: BaseModel, space: SearchSpace, spec: JobSpec) -> None:
        import optuna

        super().__init__(params, space, spec)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial in the server log
        dims = space.dimensions()
        if dims is None:
            raise ValueError(f"{type(space).__name__} has no dimensions() for Optuna to sample")
        self._dims: dict[str, BaseDistribution] = dims
        self._objectives = list(spec.objectives)
        self._study = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            directions=[o.direction for o in self._objectives],
            sampler=self._sampler(spec.seed),
        )
        self._proposals = 0  # plans made in the job's life, replayed ones included
        self._running: dict[str, deque[optuna.Trial]] = {}  # fingerprint -> asked, not yet told
        self._seen: set[str] = set()  # fingerprints of every trial of the job

    # -- what subclasses provide --------------------------------------------------------------

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def _replay_attrs(self) -> dict[str, Any]:
        """System attributes a replayed trial needs for the sampler (NSGA-II: its generation)."""
        return {}

    @classmethod
    def check_spec(cls, params: BaseModel, spec: JobSpec) -> list[Problem]:
        from nas import registry

        space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
        if space.dimensions() is None:
            return [(("search_space", "name"), f"{spec.search_space.name} has no dimensions() for Optuna to sample")]
        if not _arch_from_replays_samples(space):
            return [
                (("search_space", "name"),
                 f"{spec.search_space.name}'s conditional keys cannot be sampled key by key: the space needs an "
                 "arch_from(draw) method for tpe and nsga2")
            ]
        return []

    # -- ask ----------------------------------------------------------------------------------

    def ask(self) -> TrialPlan:
        import optuna

        attempts = self.params.max_resample
        for attempt in range(attempts + 1):
            self._study.sampler = self._sampler(_seed(self.spec.seed, self._proposals, attempt))
            trial = self._study.ask()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                arch = dict(self.space.arch_from(lambda key: suggest(trial, key, self._dims[key])))
            key = fingerprint(arch)
            if key not in self._seen:
                break
            self._study.tell(trial, state=optuna.trial.TrialState.FAIL)  # a duplicate: ignored by the sampler
        else:
            arch = self._random_unseen(attempts)
            key = fingerprint(arch)
            self._study.enqueue_trial(arch, skip_if_exists=False)
            trial = self._study.ask()
            self.space.arch_from(lambda k: suggest(trial, k, self._dims[k]))
        self._proposals += 1
        self._seen.add(key)
        self._running.setdefault(key, deque()).append(trial)
        return TrialPlan(arch=arch)

    def _random_unseen(self, attempts: int) -> dict[str, Any]:
        rng = random.Random(f"{self.spec.seed}:{self._proposals}:random")
        arch = self.space.sample(rng)
        for _ in range(attempts):
            if fingerprint(arch) not in self._seen:
                break
            arch = self.space.sample(rng)
        return arch

    # -- tell ---------------------------------------------------------------------------------

    def tell(self, trial: Trial) -> None:
        import optuna

        key = fingerprint(trial.arch)
        self._seen.add(key)
        queue = self._running.get(key)
        live = queue.popleft() if queue else None
        if queue is not None and not queue:
            del self._running[key]
        state, values, constraints, intermediate = self._outcome(trial)
        if live is None:  # a trial of an earlier run of the job, or one re-queued at restart
            self._add_finished(trial, state, values, constraints, intermediate)
            return
        for name, value in constraints.items():
            live.set_constraint(name, value)
        for step, value in intermediate.items():
            live.report(value, step)
        if state is optuna.trial.TrialState.COMPLETE:
            self._study.tell(live, values)
        else:
            self._study.tell(live, state=state)

    def replay(self, trial: Trial) -> None:
        self._proposals += 1
        self._seen.add(fingerprint(trial.arch))
        if trial.state.finished:
            self.tell(trial)

    def _add_finished(
        self,
        trial: Trial,
        state: optuna.trial.TrialState,
        values: list[float] | None,
        constraints: dict[str, float],
        intermediate: dict[int, float],
    ) -> None:
        import optuna

        params = {k: v for k, v in trial.arch.items() if k in self._dims}
        frozen = optuna.trial.create_trial(
            state=state,
            values=values if state is optuna.trial.TrialState.COMPLETE else None,
            params=params,
            distributions={k: self._dims[k] for k in params},
            intermediate_values=intermediate or None,
            constraints=constraints or None,
            system_attrs=self._replay_attrs() if state is optuna.trial.TrialState.COMPLETE else None,
        )
        self._study.add_trial(frozen)

    def _outcome(
        self, trial: Trial
    ) -> tuple[optuna.trial.TrialState, list[float] | None, dict[str, float], dict[int, float]]:
        """Optuna state, objective values, constraint values and intermediate values of ``trial``."""
        import optuna

        State = optuna.trial.TrialState
        metrics = trial.metrics
        constraints = self._constraints(metrics)
        values = [objective_value(metrics, o.metric) for o in self._objectives]
        if trial.state is TrialState.complete and None not in values:
            return State.COMPLETE, values, constraints, {}  # type: ignore[return-value]
        if trial.state is TrialState.infeasible:
            if not any(v > 0 for v in constraints.values()):
                constraints["infeasible"] = 1.0  # refused for a reason outside the job's constraints
            return State.COMPLETE, [0.0 if v is None else v for v in values], constraints, {}
        if trial.state is TrialState.pruned:
            if len(self._objectives) > 1:
                if None not in values:
                    return State.COMPLETE, values, constraints, {}  # type: ignore[return-value]
                return State.PRUNED, None, constraints, {}
            return State.PRUNED, None, constraints, _intermediate(trial, self._objectives[0].metric)
        return State.FAIL, None, {}, {}

    def _constraints(self, metrics: dict[str, float]) -> dict[str, float]:
        limits = self.spec.constraints
        out: dict[str, float] = {}
        if limits.max_latency_ms is not None:
            latency = metrics.get("predicted_latency_ms", metrics.get("latency_ms"))
            if latency is not None:
                out["max_latency_ms"] = (latency - limits.max_latency_ms) / limits.max_latency_ms
        if limits.max_params is not None and "params" in metrics:
            out["max_params"] = (metrics["params"] - limits.max_params) / limits.max_params
        return out


def _arch_from_replays_samples(space: SearchSpace, samples: int = 32) -> bool:
    """Whether the space's ``arch_from`` rebuilds its own samples, asking only for their keys.

    Each sample is replayed through ``arch_from`` (a key the sample lacks is answered with its
    first choice); asking for a key the space did not use, or skipping one it did, shows a space
    with conditional keys and no ``arch_from`` that knows them (the base's asks for every key).
    Imports optuna, not torch.
    """
    dims = space.dimensions()
    assert dims is not None
    for i in range(samples):
        arch = space.sample(random.Random(i))
        if set(arch) - set(dims):
            return False
        try:
            replayed = dict(space.arch_from(lambda key: arch.get(key, _first(dims[key]))))
        except (ValueError, TypeError, KeyError):
            return False
        if replayed != arch:
            return False
    return True


def _first(dist: BaseDistribution) -> Any:
    """The lowest value of an integer or float distribution, the first choice of a categorical one."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return dist.choices[0]
    if isinstance(dist, (IntDistribution, FloatDistribution)):
        return dist.low
    raise TypeError(f"unsupported distribution {type(dist).__name__}")


def _intermediate(trial: Trial, objective: str) -> dict[int, float]:
    """The objective per epoch, on the validation split: the trial's history when loaded, else its
    last epoch's metrics."""
    metric = selection_metric(objective)
    if metric not in PER_EPOCH:  # reported after every epoch: usable as intermediate values
        return {}
    history = {h.epoch: h.metrics[metric] for h in trial.history if metric in h.metrics}
    if history:
        return history
    if metric in trial.metrics:
        return {int(trial.metrics.get("epoch", 1)): trial.metrics[metric]}
    return {}


def _seed(job_seed: int, proposal: int, attempt: int) -> int:
    return (job_seed * 1_000_003 + proposal * 7919 + attempt) % 2**32


def _population_size(requested: int | None, max_trials: int) -> int:
    """``requested``, or a fifth of the trial budget clamped to 4..50 (a few generations fit)."""
    return requested if requested is not None else max(4, min(50, max_trials // 5))


def _startup_trials(requested: int | None, max_trials: int) -> int:
    """``requested``, or a fifth of the trial budget clamped to 4..10 (Optuna's own default is 10)."""
    return requested if requested is not None else max(4, min(10, max_trials // 5))


class TPE(_OptunaStrategy):
    """Tree-structured Parzen Estimator (Optuna's TPESampler): single- or multi-objective, with constraints."""

    class Params(_SamplerParams):
        n_startup_trials: int | None = Field(
            None, ge=0, le=10000,
            description="random trials before TPE models the results; null: a fifth of max_trials, 4..10",
        )
        n_ei_candidates: int = Field(24, ge=1, le=10000, description="candidates scored per proposal")
        multivariate: bool = Field(True, description="model the dimensions jointly (grouped by conditional keys)")
        constant_liar: bool = Field(
            True, description="count running trials as bad results, so concurrent proposals spread out"
        )

    params: Params

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        import optuna

        p = self.params
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                n_startup_trials=_startup_trials(p.n_startup_trials, self.spec.budget.max_trials),
                n_ei_candidates=p.n_ei_candidates,
                multivariate=p.multivariate,
                group=p.multivariate,  # conditional keys form groups of their own
                constant_liar=p.constant_liar,
                seed=seed,
            )


class NSGA2(_OptunaStrategy):
    """NSGA-II, the elitist multi-objective genetic algorithm (Optuna's NSGAIISampler), with constraints."""

    class Params(_SamplerParams):
        population_size: int | None = Field(
            None, ge=2, le=10000, description="trials per generation; null: a fifth of max_trials, 4..50"
        )
        mutation_prob: float | None = Field(
            None, ge=0.0, le=1.0, description="chance to resample each key of a child; null: 1 / number of keys"
        )
        crossover_prob: float = Field(0.9, ge=0.0, le=1.0, description="chance a child mixes two parents")
        swapping_prob: float = Field(0.5, ge=0.0, le=1.0, description="chance each key comes from the other parent")

    params: Params

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        import optuna

        p = self.params
        return optuna.samplers.NSGAIISampler(
            population_size=_population_size(p.population_size, self.spec.budget.max_trials),
            mutation_prob=p.mutation_prob,
            crossover_prob=p.crossover_prob,
            swapping_prob=p.swapping_prob,
            seed=seed,
        )

    def _replay_attrs(self) -> dict[str, Any]:
        """The generation NSGA-II would give the next trial: the newest one until it holds
        ``population_size`` complete trials (``BaseGASampler.get_trial_generation``'s rule)."""
        import optuna

        sampler = self._study.sampler
        key = sampler._get_generation_key()  # type: ignore[attr-defined]
        complete = self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        generations = [t.system_attrs.get(key, -1) for t in complete]
        newest = max(generations, default=0)
        newest = max(newest, 0)
        count = sum(1 for g in generations if g == newest)
        size = sampler.population_size  # type: ignore[attr-defined]
        return {key: newest if count < size else newest + 1}
