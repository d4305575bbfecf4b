"""DASS (Mousavi et al., ACM TECS 2023): search the cell on the sparse supernet, then retrain it sparse.

A job runs one search trial, then one child trial per requested sparsity level:

* the search trial (``{"kind": "supernet", "k": ...}``) trains a ``dass_darts`` supernet in DASS's
  three phases (:mod:`nas.dass.search`) at keep fraction ``k`` and stores the derived cell in its
  ``outputs["genotype"]``;
* each child (``parent_id`` = the search trial) is that cell with ``sparsity`` = 1 − k, trained
  from scratch by the job's trainer and sparsifier; ``hydra`` gives DASS's own pruning, every
  layer kept at exactly k.

The strategy's state is which trials exist, so a restarted job rebuilds it from the trials
(arch, ``parent_id``, ``outputs``) and repeats nothing that finished. Importing this module does not
import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas.specs import JobSpec, Trial, TrialState
from nas.strategies.base import WAIT, Problem, Strategy, TrialPlan, _Wait

if TYPE_CHECKING:
    from nas.dass.search import SearchOptions
    from nas.training import TrialOutcome

SPACE = "dass_darts"
DEFAULT_SPARSITIES = [0.95, 0.99]


def _level(sparsity: float) -> float:
    """A sparsity rounded so that 1 − k computed twice compares equal."""
    return round(float(sparsity), 9)


class DASS(Strategy):
    """DASS: a differentiable search on the sparse supernet, then the derived cell retrained at each sparsity."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        sparsities: list[Annotated[float, Field(ge=0.0, lt=1.0)]] | None = Field(
            None,
            min_length=1,
            description="sparsity levels the derived cell is retrained at, one child trial each (every layer "
            "at that sparsity); default [0.95, 0.99] when keep_fractions is null too",
        )
        keep_fractions: list[Annotated[float, Field(gt=0.0, le=1.0)]] | None = Field(
            None, min_length=1, description="the same levels as fractions kept (k = 1 - sparsity); give one of the two"
        )
        search_keep_fraction: float | None = Field(
            None,
            gt=0.0,
            le=1.0,
            description="k the search prunes the supernet to; null = the smallest requested k (DASS searches at "
            "its target, by default k = 0.01)",
        )
        pretrain_epochs: int = Field(2, ge=0, le=1000, description="dense epochs of weights and α (DASS: 100)")
        prune_epochs: int = Field(1, ge=0, le=1000, description="epochs training the scores at k, and α (DASS: 50)")
        finetune_epochs: int = Field(2, ge=0, le=1000, description="epochs of weights and α under the fixed mask (DASS: 100)")
        arch_lr: float = Field(
            1e-2,
            gt=0.0,
            le=1.0,
            description="Adam learning rate of α, β = (0.5, 0.999); DASS's 3e-4 moves α over 250 epochs, this "
            "default over the few epochs of a CPU search",
        )
        arch_weight_decay: float = Field(1e-3, ge=0.0, le=1.0, description="weight decay of α (DASS: 1e-3)")
        score_lr: float = Field(0.1, gt=0.0, le=10.0, description="SGD (momentum 0.9) learning rate of the scores (DASS: 0.1)")
        val_fraction: float = Field(
            0.5, gt=0.0, lt=1.0, description="fraction of the training part (the job's validation split already held out) that "
            "trains α (DARTS: 0.5)"
        )
        grad_clip: float = Field(5.0, gt=0.0, description="gradient-norm clip of the weights (DARTS: 5)")
        arch_steps_while_pruning: bool = Field(
            True,
            description="train α during the pruning phase too, on the masked network (DASS's `base` trainer; its "
            "default `smooth` trainer leaves α alone there)",
        )

        @model_validator(mode="after")
        def _levels(self) -> DASS.Params:
            if self.sparsities is not None and self.keep_fractions is not None:
                raise ValueError("give sparsities or keep_fractions, not both")
            if self.pretrain_epochs + self.prune_epochs + self.finetune_epochs == 0:
                raise ValueError("pretrain_epochs + prune_epochs + finetune_epochs must be at least 1")
            levels = self.levels()
            if len(set(levels)) != len(levels):
                raise ValueError(f"sparsity levels repeat: {levels}")
            return self

        def levels(self) -> list[float]:
            """The requested sparsities, in the order given."""
            if self.keep_fractions is not None:
                return [_level(1.0 - k) for k in self.keep_fractions]
            return [_level(s) for s in (self.sparsities or DEFAULT_SPARSITIES)]

        def search_k(self) -> float:
            if self.search_keep_fraction is not None:
                return self.search_keep_fraction
            return _level(1.0 - max(self.levels()))

        def search_options(self, k: float) -> SearchOptions:
            from nas.dass.search import SearchOptions

            return SearchOptions(
                k=k,
                pretrain_epochs=self.pretrain_epochs,
                prune_epochs=self.prune_epochs,
                finetune_epochs=self.finetune_epochs,
                arch_lr=self.arch_lr,
                arch_weight_decay=self.arch_weight_decay,
                score_lr=self.score_lr,
                grad_clip=self.grad_clip,
                arch_steps_while_pruning=self.arch_steps_while_pruning,
            )

    params: Params

    def __init__(self, params: Params, space: Any, spec: JobSpec) -> None:
        super().__init__(params, space, spec)
        self._search_planned = False
        self._search: Trial | None = None  # the finished search trial
        self._retrained: set[float] = set()  # sparsity levels with a child trial

    @classmethod
    def check_spec(cls, params: BaseModel, spec: JobSpec) -> list[Problem]:
        """DASS needs the ``dass_darts`` space and room in the budget for the search and every child.

        (The space itself refuses data that are not images, through its ``weight_specs``.)
        """
        assert isinstance(params, cls.Params)
        if spec.search_space.name != SPACE:
            return [
                (
                    ("search_space", "name"),
                    f"strategy dass searches the {SPACE} space only (a DARTS supernet of score-masked layers), "
                    f"not {spec.search_space.name!r}",
                )
            ]
        problems: list[Problem] = []
        needed = 1 + len(params.levels())
        if spec.budget.max_trials < needed:
            problems.append(
                (("budget", "max_trials"), f"dass runs one search trial and one child per sparsity level "
                 f"({len(params.levels())}), so max_trials must be at least {needed}, not {spec.budget.max_trials}")
            )  # fmt: skip
        return problems

    @classmethod
    def run_trial(
        cls,
        spec: JobSpec,
        arch: dict[str, Any],
        data_dir: Path,
        report: Callable[[int, dict[str, float]], None],
        parent_model: bytes | None,
    ) -> TrialOutcome:
        """The search trial runs DASS's three phases; a child trains like any trial (from scratch, as DASS retrains)."""
        if arch.get("kind") != "supernet":
            return super().run_trial(spec, arch, data_dir, report, parent_model)
        from nas.dass.search import run_search_trial

        params = cls.Params.model_validate(spec.strategy.params)
        options = params.search_options(float(arch.get("k", params.search_k())))
        return run_search_trial(spec, arch, data_dir, report, options, params.val_fraction)

    def ask(self) -> TrialPlan | _Wait | None:
        if not self._search_planned:
            self._search_planned = True
            k = self.params.search_k()
            return TrialPlan(arch={"kind": "supernet", "k": k}, tags={"role": "search", "keep_fraction": k})
        if self._search is None:
            return WAIT  # the children need the search's cell
        genotype = self._search.outputs.get("genotype")
        if self._search.state is not TrialState.complete or genotype is None:
            return None  # the search failed: there is no cell to retrain
        for sparsity in self.params.levels():
            if sparsity not in self._retrained:
                self._retrained.add(sparsity)
                return TrialPlan(
                    arch={**genotype, "sparsity": sparsity},
                    parent_id=self._search.id,
                    tags={"role": "retrain", "keep_fraction": _level(1.0 - sparsity)},
                )
        return None

    def tell(self, trial: Trial) -> None:
        if trial.arch.get("kind") == "supernet" and self._search is None:
            self._search = trial

    def replay(self, trial: Trial) -> None:
        """Every trial of an earlier run counts as planned; a finished search trial is told."""
        if trial.arch.get("kind") == "supernet":
            self._search_planned = True
        elif trial.parent_id is not None and "sparsity" in trial.arch:
            self._retrained.add(_level(trial.arch["sparsity"]))
        super().replay(trial)
