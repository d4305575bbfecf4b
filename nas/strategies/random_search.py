"""Random search: the neutral baseline of sparse architecture search (Farahani, 2024).

With ``random_mask_control`` every complete found trial is paired with a control trial: the same
architecture trained from the same initialisation under a static *random* mask at the found
network's per-layer densities (sparsifier ``random``), linked by ``parent_id``. The pair answers
"did the search (and the job's sparsifier) beat chance at this density?"; :func:`control_comparison`
computes the job-level answer from the trials.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from nas.arch import fingerprint
from nas.specs import JobSpec, Trial, TrialState
from nas.strategies.base import WAIT, Problem, Strategy, TrialPlan, _Wait

if TYPE_CHECKING:
    from nas.search_space import SearchSpace
    from nas.training import TrialOutcome

CONTROL_TAG = "random_mask_control"


class RandomSearch(Strategy):
    """Uniform random samples of the search space; reproducible from the job's seed."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        max_resample: int = Field(
            20, ge=0, le=1000, description="draws to try before accepting an architecture already tried"
        )
        random_mask_control: bool = Field(
            False,
            description="pair every complete trial with a control (parent_id = that trial): the same architecture "
            "and initialisation under a random mask at its per-layer densities; half the trial budget goes to controls",
        )

    params: Params

    def __init__(self, params: Params, space: SearchSpace, spec: JobSpec) -> None:
        super().__init__(params, space, spec)
        self._asked = 0  # found (non-control) plans made in the job's life
        self._seen: set[str] = set()
        self._unfinished_found = 0  # found plans asked but not yet told
        self._due: deque[Trial] = deque()  # complete found trials still waiting for their control
        self._controlled: set[str] = set()  # ids of found trials that have a control

    def ask(self) -> TrialPlan | _Wait | None:
        if self._due:
            found = self._due.popleft()
            self._controlled.add(found.id)
            return TrialPlan(arch=found.arch, parent_id=found.id, tags={CONTROL_TAG: True})
        if self.params.random_mask_control:
            # Keep room for the control of every found trial: found trials take half the budget.
            if 2 * (self._asked + 1) > self.spec.budget.max_trials:
                return WAIT if self._unfinished_found else None
        # One generator per proposal, seeded by (job seed, proposal index): a restarted job
        # draws the same sequence without having to replay the generator's state.
        rng = random.Random(f"{self.spec.seed}:{self._asked}")
        self._asked += 1
        self._unfinished_found += 1
        arch = self.space.sample(rng)
        for _ in range(self.params.max_resample):
            if fingerprint(arch) not in self._seen:
                break
            arch = self.space.sample(rng)
        self._seen.add(fingerprint(arch))
        return TrialPlan(arch=arch)

    def tell(self, trial: Trial) -> None:
        if trial.parent_id is not None:
            return  # a control: nothing to learn for a random search
        self._unfinished_found = max(0, self._unfinished_found - 1)
        if self.params.random_mask_control and trial.state is TrialState.complete and trial.id not in self._controlled:
            self._due.append(trial)

    def replay(self, trial: Trial) -> None:
        if trial.parent_id is not None:  # a control, created after its parent
            self._controlled.add(trial.parent_id)
            self._due = deque(t for t in self._due if t.id != trial.parent_id)
            return
        self._asked += 1
        self._unfinished_found += 1
        self._seen.add(fingerprint(trial.arch))
        if trial.state.finished:
            self.tell(trial)

    @classmethod
    def check_spec(cls, params: Params, spec: JobSpec) -> list[Problem]:
        if params.random_mask_control and spec.budget.max_trials < 2:
            return [(("budget", "max_trials"), "random_mask_control needs at least 2 trials: a found one and its control")]
        return []

    @classmethod
    def trains_each_architecture(cls, params: Params) -> bool:
        return not params.random_mask_control  # a control trains under its parent's random mask

    @classmethod
    def run_trial(
        cls,
        spec: JobSpec,
        arch: dict[str, Any],
        data_dir: Path,
        report: Callable[[int, dict[str, float]], None],
        parent_model: bytes | None,
    ) -> TrialOutcome:
        """A found trial trains as the job says; a control (it has a parent) under a random mask."""
        if parent_model is None:
            return super().run_trial(spec, arch, data_dir, report, parent_model)
        return train_random_mask_control(spec, arch, data_dir, report, parent_model)


