"""SuperTickets (You et al., ECCV 2022): find sparse sub-networks by training the supernet once.

Trial 0 trains the ``supernet`` space's weight-sharing supernet "two-in-one" (network slimming on
the expansion BatchNorm scales plus progressive global magnitude pruning, +``step`` every interval
up to the largest target, optionally with reactivation; see :mod:`nas.supertickets.two_in_one`)
and hands back, in ``Trial.outputs["tickets"]``, the sub-network found at each target sparsity.
Each ticket then becomes child trials of trial 0 (``parent_id``): evaluated as cut from the
supernet without retraining (``ticket: direct``, BatchNorm statistics recalibrated), and after
``retrain_epochs`` epochs of fine-tuning under its mask (``ticket: retrain``).

A trial's arch is the space's architecture plus ``ticket`` (``supernet``, ``direct`` or
``retrain``) and ``ticket_sparsity`` (a ticket's sparsity; the supernet's final one, its largest
target); :meth:`SuperTickets.space_arch` strips them.
The job's sparsifier is not used: the supernet trial prunes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nas.specs import JobSpec, Trial, TrialState
from nas.strategies.base import WAIT, Problem, Strategy, TrialPlan, _Wait
from nas.supertickets.schedule import schedule

if TYPE_CHECKING:
    from nas.training import TrialOutcome

TICKET_KEY = "ticket"
SPARSITY_KEY = "ticket_sparsity"
SUPERNET, DIRECT, RETRAIN = "supernet", "direct", "retrain"
SPACE = "supernet"


class SuperTickets(Strategy):
    """SuperTickets (You et al. 2022): one two-in-one supernet training, then its tickets evaluated with and without retraining."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        targets: list[float] = Field(
            [0.5, 0.7, 0.9], min_length=1, max_length=20, description="sparsities at which tickets are drawn"
        )
        step: float = Field(0.1, gt=0.0, lt=1.0, description="sparsity added at every pruning interval (paper: 0.1)")
        interval_epochs: float = Field(
            1.0, gt=0.0, le=1000.0, description="epochs between pruning steps (paper: 25 of 350)"
        )
        reactivation: bool = Field(
            False, description="pruned weights keep their values and may come back at the next pruning step"
        )
        rho: float = Field(
            1.8e-4, ge=0.0, le=1.0, description="network-slimming L1 coefficient on expansion BatchNorm scales (paper: 1.8e-4)"
        )
        slim_threshold: float = Field(
            0.1, ge=0.0, lt=1.0,
            description="a channel is live when its |BN scale| is at least this fraction of the largest one; a ticket keeps its blocks' live channels",
        )  # fmt: skip
        kernel_tolerance: float = Field(
            0.05, ge=0.0, lt=1.0,
            description="a ticket's block takes the smallest kernel whose centre holds all but this fraction of its depthwise weight mass",
        )  # fmt: skip
        sandwich: bool = Field(
            True, description="train the largest, the smallest and n_random random sub-networks every step (sandwich rule)"
        )
        n_random: int = Field(1, ge=0, le=8, description="random sub-networks per step under the sandwich rule")
        retrain_epochs: int = Field(
            2, ge=0, le=1000, description="fine-tuning epochs of the retrained tickets; 0: tickets are only evaluated as cut"
        )
        calibration_batches: int = Field(
            20, ge=0, le=10000,
            description="training batches that re-estimate the supernet's BatchNorm statistics before its last ticket "
            "is cut (every trial's end re-estimates its own on nas.training.CALIBRATION_BATCHES batches)",
        )  # fmt: skip

        @field_validator("targets")
        @classmethod
        def _sparsities(cls, targets: list[float]) -> list[float]:
            bad = [t for t in targets if not 0.0 < t < 1.0]
            if bad:
                raise ValueError(f"target sparsities must lie strictly between 0 and 1: {bad}")
            if len({round(t, 6) for t in targets}) != len(targets):
                raise ValueError(f"targets repeat a sparsity: {targets}")
            return sorted(targets)

    params: Params

    def __init__(self, params: Params, space: Any, spec: JobSpec) -> None:
        super().__init__(params, space, spec)
        self._root_created = False
        self._root_id: str | None = None
        self._root_finished = False
        self._children: list[TrialPlan] = []  # tickets still to propose
        self._created: set[tuple[str, float]] = set()  # (ticket kind, sparsity) of children already created

    def ask(self) -> TrialPlan | _Wait | None:
        """Trial 0 (the supernet); then, once it is complete, every ticket's children; ``WAIT`` in between."""
        if not self._root_created:
            self._root_created = True
            arch = {**self.space.largest(), TICKET_KEY: SUPERNET, SPARSITY_KEY: max(self.params.targets)}
            return TrialPlan(arch=arch, tags={"ticket": SUPERNET})
        if not self._root_finished:
            return WAIT
        while self._children:
            plan = self._children.pop(0)
            key = (plan.arch[TICKET_KEY], plan.arch[SPARSITY_KEY])
            if key not in self._created:
                self._created.add(key)
                return plan
        return None

    def tell(self, trial: Trial) -> None:
        if trial.arch.get(TICKET_KEY) != SUPERNET:
            return
        self._root_finished = True
        if trial.state is not TrialState.complete:
            return  # no supernet, no tickets: the job ends
        tickets = (trial.outputs or {}).get("tickets") or []  # a complete supernet trial always has them
        kinds = [DIRECT] + ([RETRAIN] if self.params.retrain_epochs > 0 else [])
        self._children = [
            TrialPlan(
                arch={**ticket["arch"], TICKET_KEY: kind, SPARSITY_KEY: ticket["sparsity"]},
                parent_id=trial.id,
                tags={"ticket": kind, "sparsity": ticket["sparsity"]},
            )
            for ticket in sorted(tickets, key=lambda t: t["sparsity"])
            for kind in kinds
        ]

    def replay(self, trial: Trial) -> None:
        """The supernet trial sets the tickets up; a ticket trial already created is never proposed again."""
        kind = trial.arch.get(TICKET_KEY)
        if kind == SUPERNET:
            self._root_created, self._root_id = True, trial.id
        elif kind in (DIRECT, RETRAIN):
            self._created.add((kind, trial.arch[SPARSITY_KEY]))
        else:
            raise ValueError(f"trial {trial.number} is not a SuperTickets trial: arch {trial.arch}")
        if trial.state.finished:
            self.tell(trial)

    # -- hooks ------------------------------------------------------------------------------

    @classmethod
    def space_arch(cls, arch: dict[str, Any]) -> dict[str, Any]:
        """The search-space architecture of a trial (its arch without the ticket keys)."""
        return {k: v for k, v in arch.items() if k not in (TICKET_KEY, SPARSITY_KEY)}

    @classmethod
    def planned_density(cls, arch: dict[str, Any]) -> float | None:
        """A ticket keeps ``1 - ticket_sparsity`` of its weights; the supernet ends at its largest target."""
        return 1.0 - float(arch[SPARSITY_KEY]) if SPARSITY_KEY in arch else None

    @classmethod
    def check_spec(cls, params: BaseModel, spec: JobSpec) -> list[Problem]:
        """Only the ``supernet`` space has a weight-sharing supernet; the schedule and the tickets must fit the job."""
        assert isinstance(params, cls.Params)
        problems: list[Problem] = []
        if spec.search_space.name != SPACE:
            problems.append(
                (("search_space", "name"), f"supertickets trains a weight-sharing supernet: use the {SPACE!r} search space, "
                 f"not {spec.search_space.name!r}")  # fmt: skip
            )
        intervals = len(schedule(params.targets, params.step))
        if (intervals + 1) * params.interval_epochs > spec.training.epochs:
            problems.append(
                (
                    ("strategy", "params", "interval_epochs"),
                    f"{intervals} pruning steps (to {max(params.targets):g} by {params.step:g}) of "
                    f"{params.interval_epochs:g} epochs each, plus one interval at the last target, need "
                    f"{(intervals + 1) * params.interval_epochs:g} epochs; training.epochs is {spec.training.epochs}",
                )
            )
        needed = 1 + len(params.targets) * (2 if params.retrain_epochs > 0 else 1)
        if spec.budget.max_trials < needed:
            problems.append(
                (
                    ("budget", "max_trials"),
                    f"supertickets needs {needed} trials (the supernet, then {len(params.targets)} tickets "
                    f"{'with and without retraining' if params.retrain_epochs else 'as cut'}); "
                    f"budget.max_trials is {spec.budget.max_trials}",
                )
            )
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
        """The supernet's two-in-one training, or one ticket's evaluation (as cut, or retrained)."""
        from nas.supertickets import two_in_one

        p = cls.Params.model_validate(spec.strategy.params)
        kind = arch.get(TICKET_KEY)
        if kind == SUPERNET:
            settings = two_in_one.Settings(
                targets=tuple(p.targets),
                step=p.step,
                interval_epochs=p.interval_epochs,
                reactivation=p.reactivation,
                rho=p.rho,
                slim_threshold=p.slim_threshold,
                kernel_tolerance=p.kernel_tolerance,
                sandwich=p.sandwich,
                n_random=p.n_random,
                calibration_batches=p.calibration_batches,
            )
            return two_in_one.train_supernet(spec, settings, data_dir, report)
        if kind in (DIRECT, RETRAIN):
            return two_in_one.evaluate_ticket(
                spec,
                cls.space_arch(arch),
                float(arch[SPARSITY_KEY]),
                p.retrain_epochs if kind == RETRAIN else 0,
                data_dir,
                report,
                parent_model,
            )
        raise ValueError(f"arch {TICKET_KEY}={kind!r} is not one of {SUPERNET}, {DIRECT}, {RETRAIN}")
