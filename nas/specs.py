"""The job specification and the job/trial records, validated once at the edge.

Names of plug-ins resolve through :mod:`nas.registry`; each plug-in's ``params`` are validated
by its own ``Params`` model and stored with every default filled in, so a stored spec says
exactly what ran.
"""

from __future__ import annotations

import enum
import json
import re
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from nas import metrics as trial_metrics
from nas import registry
from nas.data.stored import UnknownDataset
from nas.errors import did_you_mean
from nas.registry import Registry
from nas.timing.agent_targets import TARGET_PATTERN, UnknownTarget, current_target_catalog
from nas.timing.runtimes import RUNTIMES
from nas.safe_text import check_printable, printable_pattern


class _Strict(BaseModel):
    # NaN and infinity are never a valid setting (JSON cannot even carry them back in an error).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Bounds on a plug-in's ``params``, whatever its own model says: a spec is stored whole and
# returned by its route, so its size is bounded here for every plug-in, third-party ones too.
MAX_PARAM_ITEMS = 256  # entries of any list or mapping
MAX_PARAM_TEXT = 1000  # characters of any string
MAX_PARAM_DEPTH = 16  # lists and mappings inside one another


def _check_param_values(value: Any, path: str = "params", depth: int = 0) -> None:
    """``ValueError`` naming the first over-long list or string, a string with control characters, or deep nesting."""
    if isinstance(value, (list, dict)):
        if depth >= MAX_PARAM_DEPTH:
            raise ValueError(f"{path} nests lists and mappings more than {MAX_PARAM_DEPTH} deep")
        if len(value) > MAX_PARAM_ITEMS:
            raise ValueError(f"{path} has {len(value)} entries; at most {MAX_PARAM_ITEMS} are allowed")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                _check_param_values(key, f"{path} key")
            _check_param_values(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, str):
        if len(value) > MAX_PARAM_TEXT:
            raise ValueError(f"{path} is {len(value)} characters long; at most {MAX_PARAM_TEXT} are allowed")
        check_printable(value)


class PluginRef(_Strict):
    """``{name, params}`` naming a registered plug-in; params are checked by its ``Params``."""

    # The JSON Schema lists the registered names, read when a schema is generated (plug-ins load then).
    model_config = ConfigDict(json_schema_extra=lambda schema, cls: _name_enum(schema, cls))

    registry: ClassVar[Registry[Any]]
    name: str
    params: dict[str, Any] = Field(
        default_factory=dict, validate_default=True,
        description="checked against the named plug-in's params_schema in GET /catalog",
    )

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        cls.registry.get(name)  # raises UnknownName listing the valid names
        return name

    @field_validator("params")
    @classmethod
    def _valid_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "name" not in info.data:
            return params  # the name was already refused
        _check_param_values(params)  # before the plug-in's model spends time on a huge value
        # Errors raised here keep their location: ``sparsifier.params.sparsity``.
        return cls.registry.get(info.data["name"]).Params.model_validate(params).model_dump(mode="json")


def _name_enum(schema: dict[str, Any], cls: type[PluginRef]) -> None:
    if getattr(cls, "registry", None) is not None:
        schema["properties"]["name"]["enum"] = cls.registry.names()


class SearchSpaceRef(PluginRef):
    registry = registry.search_spaces


class StrategyRef(PluginRef):
    registry = registry.strategies


class SparsifierRef(PluginRef):
    registry = registry.sparsifiers


class DatasetRef(PluginRef):
    registry = registry.datasets


class EarlyStoppingRef(PluginRef):
    registry = registry.early_stopping


class TrainingSpec(_Strict):
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=65536)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    val_fraction: float = Field(
        0.1, ge=0.01, le=0.5,
        description="fraction of the training data held out (stratified by class) as the validation split that "
                    "selection ranks on; the rest trains",
    )  # fmt: skip
    val_seed: int = Field(
        0, ge=0, lt=2**31, description="seed of the validation split: every trial of the job holds out the same examples"
    )
    mixed_precision: bool = Field(
        False,
        description="train in float16 under autocast with loss scaling (evaluation stays float32); needs "
        "resources.gpus > 0: on a CPU it would only slow training down, so a job asking it without a GPU is refused",
    )


