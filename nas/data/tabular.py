"""Tabular benchmarks as datasets: a trial's results are looked up in a published table, not trained.

A tabular dataset pairs with one search space (the architectures its table holds) and answers
:meth:`TabularDataset.lookup` with what training the architecture gave when the table was made:
the final metrics, the simulated training time, and per-epoch curves where the table has them.
Its trials take the same path through the service as trained ones (REST, store, dispatcher, Ray
workers, store), so every record, chart and Pareto front works on them; only the trainer differs.
Searching such tables costs nothing, which is what makes strategies comparable with the papers
that report on them and the service's own per-trial cost measurable.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nas.data.base import DataSplits, Dataset

if TYPE_CHECKING:
    from nas.specs import JobSpec

Problem = tuple[tuple[str | int, ...], str]


@dataclass(frozen=True)
class TableEntry:
    """One architecture's row: what a trial of it reports."""

    metrics: dict[str, float]  # the final metrics, in the names of nas.metrics
    train_time_s: float  # the table's training time: the simulated cost of the trial
    epochs: int  # the epoch the final metrics were taken at
    curve: tuple[dict[str, float], ...] = field(default=())  # per-epoch validation metrics, when the table has them
    outputs: dict[str, Any] = field(default_factory=dict)  # which row and seed, for Trial.outputs


class TabularDataset(Dataset):
    """Base of datasets whose trials are looked up; ``space`` names the search space whose architectures the table holds."""

    space: ClassVar[str]
    has_curves: ClassVar[bool] = False
    """Whether :meth:`lookup` returns per-epoch curves, which early stopping ranks on."""

    def load(self, data_dir: Path) -> DataSplits:
        raise ValueError(f"the {self.space} dataset is a table of training results: its trials are looked up, not trained")

    @abstractmethod
    def lookup(self, arch: dict[str, Any], seed: int) -> TableEntry:
        """The row of ``arch``; where the table holds several training runs, ``seed`` picks one, so a
        trial run again reports the same. ``ValueError`` for an arch the table does not hold."""

    def check_spec(self, spec: JobSpec) -> list[Problem]:
        """The job must search the table's space, with a strategy that trains its trials the default way
        (the one a lookup replaces), and stop trials early only on curves the table has."""
        from nas import registry

        problems: list[Problem] = []
        if spec.search_space.name != self.space:
            problems.append((("search_space", "name"), f"the {self.space} dataset holds results of the {self.space} "
                             f"search space only, not {spec.search_space.name!r}"))  # fmt: skip
        strategy = registry.strategies.get(spec.strategy.name)
        if not strategy.trains_each_architecture(strategy.Params.model_validate(spec.strategy.params)):
            problems.append((("strategy",), f"strategy {spec.strategy.name!r} with these params trains its trials its "
                             f"own way; trials of the {self.space} dataset are looked up in its table"))  # fmt: skip
        from nas.timing.targets import all_targets

        if spec.target not in all_targets():
            problems.append((("target",), f"a {self.space} trial's latency is the table's; it is not measured on an "
                             "agent target"))  # fmt: skip
        if spec.early_stopping is not None and spec.early_stopping.name != "none" and not self.has_curves:
            problems.append((("early_stopping",), f"the {self.space} table has no per-epoch curves to stop trials on"))
        return problems
