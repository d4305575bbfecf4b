"""Regularized evolution (REA): aging evolution with tournament selection (Real et al., "Regularized
Evolution for Image Classifier Architecture Search", AAAI 2019), the evolutionary baseline of
NAS-Bench-201.

The population starts as ``population_size`` architectures drawn with ``space.sample``. Every
later plan draws ``sample_size`` members of the population uniformly *with replacement* (the
paper's Algorithm 1 and NAS-Bench-201's ``R_EA.py`` both do), takes the best of them and mutates
it: exactly one key of its architecture gets another value of its dimension (a categorical key
another choice; an integer or float key another value of its range, on its step, log-uniformly for
a log dimension). The child is rebuilt through ``space.arch_from``, so it holds only the keys it
uses; a key the mutation brings in (``width_2`` when ``depth`` grows) is drawn uniformly. The
plan's ``parent_id`` is the mutated trial. An architecture the job already has is not proposed
again while another mutation (or draw) finds a new one, up to ``max_resample`` tries.

Aging: the population is the ``population_size`` most recently *created* (highest-numbered)
trials among the finished ones that joined; older ones leave it, whatever their value. Age is
counted by trial number rather than by finishing order so the population depends only on which
trials have finished, and a restarted job (``from_history``, which sees trials in number order)
rebuilds the very population its live run had.

Selection ranks trials as every strategy does (:func:`nas.metrics.objective_value`: ``accuracy``
and ``loss`` on their validation values, ``latency_ms`` falling back to the predicted latency).
With one objective the tournament winner is the sample's best; with several it is a member of the
sample's first non-dominated front. Ties are broken with the proposal's seeded generator.

Who joins the population:

* ``complete`` trials with a value for every objective;
* ``pruned`` trials (stopped early) with their last metrics, when those hold every objective:
  the early-stopping rule judged them worse than their peers, which the tournament then sees;
* ``infeasible``, ``failed`` and ``cancelled`` trials never do: they have nothing to rank, and an
  initial draw that ends this way is replaced by a new draw, so the population still starts from
  ``population_size`` ranked architectures.

Asynchronous: once every initial draw is out, a new plan mutates within the finished members
even before the initial population is whole; with none finished yet ``ask`` returns ``WAIT``.

Determinism: each proposal draws from a generator seeded by (job seed, proposal index), and the
state is rebuilt from the trials, so the same seed and the same history give the same proposals.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, Field

from nas.arch import ArchSpec, fingerprint
from nas.metrics import objective_value
from nas.pareto import non_dominated
from nas.specs import JobSpec, Trial, TrialState
from nas.strategies.base import WAIT, Problem, Strategy, TrialPlan, _Wait
from nas.strategies.optuna_samplers import _arch_from_replays_samples

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

    from nas.search_space import SearchSpace


class RegularizedEvolution(Strategy):
    """Regularized (aging) evolution with tournament selection; single- or multi-objective.

    Defaults are NAS-Bench-201's REA runs (D-X-Y/AutoDL-Projects,
    ``scripts-search/NAS-Bench-201-algos/R-EA.sh``: ``--ea_population 10``, and
    ``--ea_sample_size 3`` as its usage line passes it).
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        population_size: int = Field(
            10, ge=1, le=10000, description="trials the population holds; the oldest leaves as a new one joins "
            "(NAS-Bench-201: 10)"
        )
        sample_size: int = Field(
            3, ge=1, le=10000, description="population members drawn (with replacement) for each tournament "
            "(NAS-Bench-201: 3)"
        )
        max_resample: int = Field(
            20, ge=0, le=1000, description="mutations (or draws) to try before accepting an architecture already tried"
        )

    params: Params

    def __init__(self, params: Params, space: SearchSpace, spec: JobSpec) -> None:
        super().__init__(params, space, spec)
        dims = space.dimensions()
        if dims is None:
            raise ValueError(f"{type(space).__name__} has no dimensions() to mutate architectures in")
        self._dims: dict[str, BaseDistribution] = dims
        self._proposals = 0  # plans made in the job's life, replayed ones included
        self._draws = 0  # initial (parentless) draws that count towards the population: issued, not dropped
        self._seen: set[str] = set()  # fingerprints of every architecture of the job
        self._population: list[tuple[int, str, tuple[float, ...]]] = []  # (number, trial id, signed values), oldest first
        self._archs: dict[str, ArchSpec] = {}  # architectures of the population, by trial id

    # -- ask ----------------------------------------------------------------------------------

    def ask(self) -> TrialPlan | _Wait:
        rng = random.Random(f"{self.spec.seed}:rea:{self._proposals}")
        if self._draws < self.params.population_size:
            plan = TrialPlan(arch=self._fresh(rng))
            self._draws += 1
        elif self._population:
            parent_id, parent_arch = self._tournament(rng)
            plan = TrialPlan(arch=self._child(parent_arch, rng), parent_id=parent_id)
        else:
            return WAIT  # every initial draw is out and none has finished
        self._proposals += 1
        self._seen.add(fingerprint(plan.arch))
        return plan

    def _fresh(self, rng: random.Random) -> ArchSpec:
        arch = self.space.sample(rng)
        for _ in range(self.params.max_resample):
            if fingerprint(arch) not in self._seen:
                break
            arch = self.space.sample(rng)
        return arch

    def _tournament(self, rng: random.Random) -> tuple[str, ArchSpec]:
        """The id and architecture of the best of ``sample_size`` members drawn with replacement."""
        drawn = {rng.randrange(len(self._population)) for _ in range(self.params.sample_size)}
        sample = [self._population[i] for i in sorted(drawn)]
        front = non_dominated([values for _, _, values in sample])
        _, trial_id, _ = sample[rng.choice(front)]
        return trial_id, self._archs[trial_id]

    def _child(self, parent: ArchSpec, rng: random.Random) -> ArchSpec:
        """``parent`` with one key changed, rebuilt by the space; an unseen one within ``max_resample`` tries."""
        mutable = [key for key in self._dims if key in parent and _has_other(self._dims[key], parent[key])]
        if not mutable:
            return self._fresh(rng)  # every key the parent has holds one value only: nothing to mutate
        child = parent
        for _ in range(self.params.max_resample + 1):
            key = rng.choice(mutable)
            value = _pick(self._dims[key], rng, avoid=parent[key])

            def suggest(name: str) -> Any:
                if name == key:
                    return value
                if name in parent:
                    return parent[name]
                return _pick(self._dims[name], rng)

            child = dict(self.space.arch_from(suggest))
            if fingerprint(child) not in self._seen:
                break
        return child

    # -- tell ---------------------------------------------------------------------------------

    def tell(self, trial: Trial) -> None:
        values = self._signed(trial)
        if values is None:
            if trial.parent_id is None:
                self._draws -= 1  # an initial draw that cannot join: draw another
            return
        self._archs[trial.id] = trial.arch
        self._population.append((trial.number, trial.id, values))
        self._population.sort()
        while len(self._population) > self.params.population_size:
            _, gone, _ = self._population.pop(0)
            del self._archs[gone]

    def replay(self, trial: Trial) -> None:
        self._proposals += 1
        self._seen.add(fingerprint(trial.arch))
        if trial.parent_id is None:
            self._draws += 1
        if trial.state.finished:
            self.tell(trial)

    def _signed(self, trial: Trial) -> tuple[float, ...] | None:
        """The trial's objective values turned so that larger is better; None when it does not join."""
        if trial.state not in (TrialState.complete, TrialState.pruned):
            return None
        values = [objective_value(trial.metrics, o.metric) for o in self.spec.objectives]
        if None in values:
            return None
        return tuple(v if o.direction == "maximize" else -v for v, o in zip(values, self.spec.objectives))  # type: ignore[operator]

    @classmethod
    def check_spec(cls, params: Params, spec: JobSpec) -> list[Problem]:
        from nas import registry

        problems: list[Problem] = []
        if params.sample_size > params.population_size:
            problems.append((
                ("strategy", "params", "sample_size"),
                f"sample_size ({params.sample_size}) is larger than population_size ({params.population_size})",
            ))
        space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
        if space.dimensions() is None:
            problems.append((("search_space", "name"), f"{spec.search_space.name} has no dimensions() for rea to mutate"))
        elif not _arch_from_replays_samples(space):
            problems.append((
                ("search_space", "name"),
                f"{spec.search_space.name}'s conditional keys cannot be set key by key: the space needs an "
                "arch_from(draw) method for rea",
            ))
        return problems