class Objective(_Strict):
    metric: str = Field(json_schema_extra={"enum": list(trial_metrics.OBJECTIVES)})
    direction: Literal["maximize", "minimize"]

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        known = trial_metrics.METRICS.get(metric)
        if known is not None and known.split is not None and not known.objective:
            quantities = [m.name for m in trial_metrics.METRICS.values() if m.selected_on]
            why = (
                "selection never ranks on the test split (choosing on it would make the reported test numbers "
                "optimistic)" if known.split == "test" else "objectives name the quantity"
            )
            raise ValueError(
                f"metric {metric!r} is measured on the {known.split} split and {why}; name one of "
                f"{', '.join(quantities)}: selection ranks it on the validation split and records the test value beside it"
            )
        if metric not in trial_metrics.OBJECTIVES:
            what = "not an objective" if metric in trial_metrics.METRICS else "unknown"
            hint = did_you_mean(metric, trial_metrics.OBJECTIVES)
            raise ValueError(f"metric {metric!r} is {what} (valid: {', '.join(trial_metrics.OBJECTIVES)}){hint}")
        return metric


class Constraints(_Strict):
    max_latency_ms: float | None = Field(None, gt=0, le=1e6)
    max_params: int | None = Field(None, gt=0, le=10**12)


MAX_SECONDS = 10**7  # about 116 days: any longer time is a typo, and a timedelta past it can overflow


class Budget(_Strict):
    max_trials: int = Field(10, ge=1, le=10000)
    max_concurrent: int = Field(2, ge=1, le=256)
    timeout_s: float | None = Field(None, gt=0, le=MAX_SECONDS)
    max_retries: int = Field(1, ge=0, le=10)
    # A trial silent this long (no epoch reported) is stopped and retried; None never stops one.
    trial_stall_s: float | None = Field(3600, gt=0, le=MAX_SECONDS)
    target_timeout_s: float = Field(
        600, gt=0, le=MAX_SECONDS,
        description="on an agent target: how long a trained trial waits for an agent's measurement before it fails",
    )
    max_simulated_s: float | None = Field(
        None, gt=0, le=1e9,
        description="stop proposing trials once the finished trials' train_time_s add up to this; on a tabular "
                    "dataset (nasbench201) that is the table's simulated training time, as papers budget searches",
    )


MAX_TRIAL_CPUS = 256
MAX_TRIAL_GPUS = 16


class TrialResources(_Strict):
    """What one trial asks Ray for; a trial starts on a node with all of it free."""

    cpus: float = Field(
        1, gt=0, le=MAX_TRIAL_CPUS,
        description="CPUs per trial; a fraction packs more trials onto a node's CPUs (Ray's num_cpus)",
    )  # fmt: skip
    gpus: float = Field(
        0, ge=0, le=MAX_TRIAL_GPUS,
        description="GPUs per trial (Ray's num_gpus): 0 trains on the CPU; a fraction below 1 shares one GPU among "
        "small trials (0.25: four at once); above 1 a whole number, of which the trial trains on one",
        json_schema_extra={"anyOf": [{"type": "number", "minimum": 0, "maximum": 1},
                                     {"type": "integer", "minimum": 1, "maximum": MAX_TRIAL_GPUS}]},
    )  # fmt: skip

    @field_validator("gpus")
    @classmethod
    def _whole_above_one(cls, gpus: float) -> float:
        if gpus > 1 and not gpus.is_integer():
            raise ValueError(f"gpus {gpus:g}: above 1, a trial takes whole GPUs (Ray shares only a fraction of one)")
        return gpus


