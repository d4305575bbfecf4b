"""A per-layer sensitivity scan of a given model, then TPE: where the model can take sparsity, found first.

Pruning a trained network hurts some layers far more than others (the first convolution and the
classifier usually most; AMC, SPDY). Before modelling the whole space, this strategy probes each
group of layers of a ``model_sparsity`` space alone: one trial per group, that group unstructured
at the highest sparsity the space offers and every other group dense. Each probe measures what
that group's sparsity costs (its ``accuracy_drop``) and saves (its latency). TPE then searches the
whole space with the probes as its first results, in place of random start-up trials, so its
models of good and bad allocations start from the one-at-a-time answers.

Probes are ordinary trials of the space: they are stored, shown and ranked like the others, and
a restarted job replays them from its history like any TPE trial.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from pydantic import BaseModel, Field

from nas.arch import fingerprint
from nas.specs import JobSpec
from nas.strategies.base import Problem, TrialPlan
from nas.strategies.optuna_samplers import TPE, suggest

SPACE = "model_sparsity"


class SensitivityScan(TPE):
    """One probe per layer group (that group sparse, the rest dense), then TPE over every allocation."""

    class Params(TPE.Params):
        probe_sparsity: float | None = Field(
            None, ge=0.0, lt=1.0,
            description="the sparsity each probe gives its group, one of the space's layer_sparsity_choices; null: the "
            "highest of them",
        )  # fmt: skip
        n_startup_trials: int | None = Field(
            0, ge=0, le=10000, description="random trials after the probes before TPE models the results"
        )

    params: Params

    @classmethod
    def check_spec(cls, params: BaseModel, spec: JobSpec) -> list[Problem]:
        if spec.search_space.name != SPACE:
            return [(("search_space", "name"), f"the sensitivity strategy probes the layers of a given model: it "
                     f"searches {SPACE}, not {spec.search_space.name}")]  # fmt: skip
        choices = spec.search_space.params["layer_sparsity_choices"]
        probe = params.probe_sparsity  # type: ignore[attr-defined]
        if probe is not None and probe not in choices:
            return [(("strategy", "params", "probe_sparsity"),
                     f"probe_sparsity {probe} is not one of the space's layer_sparsity_choices {choices}")]  # fmt: skip
        if "unstructured" not in spec.search_space.params["pattern_choices"]:
            return [(("search_space", "params", "pattern_choices"),
                     "the sensitivity strategy probes groups unstructured: pattern_choices must hold 'unstructured'")]
        return super().check_spec(params, spec)

    def ask(self) -> TrialPlan:
        probes = self._probes()
        while self._proposals < len(probes):
            arch = probes[self._proposals]
            key = fingerprint(arch)
            self._proposals += 1
            if key in self._seen:
                continue
            self._study.enqueue_trial(arch, skip_if_exists=False)
            trial = self._study.ask()
            self.space.arch_from(lambda k: suggest(trial, k, self._dims[k]))
            self._seen.add(key)
            self._running.setdefault(key, deque()).append(trial)
            return TrialPlan(arch=arch, tags={"probe": True})
        return super().ask()

    def _probes(self) -> list[dict[str, Any]]:
        """One architecture per group that can be unstructured: it at the probe sparsity, every other group at its
        least sparse choice (dense where it may be); the first groups' only, when probing all would take more
        than half of ``budget.max_trials`` (``max_groups`` of the space groups the layers more coarsely)."""
        space = self.space
        dims = self._dims
        choices = space.params.layer_sparsity_choices  # type: ignore[attr-defined]
        level = self.params.probe_sparsity if self.params.probe_sparsity is not None else max(choices)
        groups = len(space.groups)  # type: ignore[attr-defined]

        def least(g: int) -> dict[str, Any]:
            eligible = dims[f"pattern_group{g}"].choices  # type: ignore[attr-defined]
            if "dense" in eligible:
                return {f"pattern_group{g}": "dense"}
            pattern = "unstructured" if "unstructured" in eligible else eligible[0]
            extra = {f"sparsity_group{g}": min(choices)} if pattern in ("unstructured", "channel") else {}
            return {f"pattern_group{g}": pattern, **extra}

        probes = []
        for g in range(groups):
            if "unstructured" not in dims[f"pattern_group{g}"].choices:  # type: ignore[attr-defined]
                continue
            arch: dict[str, Any] = {}
            for other in range(groups):
                arch.update({f"pattern_group{g}": "unstructured", f"sparsity_group{g}": level} if other == g
                            else least(other))  # fmt: skip
            probes.append(arch)
        return probes[: max(1, self.spec.budget.max_trials // 2)]  # half the budget at most is spent probing
