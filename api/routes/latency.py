"""``POST /latency/predict``: the latency predictor over HTTP, for an architecture or a layer list.

The body names a ``target`` (``cpu``, or ``cuda`` where a GPU is present) and either

* ``architecture``: ``{search_space: {name, params}, arch: {...}, dataset: {name, params}}``, built
  with the search space as a trial would build it (the dataset gives the input shape and classes);
  the space's own per-layer sparsity for the architecture applies unless ``densities`` is given; or
* ``layers`` with ``input_shape``: a plain stack such as
  ``[{"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1, "density": 0.1},
  {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"},
  {"type": "linear", "out_features": 10}]``; input sizes follow from the previous layer.

``densities`` (one number, or weight name -> nonzero fraction) and ``pattern`` predict sparse
models whose masks are not made yet. The answer holds ``latency_ms``, the per-layer breakdown with
the kernel each sparse layer is predicted to run, the target's identity and the predictor used.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from api.deps import PrincipalDep, SettingsDep
from api.responses import ErrorDetail, errors
from api.workpool import WorkError, work_pool
from nas.data.stored import UnknownDataset
from nas.settings import Settings
from nas.specs import DatasetRef, SearchSpaceRef

router = APIRouter(tags=["latency"])
MAX_LAYERS = 256
MAX_ACTIVATION = 1 << 24  # values in one example's input or any layer's output (64 MiB in fp32)


class _Strict(BaseModel):
    # Exactly the documented JSON types: a `bias` of 0 or "false" is refused, not read as a boolean.
    model_config = ConfigDict(extra="forbid", strict=True)


class Architecture(_Strict):
    search_space: SearchSpaceRef
    arch: dict[str, Any]
    dataset: DatasetRef


class LinearSpec(_Strict):
    type: Literal["linear"]
    out_features: int = Field(ge=1, le=1 << 16)
    bias: bool = True
    density: float = Field(1.0, gt=0, le=1)


class Conv2dSpec(_Strict):
    type: Literal["conv2d"]
    out_channels: int = Field(ge=1, le=1 << 14)
    kernel_size: int = Field(ge=1, le=15)
    stride: int = Field(1, ge=1, le=8)
    padding: int = Field(0, ge=0, le=16)
    groups: int = Field(1, ge=1)
    bias: bool = True
    density: float = Field(1.0, gt=0, le=1)


class RecurrentSpec(_Strict):
    """An RNN over ``(batch, steps, features)``; ``output`` "sequence" keeps every step, "last" only the last."""

    type: Literal["lstm", "gru", "rnn"]
    hidden_size: int = Field(ge=1, le=1 << 13)
    num_layers: int = Field(1, ge=1, le=8)
    bidirectional: bool = False
    output: Literal["sequence", "last"] = "sequence"


class PoolSpec(_Strict):
    type: Literal["maxpool2d", "avgpool2d"]
    kernel_size: int = Field(ge=1, le=16)
    stride: int | None = Field(None, ge=1, le=16)


class AdaptivePoolSpec(_Strict):
    type: Literal["adaptive_avgpool2d", "adaptive_maxpool2d"]
    output_size: int = Field(1, ge=1, le=64)


class SimpleSpec(_Strict):
    type: Literal[
        "relu", "relu6", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "hardswish", "softmax", "flatten",
        "dropout", "identity", "batchnorm", "layernorm",
    ]  # fmt: skip


LayerSpec = Annotated[
    Union[LinearSpec, Conv2dSpec, RecurrentSpec, PoolSpec, AdaptivePoolSpec, SimpleSpec], Field(discriminator="type")
]


class PredictRequest(_Strict):
    target: str = "cpu"
    batch_size: int = Field(1, ge=1, le=4096)
    num_threads: int = Field(1, ge=1, le=256)
    architecture: Architecture | None = None
    layers: list[LayerSpec] | None = Field(None, min_length=1, max_length=MAX_LAYERS)
    input_shape: list[Annotated[int, Field(ge=1, le=1 << 16)]] | None = Field(None, min_length=1, max_length=4)
    densities: float | dict[str, Annotated[float, Field(gt=0, le=1)]] | None = None
    pattern: Literal["unstructured", "nm", "channel"] = "unstructured"

    @model_validator(mode="after")
    def _one_model(self) -> PredictRequest:
        if (self.architecture is None) == (self.layers is None):
            raise ValueError("give either 'architecture' or 'layers' (with 'input_shape'), not both or neither")
        if self.layers is not None and self.input_shape is None:
            raise ValueError("'layers' needs 'input_shape' (one example, without the batch dimension)")
        if isinstance(self.densities, float) and not 0 < self.densities <= 1:
            raise ValueError("'densities' must be in (0, 1]")
        return self


class LayerLatency(BaseModel):
    name: str
    kind: str
    kernel: str
    ms: float


class PredictResponse(BaseModel):
    latency_ms: float
    sum_ms: float
    input_shape: list[int]
    params: int
    layers: list[LayerLatency]
    target: dict[str, Any]
    predictor: dict[str, Any]


def _unprocessable(location: tuple[str | int, ...], message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": ["body", *location], "msg": message, "type": "value_error"}]
    )


def dataset_shape(ref: Architecture) -> tuple[tuple[int, ...], int]:
    """``(input shape, classes)`` of the architecture's dataset, read here in the API process (a
    stored dataset's from the store, through the request's catalog); 422 for one the caller has not."""
    from nas import registry

    try:
        return registry.datasets.create(ref.dataset.name, ref.dataset.params).shape()
    except UnknownDataset as exc:
        raise _unprocessable(("architecture", "dataset", "params", "id"), str(exc)) from None


def check_budget(body: PredictRequest, settings: Settings) -> tuple[tuple[int, ...], int] | None:
    """422 naming the limit for a request whose work exceeds this server's budget, before any work;
    the dataset's shape for an architecture.

    The budget counts the largest tensor the prediction's forward pass holds (batch included:
    ``batch_size ×`` the values of one example's input or of any layer's output) and, for
    recurrent layers, ``batch_size × steps × layers × directions`` summed over them. A layer list
    is checked in full on the meta device (no memory, no compute); an architecture by its input
    (its size is bounded by the search space and ``NAS_LIMIT_PARAMS``).
    """
    if body.layers is not None:
        import torch

        with torch.device("meta"):
            _, _, params, largest, steps = _stack(body.layers, tuple(body.input_shape or ()))
        if params > settings.limit_params:
            raise _unprocessable(("layers",), f"the layers have {params} parameters, over this server's limit of "
                                              f"{settings.limit_params} (NAS_LIMIT_PARAMS)")  # fmt: skip
        where: tuple[str, ...] = ("layers",)
        shape = None
    else:
        assert body.architecture is not None
        shape = dataset_shape(body.architecture)
        largest, steps, where = math.prod(shape[0]), 0, ("architecture", "dataset")
    elements = body.batch_size * largest
    if elements > settings.limit_predict_elements:
        raise _unprocessable(("batch_size",) if body.batch_size > 1 else where,
                             f"batch_size × {largest} values in the largest tensor = {elements}, over this server's "
                             f"limit of {settings.limit_predict_elements} (NAS_LIMIT_PREDICT_ELEMENTS)")  # fmt: skip
    recurrent = body.batch_size * steps
    if recurrent > settings.limit_predict_recurrent_steps:
        raise _unprocessable(where, f"batch_size × steps × layers × directions of the recurrent layers = "
                                    f"{recurrent}, over this server's limit of "
                                    f"{settings.limit_predict_recurrent_steps} (NAS_LIMIT_PREDICT_RECURRENT_STEPS)")
    return shape


def warm_up() -> None:
    """The meta device's first use imports PyTorch's meta kernels, seconds of work; done once in
    the background when the app starts, so that the first budget check answers at once."""
    import torch

    with torch.device("meta"), torch.no_grad():
        torch.nn.Linear(2, 2)(torch.zeros(1, 2))


def _build_layers(specs: list[Any], input_shape: tuple[int, ...]) -> tuple[Any, dict[str, float]]:
    """An ``nn.Sequential`` of the specs and the densities they ask for (checked by :func:`check_budget`)."""
    model, densities, *_ = _stack(specs, input_shape)
    return model.eval(), densities


def _stack(specs: list[Any], input_shape: tuple[int, ...]) -> tuple[Any, dict[str, float], int, int, int]:
    """The stack, its densities, parameters, the most values in one example's tensor, and recurrent steps."""
    import torch
    from torch import nn

    shape = (1, *input_shape)
    if math.prod(input_shape) > MAX_ACTIVATION:
        raise _unprocessable(("input_shape",), f"{math.prod(input_shape)} values per example, over {MAX_ACTIVATION}")
    modules: list[nn.Module] = []
    densities: dict[str, float] = {}
    largest, steps = math.prod(input_shape), 0
    for i, spec in enumerate(specs):
        try:
            module = _module(spec, shape)
            modules.append(module)
            if isinstance(spec, RecurrentSpec):  # its shape is known; running it (even on "meta") is what costs
                directions = 2 if spec.bidirectional else 1
                steps += shape[1] * spec.num_layers * directions
                width = spec.hidden_size * directions
                out_shape = (1, shape[1], width) if spec.output == "sequence" else (1, width)
            else:
                with torch.no_grad():
                    out_shape = tuple(module(torch.zeros(shape)).shape)
        except HTTPException:
            raise
        except (RuntimeError, ValueError, IndexError) as exc:
            raise _unprocessable(("layers", i), f"{spec.type} cannot take input of shape {list(shape[1:])}: {exc}")
        shape = out_shape
        values = math.prod(shape[1:])
        largest = max(largest, values)
        if values > MAX_ACTIVATION:
            raise _unprocessable(("layers", i), f"{spec.type} outputs {values} values per example, over "
                                                f"{MAX_ACTIVATION}")  # fmt: skip
        if getattr(spec, "density", 1.0) < 1.0:
            densities[f"{i}.weight"] = spec.density
    model = nn.Sequential(*modules)
    return model, densities, sum(p.numel() for p in model.parameters()), largest, steps