def train_random_mask_control(
    spec: JobSpec,
    arch: dict[str, Any],
    data_dir: Path,
    report: Callable[[int, dict[str, float]], None],
    parent_model: bytes,
) -> TrialOutcome:
    """Train ``arch`` under a static random mask at the parent model's per-layer densities.

    Same architecture and job seed as the parent, so the same initial weights and batch order:
    only how the mask was chosen differs. The parent's densities are recorded in the outcome's
    ``outputs["control"]``.
    """
    from nas.specs import SparsifierRef
    from nas.sparse.stats import weight_densities, weight_sparsity
    from nas.training import load_trained_model, run_trial

    parent = load_trained_model(parent_model)
    densities = weight_densities(parent)
    overall = min(weight_sparsity(parent), 0.999999)
    control_spec = spec.model_copy(
        update={"sparsifier": SparsifierRef(name="random", params={"sparsity": overall, "distribution": "uniform"})}
    )
    per_layer = {name: 1.0 - density for name, density in densities.items()}
    outcome = run_trial(control_spec, arch, data_dir, report, layer_sparsity=per_layer)
    outcome.outputs = {**outcome.outputs, "control": {"kind": "random_mask", "parent_densities": densities}}
    return outcome


@dataclass
class ControlComparison:
    """Found trials against their random-mask controls on one metric (paired by ``parent_id``)."""

    metric: str
    maximize: bool
    pairs: int
    mean_found: float
    mean_control: float
    mean_difference: float  # found - control, in the metric's units
    found_wins: int  # pairs where the found trial is better in the metric's direction
    p_value: float | None  # two-sided Wilcoxon signed-rank test on the pairs; None below 2 pairs
    best_found: float | None  # the best found trial ...
    best_control: float | None  # ... and its own control

    @property
    def search_beat_chance(self) -> bool:
        """Found trials better on average, significantly at the 5% level."""
        better = self.mean_difference > 0 if self.maximize else self.mean_difference < 0
        return better and self.p_value is not None and self.p_value < 0.05


def control_comparison(trials: Iterable[Trial], metric: str = "accuracy", maximize: bool = True) -> ControlComparison:
    """Pair every complete found trial with its complete control and compare them on ``metric``.

    The job-level answer to "did search beat chance": the mean paired difference, how many pairs
    the found network won, a Wilcoxon signed-rank p-value over the pairs (scipy), and the best
    found network against its own control.
    """
    trials = list(trials)
    by_id = {t.id: t for t in trials}
    pairs = [
        (by_id[t.parent_id], t)
        for t in trials
        if t.parent_id in by_id
        and t.state is TrialState.complete
        and by_id[t.parent_id].state is TrialState.complete
        and metric in t.metrics
        and metric in by_id[t.parent_id].metrics
    ]
    found = [f.metrics[metric] for f, _ in pairs]
    control = [c.metrics[metric] for _, c in pairs]
    diffs = [f - c for f, c in zip(found, control)]
    sign = 1.0 if maximize else -1.0
    p_value = None
    if len(pairs) >= 2:
        if all(d == 0 for d in diffs):
            p_value = 1.0
        else:
            from scipy.stats import wilcoxon

            p_value = float(wilcoxon(found, control, zero_method="zsplit").pvalue)
    best = max(pairs, key=lambda fc: sign * fc[0].metrics[metric], default=None)
    return ControlComparison(
        metric=metric,
        maximize=maximize,
        pairs=len(pairs),
        mean_found=_mean(found),
        mean_control=_mean(control),
        mean_difference=_mean(diffs),
        found_wins=sum(1 for d in diffs if sign * d > 0),
        p_value=p_value,
        best_found=None if best is None else best[0].metrics[metric],
        best_control=None if best is None else best[1].metrics[metric],
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
