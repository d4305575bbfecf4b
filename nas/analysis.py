"""Analysis of a job's trials: which architecture dimensions matter to an objective.

Importance is Optuna's own (:mod:`optuna.importance`): the job's complete trials are rebuilt as
Optuna trials in an in-memory study, each dimension with the distribution its search space declares
(:meth:`nas.search_space.SearchSpace.dimensions`), or one inferred from the values the trials took
when the space declares none or a trial lies outside it. Dimensions that only some architectures
have (``width_2`` when ``depth`` is 3) are left out: the evaluators compare trials that all have a
value for every dimension they rank.

No FastAPI here: the API route calls :func:`param_importances` off its event loop. Optuna is
imported with this module, not on first use: two request threads importing it at once can each see
the other's half-made modules (``KeyError: 'optuna.study'``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.importance import (
    BaseImportanceEvaluator,
    FanovaImportanceEvaluator,
    MeanDecreaseImpurityImportanceEvaluator,
    PedAnovaImportanceEvaluator,
)
from pydantic import BaseModel, Field

from nas.metrics import selection_metric
from nas.specs import Trial, TrialState

Evaluator = Literal["fanova", "ped_anova", "mdi"]
"""Optuna's evaluators by short name: fANOVA, PED-ANOVA and mean decrease in impurity (a random forest)."""

MIN_TRIALS = 2
"""Complete trials an importance needs: with fewer, no dimension can be seen to change anything."""


class NotAnalysable(ValueError):
    """The trials cannot answer the question asked (too few of them, nothing varies); the message says why."""


class Importance(BaseModel):
    name: str = Field(description="an architecture dimension")
    importance: float = Field(description="its share of the objective's variance the evaluator attributes to it (they sum to 1)")


class Importances(BaseModel):
    """Parameter importances for one objective, most important first."""

    objective: str = Field(description="the objective asked about")
    metric: str = Field(
        description="the metric ranked: the one selection ranks the objective on (val_accuracy for accuracy), or "
        "the objective itself for trials recorded before it existed"
    )
    direction: Literal["maximize", "minimize"]
    evaluator: Evaluator
    n_trials: int = Field(description="complete trials with the metric, which the importances are computed over")
    importances: list[Importance]
    left_out: list[str] = Field(
        default_factory=list,
        description="dimensions not ranked: present in only some trials (conditional), or taking one value in all",
    )


def param_importances(
    trials: Sequence[Trial],
    objective: str,
    direction: Literal["maximize", "minimize"],
    declared: Mapping[str, BaseDistribution] | None = None,
    evaluator: Evaluator = "fanova",
    seed: int = 0,
) -> Importances:
    """The importance of each architecture dimension to ``objective`` over the complete ``trials``.

    ``declared`` are the space's dimensions; a dimension not declared, or with a value outside its
    declared distribution, gets one inferred from the values seen. Raises :class:`NotAnalysable`
    when fewer than :data:`MIN_TRIALS` complete trials have the metric, or no dimension varies.
    """
    metric = selection_metric(objective)
    if not any(metric in t.metrics for t in trials):
        metric = objective  # trials recorded before the metric selection ranks on existed
    scored = [
        t for t in trials
        if t.state is TrialState.complete and math.isfinite(t.metrics.get(metric, math.nan))
    ]  # fmt: skip
    if len(scored) < MIN_TRIALS:
        raise NotAnalysable(
            f"importance needs at least {MIN_TRIALS} complete trials with {metric!r}; the job has {len(scored)}"
        )
    if len({t.metrics[metric] for t in scored}) == 1:
        raise NotAnalysable(f"every complete trial has the same {metric!r}, so no dimension changes it")
    archs = [{key: _param_value(value) for key, value in t.arch.items()} for t in scored]
    every = set.intersection(*(set(a) for a in archs))
    keys = sorted({key for a in archs for key in a})
    varying = [key for key in keys if key in every and len({json.dumps(a[key]) for a in archs}) > 1]
    if not varying:
        raise NotAnalysable(
            f"no architecture dimension varies across the {len(scored)} complete trials (all share "
            f"{', '.join(sorted(every)) or 'no key'}), so none can be ranked"
        )
    distributions = {key: _distribution(key, [a[key] for a in archs], (declared or {}).get(key)) for key in varying}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction)
    study.add_trials(
        optuna.trial.create_trial(
            params={key: a[key] for key in varying}, distributions=distributions, value=t.metrics[metric]
        )
        for t, a in zip(scored, archs)
    )
    ranked = optuna.importance.get_param_importances(study, evaluator=_evaluator(evaluator, seed), normalize=True)
    return Importances(
        objective=objective, metric=metric, direction=direction, evaluator=evaluator, n_trials=len(scored),
        importances=[Importance(name=name, importance=float(value)) for name, value in ranked.items()],
        left_out=[key for key in keys if key not in varying],
    )  # fmt: skip


def _param_value(value: Any) -> Any:
    """An arch value as an Optuna parameter takes it: lists and mappings as their JSON text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _distribution(key: str, values: list[Any], declared: BaseDistribution | None) -> BaseDistribution:
    """``declared`` if it holds every value; else categorical for text and booleans, a range for numbers."""
    if declared is not None and all(_holds(declared, v) for v in values):
        return declared
    if any(isinstance(v, (str, bool)) or v is None for v in values):
        return CategoricalDistribution(sorted(set(values), key=json.dumps))
    if all(isinstance(v, int) for v in values):
        return IntDistribution(min(values), max(values))
    return FloatDistribution(float(min(values)), float(max(values)))


def _holds(distribution: BaseDistribution, value: Any) -> bool:
    try:
        return distribution._contains(distribution.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def _evaluator(name: Evaluator, seed: int) -> BaseImportanceEvaluator:
    if name == "fanova":
        return FanovaImportanceEvaluator(seed=seed)
    if name == "mdi":
        return MeanDecreaseImpurityImportanceEvaluator(seed=seed)
    return PedAnovaImportanceEvaluator()