class JobSpec(_Strict):
    """What a user submits: a search over a space, with a strategy, data and a budget."""

    name: str = Field(
        "search", min_length=1, max_length=200, description="printable: no control or bidi characters",
        json_schema_extra={"pattern": printable_pattern()},
    )
    search_space: SearchSpaceRef
    strategy: StrategyRef = Field(default_factory=lambda: StrategyRef(name="random"))
    dataset: DatasetRef
    sparsifier: SparsifierRef = Field(default_factory=lambda: SparsifierRef(name="magnitude"))
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="accuracy", direction="maximize")], min_length=1, max_length=4
    )
    target: str = Field(
        "cpu", description="where latency is measured: the server's cpu (or cuda), or one of your agent targets (GET /targets)"
    )
    target_runtime: str | None = Field(
        None,
        description="on an agent target: the runtime its agents time trials with (torch, onnxruntime, torch-cuda, "
        "onnxruntime-cuda); default: the first of these its agents offer",
        json_schema_extra={"enum": [*RUNTIMES, None]},
    )
    constraints: Constraints = Field(default_factory=Constraints)
    budget: Budget = Field(default_factory=Budget)
    resources: TrialResources = Field(
        default_factory=TrialResources,
        description="CPUs and GPUs one trial takes on the Ray cluster; refused when no node of the cluster has them",
    )
    early_stopping: EarlyStoppingRef | None = Field(None, description="a rule that stops unpromising trials early; null runs every trial to its last epoch")
    seed: int = Field(0, ge=0, lt=2**31)

    @field_validator("name")
    @classmethod
    def _printable_name(cls, name: str) -> str:
        return check_printable(name)

    @field_validator("target")
    @classmethod
    def _known_target(cls, target: str) -> str:
        from nas.timing.targets import all_targets, available_targets  # imports torch, as the runner does anyway

        present = available_targets()
        if target in all_targets():
            if target not in present:
                raise ValueError(f"target {target!r} is not present on this server; valid: {', '.join(present)}")
            return target
        if not re.fullmatch(TARGET_PATTERN, target):
            raise ValueError(f"unknown target {target!r}; valid: {', '.join(present)} or one of your agent targets")
        catalog = current_target_catalog()
        if catalog is not None:  # the API knows the submitter's targets; elsewhere the spec was checked already
            try:
                catalog.runtimes(target)
            except UnknownTarget as exc:
                raise PydanticCustomError("target_unknown", "{reason}", {"reason": str(exc)}) from None
        return target

    @model_validator(mode="after")
    def _agent_runtime(self) -> JobSpec:
        """An agent target's runtime: one its agents offer, chosen at submission where none is named."""
        from nas.timing.targets import all_targets

        if self.target in all_targets():
            if self.target_runtime is not None:
                raise self._invalid([("target_runtime_incompatible", ("target_runtime",),
                                      f"target_runtime is for agent targets; {self.target!r} is the server's own")])
            return self
        if self.target_runtime is not None and self.target_runtime not in RUNTIMES:
            raise self._invalid([("target_runtime_unknown", ("target_runtime",),
                                  f"unknown target_runtime {self.target_runtime!r}; valid: {', '.join(RUNTIMES)}")])
        catalog = current_target_catalog()
        if catalog is None:  # a spec the API checked already (the runner, a worker)
            return self
        try:
            offered = catalog.runtimes(self.target)
        except UnknownTarget:
            return self  # refused by the target's own check, at its field
        if self.target_runtime is None:
            if not offered:
                raise self._invalid([("target_runtime_incompatible", ("target_runtime",),
                                      f"no agent of target {self.target!r} has registered yet: start `nas agent` on "
                                      "the device, or name target_runtime")])  # fmt: skip
            self.target_runtime = offered[0]
        return self

    @model_validator(mode="after")
    def _mixed_precision_on_gpu(self) -> JobSpec:
        if self.training.mixed_precision and self.resources.gpus == 0:
            raise self._invalid([("mixed_precision_incompatible", ("training", "mixed_precision"),
                                  "mixed_precision trains in float16 on a GPU: set resources.gpus (a trial on the "
                                  "CPU would only train slower)")])  # fmt: skip
        return self

    @field_validator("objectives")
    @classmethod
    def _distinct_objectives(cls, objectives: list[Objective]) -> list[Objective]:
        metrics = [o.metric for o in objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objectives repeat a metric: {metrics}")
        return objectives

    @model_validator(mode="after")
    def _plugins_fit_together(self) -> JobSpec:
        """Refuse at submission a job whose plug-ins cannot run together, naming where.

        Asks the sparsifier about the space's ``weight_specs`` for the dataset's shape (a space
        that offers none is not checked), the strategy's ``check_spec`` and the early-stopping rule's
        ``check``. Builds no model and imports no torch.
        """
        problems: list[tuple[str, tuple[str | int, ...], str]] = []  # (error type, location, message)
        space = registry.search_spaces.create(self.search_space.name, self.search_space.params)
        try:
            dataset = registry.datasets.create(self.dataset.name, self.dataset.params)
            shape = dataset.shape()
        except UnknownDataset as exc:  # the same answer for an id never stored and another owner's
            raise self._invalid([("dataset_unknown", ("dataset", "params", "id"), str(exc))]) from None
        problems += [("dataset_incompatible", loc, text) for loc, text in dataset.check_spec(self)]
        unfit = space.fit_problems(*shape)
        problems += [("search_space_incompatible", ("search_space", "params", *loc), text) for loc, text in unfit]
        try:
            weights = space.weight_specs(*shape) if not unfit else []
        except ValueError as exc:  # the space cannot take this dataset's inputs
            weights = []
            problems.append(("dataset_incompatible", ("dataset", "name"), str(exc)))
        if weights is not None:
            sparsifier = registry.sparsifiers.create(self.sparsifier.name, self.sparsifier.params)
            problems += [("sparsifier_incompatible", ("sparsifier", *loc), text) for loc, text in sparsifier.check(weights)]
        if self.constraints.max_params is not None and not problems:
            least = space.min_params(*shape)
            if self.constraints.max_params < least:
                problems.append(
                    ("constraint_impossible", ("constraints", "max_params"), f"no architecture of the space has at most {self.constraints.max_params} parameters (the smallest has {least})")
                )
        strategy = registry.strategies.get(self.strategy.name)
        strategy_params = strategy.Params.model_validate(self.strategy.params)
        problems += [("strategy_incompatible", loc, text) for loc, text in strategy.check_spec(strategy_params, self)]
        if self.early_stopping is not None:
            rule = registry.early_stopping.create(self.early_stopping.name, self.early_stopping.params)
            problems += [("early_stopping_incompatible", loc, text) for loc, text in rule.check(self)]
        if problems:
            raise self._invalid(problems)
        return self

    def _invalid(self, problems: list[tuple[str, tuple[str | int, ...], str]]) -> ValidationError:
        """The ``(error type, location, message)`` problems as one validation error."""
        return ValidationError.from_exception_data(
            type(self).__name__,
            [
                InitErrorDetails(
                    # the message goes in through the context: a template would read its braces as fields
                    type=PydanticCustomError(error_type, "{reason}", {"reason": message}),
                    loc=loc,
                    input=getattr(self, str(loc[0]), None) if loc else None,
                )
                for error_type, loc, message in problems
            ],
        )


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class TrialState(str, enum.Enum):
    queued = "queued"
    running = "running"
    complete = "complete"
    pruned = "pruned"
    failed = "failed"
    infeasible = "infeasible"
    cancelled = "cancelled"  # its job was cancelled before it ended; it never starts after that

    @property
    def finished(self) -> bool:
        return self not in (TrialState.queued, TrialState.running)


class JobOutline(BaseModel):
    """What lists show of a job's spec: its plug-ins' names, objectives and trial budget, a few
    hundred bytes whatever the spec's size."""

    search_space: str
    strategy: str
    sparsifier: str
    dataset: str
    objectives: list[dict[str, str]] = Field(description="[{metric, direction}] as in the spec")
    max_trials: int

    @classmethod
    def of(cls, spec: dict[str, Any]) -> JobOutline:
        """The outline of a stored (validated, defaults filled) spec."""
        return cls(
            search_space=spec["search_space"]["name"], strategy=spec["strategy"]["name"],
            sparsifier=spec["sparsifier"]["name"], dataset=spec["dataset"]["name"],
            objectives=spec["objectives"], max_trials=spec["budget"]["max_trials"],
        )  # fmt: skip


class JobSummary(BaseModel):
    """A job as lists and event streams return it: without its spec, which ``GET /jobs/{id}`` returns."""

    id: str
    name: str
    owner: str
    status: JobStatus
    outline: JobOutline
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    n_trials: int = 0
    n_complete: int = 0
    n_finished: int = Field(0, description="trials in a final state (complete, pruned, failed, infeasible, cancelled)")
    best_trial_id: str | None = None
    error: str | None = None


MAX_ANNOTATION = 10_000
"""The longest note, in characters, and the largest user attributes, in bytes of JSON, a job or trial keeps."""

JsonScalar = str | int | float | bool
UserAttrs = dict[str, JsonScalar]


class Annotation(_Strict):
    """What a researcher writes on a job or trial: a note, and attributes merged into those it has.

    ``note`` replaces the note (``null`` or ``""`` clears it); ``user_attrs`` sets each key given and
    removes each key given as ``null`` (a JSON merge patch), so two people can add keys side by side.
    """

    note: str | None = Field(
        None, max_length=MAX_ANNOTATION, description="free text; newlines and tabs allowed, other control characters not",
        json_schema_extra={"anyOf": [{"type": "string", "maxLength": MAX_ANNOTATION, "pattern": printable_pattern("\t\n")},
                                     {"type": "null"}]},
    )
    user_attrs: dict[str, JsonScalar | None] | None = Field(
        None, description="key -> string, number or boolean; null removes the key", max_length=256,
        json_schema_extra={"anyOf": [{
            "type": "object", "maxProperties": 256,
            "propertyNames": {"minLength": 1, "maxLength": 100, "pattern": printable_pattern()},
            "additionalProperties": {"anyOf": [{"type": "string", "pattern": printable_pattern()},
                                               {"type": ["number", "boolean", "null"]}]},
        }, {"type": "null"}]},
    )  # fmt: skip

    @field_validator("note")
    @classmethod
    def _printable_note(cls, note: str | None) -> str | None:
        if note is not None:
            check_printable(note.replace("\n", " ").replace("\t", " "))
        return note

    @field_validator("user_attrs")
    @classmethod
    def _printable_attrs(cls, attrs: dict[str, JsonScalar | None] | None) -> dict[str, JsonScalar | None] | None:
        for key, value in (attrs or {}).items():
            if not 0 < len(key) <= 100:
                raise ValueError(f"attribute name {key[:100]!r} must have 1 to 100 characters")
            check_printable(key)
            if isinstance(value, str):
                check_printable(value)
        return attrs


def merged_attrs(current: UserAttrs, change: dict[str, JsonScalar | None]) -> UserAttrs:
    """``current`` with ``change`` applied; ``ValueError`` when the result passes :data:`MAX_ANNOTATION` bytes."""
    attrs = {**current, **change}
    attrs = {key: value for key, value in attrs.items() if value is not None}
    size = len(json.dumps(attrs, separators=(",", ":")).encode())
    if size > MAX_ANNOTATION:
        raise ValueError(f"user_attrs would take {size} bytes of JSON; at most {MAX_ANNOTATION} are kept")
    return attrs


class Job(JobSummary):
    """A job as its own route returns it: with the spec."""

    spec: dict[str, Any] = Field(description="the validated JobSpec, every default filled in")
    note: str | None = Field(None, description="the owner's note (PATCH /jobs/{id})")
    user_attrs: UserAttrs = Field(default_factory=dict, description="the owner's attributes (PATCH /jobs/{id})")
    baseline: dict[str, float] = Field(
        default_factory=dict,
        description="a search over a given model (model_sparsity): the dense model's dense_accuracy and "
        "dense_latency_ms, measured once for the job and recorded on every trial; empty otherwise or before then",
    )


class LayerInfo(BaseModel):
    """One prunable weight of a trained model."""

    name: str = Field(description="the weight's state_dict name, e.g. fc0.weight")
    shape: list[int]
    density: float = Field(description="fraction of nonzero entries")
    pattern: str = Field(description="dense, unstructured, N:M (e.g. 2:4) or channel")
    kernel: str | None = Field(None, description="what the sparse inference model runs: dense, csr or shrunk")


class EpochMetrics(BaseModel):
    model_config = ConfigDict(extra="allow")

    epoch: int
    metrics: dict[str, float]


class Trial(BaseModel):
    """A trial as the API returns it; ``history`` and ``layers`` are filled on ``GET /trials/{id}``."""

    id: str
    job_id: str
    number: int
    state: TrialState
    arch: dict[str, Any]
    parent_id: str | None = None
    metrics: dict[str, float] = Field(
        default_factory=dict, description="final metrics (see the catalog's metrics); integer ones read as int"
    )
    layers: list[LayerInfo] = Field(default_factory=list)
    history: list[EpochMetrics] = Field(default_factory=list)
    node_id: str | None = None
    attempts: int = 0
    heartbeat_at: datetime | None = None
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = Field(None, description="last change of state, metrics or history")
    outputs: dict[str, Any] = Field(
        default_factory=dict, description="strategy-specific results, e.g. the cell a DASS search derived"
    )
    has_model: bool = False
    has_log: bool = Field(False, description="a log is stored for the trial: GET /trials/{id}/log")
    note: str | None = Field(None, description="the owner's note (PATCH /trials/{id})")
    user_attrs: UserAttrs = Field(default_factory=dict, description="the owner's attributes (PATCH /trials/{id})")

    @field_validator("metrics")
    @classmethod
    def _typed_metrics(cls, metrics: dict[str, float]) -> dict[str, float]:
        return trial_metrics.typed(metrics)


class Page(BaseModel):
    items: list[Any]
    next_cursor: str | None = None


class DatasetOptions(BaseModel):
    """How an uploaded file became arrays (their ranges are checked where it is read, :mod:`nas.data.ingest`)."""

    label_column: str | None = Field(None, description="CSV and Parquet: the column of class labels")
    image_size: int = Field(32, description="image archives: the side, in pixels, every image was resized to")
    color: str = Field("rgb", description="image archives: grayscale (one channel) or rgb (three)")
    test_fraction: float = Field(0.2, description="held out for testing when the file had no test split")
    split_seed: int = Field(0, description="seed of the stratified split made once at upload")


class DatasetRecord(BaseModel):
    """A stored dataset: uploaded, or registered by a path under the server's data roots.

    A job names it as ``dataset: {name: upload, params: {id: ...}}``; its split is made once, so
    every trial of every job sees the same one.
    """

    model_config = ConfigDict(title="Dataset")

    id: str
    name: str
    owner: str
    format: Literal["npz", "csv", "parquet", "images"]
    source: Literal["upload", "path"] = Field(description="uploaded, or read where it lies by path")
    path: str | None = Field(None, description="the file a path dataset is read from; null for uploads")
    input_shape: list[int] = Field(description="one example's shape: (features,) of a table, (channels, height, width) of images")
    num_classes: int
    class_names: list[str]
    class_counts: dict[str, list[int]] = Field(description="examples per class in each split: {train, test}")
    n_train: int
    n_test: int
    size_bytes: int = Field(description="of the uploaded or registered file")
    stored_bytes: int = Field(description="what the server keeps of it; counts towards the owner's quota")
    sha256: str = Field(description="of the uploaded or registered file")
    options: DatasetOptions
    test_given: bool = Field(description="the file carried its own test split; else a stratified split was made")
    summary: dict[str, Any] = Field(description="tables: per-column statistics; images: per-channel mean and std")
    created_at: datetime


class ModelRecord(BaseModel):
    """A stored model: a user's trained network uploaded as ONNX, checked and summarised once at upload.

    A job names it as ``search_space: {name: model_sparsity, params: {model_id: ...}}``; the
    file never changes, so every trial of every job starts from the same pretrained weights.
    """

    model_config = ConfigDict(title="Model")

    id: str
    name: str
    owner: str
    input_shape: list[int] = Field(description="one example's shape, without the batch: (features,) or (channels, height, width)")
    num_outputs: int = Field(description="values the output holds per example (a classifier's class count)")
    params: int = Field(description="parameters of the converted network")
    layers: list[dict[str, Any]] = Field(description="prunable weights: {name, kind, shape, params} each")
    opset: int = Field(description="the file's default-domain opset")
    producer: str = Field(description="the exporter the file names")
    size_bytes: int = Field(description="of the uploaded ONNX file; counts towards the owner's quota")
    sha256: str = Field(description="of the uploaded ONNX file")
    dense_latency_ms: dict[str, float] = Field(
        description="the dense network's measured latency on each of the server's targets (10th percentile, ms)"
    )
    created_at: datetime