class _Recurrent:
    """Builds the module that runs an RNN and keeps its output (every step, or the last)."""

    @staticmethod
    def make(spec: RecurrentSpec, features: int) -> Any:
        from torch import nn

        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[spec.type]

        class RecurrentLayer(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = cls(features, spec.hidden_size, spec.num_layers, batch_first=True,
                               bidirectional=spec.bidirectional)  # fmt: skip

            def forward(self, x: Any) -> Any:
                out = self.rnn(x)[0]
                return out[:, -1] if spec.output == "last" else out

        return RecurrentLayer()


def _module(spec: Any, shape: tuple[int, ...]) -> Any:
    from torch import nn

    channels = shape[1] if len(shape) > 1 else 1
    if spec.type == "linear":
        return nn.Linear(shape[-1], spec.out_features, bias=spec.bias)
    if spec.type == "conv2d":
        if len(shape) != 4:
            raise ValueError("conv2d needs (channels, height, width) inputs")
        if channels % spec.groups or spec.out_channels % spec.groups:
            raise ValueError(f"groups={spec.groups} must divide {channels} input and {spec.out_channels} output channels")
        return nn.Conv2d(channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                         groups=spec.groups, bias=spec.bias)  # fmt: skip
    if spec.type in ("lstm", "gru", "rnn"):
        if len(shape) != 3:
            raise ValueError(f"{spec.type} needs (steps, features) inputs")
        return _Recurrent.make(spec, shape[-1])
    if spec.type in ("maxpool2d", "avgpool2d"):
        cls = nn.MaxPool2d if spec.type == "maxpool2d" else nn.AvgPool2d
        return cls(spec.kernel_size, spec.stride)
    if spec.type in ("adaptive_avgpool2d", "adaptive_maxpool2d"):
        cls = nn.AdaptiveAvgPool2d if spec.type == "adaptive_avgpool2d" else nn.AdaptiveMaxPool2d
        return cls(spec.output_size)
    if spec.type == "batchnorm":
        if len(shape) not in (2, 3, 4):
            raise ValueError("batchnorm needs (features,), (channels, length) or (channels, height, width) inputs")
        return nn.BatchNorm2d(channels) if len(shape) == 4 else nn.BatchNorm1d(channels)
    if spec.type == "layernorm":
        return nn.LayerNorm(shape[-1])
    simple = {
        "relu": nn.ReLU, "relu6": nn.ReLU6, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
        "leaky_relu": nn.LeakyReLU, "hardswish": nn.Hardswish, "flatten": nn.Flatten, "dropout": nn.Dropout,
        "identity": nn.Identity,
    }  # fmt: skip
    if spec.type == "softmax":
        return nn.Softmax(dim=-1)
    return simple[spec.type]()


def _architecture(
    body: PredictRequest, limit_params: int, shape: tuple[tuple[int, ...], int]
) -> tuple[Any, tuple[int, ...], Any]:
    """The space's model for the architecture on inputs of ``shape``, its input shape and its
    densities (space's own, or the body's)."""
    from nas import registry

    ref = body.architecture
    space = registry.search_spaces.create(ref.search_space.name, ref.search_space.params)
    input_shape, num_classes = shape
    try:
        model = space.build(ref.arch, input_shape, num_classes)
    except (KeyError, ValueError, TypeError) as exc:
        raise _unprocessable(("architecture", "arch"), f"not an architecture of {ref.search_space.name}: {exc}")
    params = sum(p.numel() for p in model.parameters())
    if params > limit_params:
        raise _unprocessable(("architecture", "arch"), f"{params} parameters, over this server's limit of {limit_params}")
    densities = body.densities
    if densities is None:
        sparsity = space.layer_sparsity(ref.arch)
        if sparsity:
            densities = {name: 1.0 - value for name, value in sparsity.items() if value < 1.0}
            densities = {name: value for name, value in densities.items() if value < 1.0} or None
    return model.eval(), tuple(input_shape), densities


_NO_PREDICTOR = {503: {"model": ErrorDetail, "description": "no latency predictor is calibrated for the target, "
                                                           "or the server is busy (Retry-After)"}}


@router.post("/latency/predict", response_model=PredictResponse, responses={**errors(422), **_NO_PREDICTOR})
async def predict_latency(
    request: Request, body: PredictRequest, principal: PrincipalDep, settings: SettingsDep
) -> dict[str, Any]:
    """Predicted latency (ms) of an architecture or a layer list on a target; nothing is trained or timed.

    The request's work is checked against this server's budget first (422 naming the limit); the
    prediction then runs in a worker process (see :mod:`api.workpool`): 429 when the owner has too
    many expensive requests running, 503 with ``Retry-After`` when the server is busy or the
    prediction runs past its time limit.
    """
    shape = await run_in_threadpool(check_budget, body, settings)  # shapes on the meta device: milliseconds
    return await work_pool(request).run(principal.owner, predict_in_worker, body.model_dump(mode="json"),
                                        settings.limit_params, shape)  # fmt: skip


def predict_in_worker(
    body_json: dict[str, Any], limit_params: int, shape: tuple[tuple[int, ...], int] | None
) -> dict[str, Any] | WorkError:
    """The prediction, in a worker process: the answer, or the HTTP error to answer with.
    ``shape`` is the architecture's dataset's, which the API process read (a worker knows no
    stored datasets)."""
    try:
        return _predict(PredictRequest.model_validate(body_json), limit_params, shape)
    except HTTPException as exc:
        return WorkError(exc.status_code, exc.detail)


def _predict(body: PredictRequest, limit_params: int, shape: tuple[tuple[int, ...], int] | None) -> dict[str, Any]:
    from nas.latency import NoPredictor, TargetUnavailable, UnsupportedLayer, predict_details

    if body.layers is not None:
        input_shape = tuple(body.input_shape or ())
        model, densities = _build_layers(body.layers, input_shape)
        if body.densities is not None:
            densities = body.densities
    else:
        assert shape is not None
        model, input_shape, densities = _architecture(body, limit_params, shape)
    try:
        details = predict_details(
            model, input_shape, body.target, densities or None, body.batch_size, num_threads=body.num_threads,
            pattern=body.pattern,
        )  # fmt: skip
    except TargetUnavailable as exc:
        raise _unprocessable(("target",), str(exc)) from None
    except UnsupportedLayer as exc:
        raise _unprocessable(("architecture",) if body.architecture else ("layers",), str(exc)) from None
    except NoPredictor as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    except ValueError as exc:  # densities naming weights the model lacks, ...
        raise _unprocessable(("densities",), str(exc)) from None
    if not math.isfinite(details["latency_ms"]):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the predictor gave no finite latency")
    return {
        "latency_ms": details["latency_ms"],
        "sum_ms": details["sum_ms"],
        "input_shape": list(input_shape),
        "params": sum(p.numel() for p in model.parameters()),
        "layers": details["layers"],
        "target": details["target"],
        "predictor": details["predictor"],
    }