def _has_other(dist: BaseDistribution, value: Any) -> bool:
    """Whether ``dist`` holds a value other than ``value``."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return any(choice != value for choice in dist.choices)
    return dist.high > dist.low  # type: ignore[attr-defined]


_ANY: Final = object()
"""``_pick``'s ``avoid`` when any value will do."""


def _pick(dist: BaseDistribution, rng: random.Random, avoid: Any = _ANY) -> Any:
    """A value of ``dist`` drawn with ``rng``, other than ``avoid`` when that is given.

    Categorical: a uniform choice. Integer or float on a step: a uniform point of its grid. Log:
    log-uniform (an integer rounded to the nearest). Float without a step: uniform.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return rng.choice([c for c in dist.choices if c != avoid] or list(dist.choices))
    if not isinstance(dist, (IntDistribution, FloatDistribution)):
        raise TypeError(f"unsupported distribution {type(dist).__name__}")
    if dist.log:
        lo, hi = (dist.low - 0.5, dist.high + 0.5) if isinstance(dist, IntDistribution) else (dist.low, dist.high)
        for _ in range(32):
            value: Any = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            if isinstance(dist, IntDistribution):
                value = min(max(round(value), dist.low), dist.high)
            if value != avoid:
                return value
        return dist.low if avoid != dist.low else dist.high  # a range of two values, drawn the same one each time
    if isinstance(dist, FloatDistribution) and dist.step is None:
        value = rng.uniform(dist.low, dist.high)
        return value if value != avoid else (dist.low if avoid != dist.low else dist.high)
    step = dist.step
    points = round((dist.high - dist.low) / step) + 1
    at = None if avoid is _ANY else round((avoid - dist.low) / step)
    if at is None or not 0 <= at < points:
        index = rng.randrange(points)
    else:
        index = rng.randrange(points - 1)
        index += index >= at
    value = dist.low + index * step
    return int(value) if isinstance(dist, IntDistribution) else value
