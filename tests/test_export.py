"""ONNX and safetensors export of trial models: every search space's models run in onnxruntime
as they do in torch, and the API exports ONNX on first request and keeps it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nas.client import Client, NotFoundError
from nas.errors import NotFound
from nas.specs import TrialState
from tests.sdk_server import SPEC, Server, complete_trial, model_bytes, store_model

# the fixtures `server`, `owner` and `key`

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

# Small members of every search space; conv, MobileNet, each recurrent cell, DARTS cells, the supernet.
MODELS: list[tuple[str, dict[str, Any]]] = [
    ("sparse_mlp", {}),
    ("sparse_cnn", {"families": ["conv"], "conv_batchnorm": True}),
    ("sparse_cnn", {"families": ["mobilenet"], "mobilenet_max_blocks": 2}),
    ("sparse_rnn", {"cell_choices": ["lstm"], "min_layers": 2, "max_layers": 2, "hidden_choices": [16]}),
    ("sparse_rnn", {"cell_choices": ["gru"], "max_layers": 1, "hidden_choices": [16]}),
    ("sparse_rnn", {"cell_choices": ["rnn_relu"], "max_layers": 1, "hidden_choices": [16]}),
    ("dass_darts", {"cells": 1, "nodes": 2, "channels": 4}),
    ("supernet", {"depth_choices": [1, 2]}),
]


@pytest.fixture(autouse=True)
def _one_thread(torch_single_thread: None) -> None:
    return None


def _torch_out(data: bytes, x: np.ndarray) -> np.ndarray:
    from nas.training import load_trained_model

    with torch.no_grad():
        return load_trained_model(data)(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(("space", "params"), MODELS, ids=[f"{s}-{i}" for i, (s, _) in enumerate(MODELS)])
def test_onnx_computes_what_the_torch_model_computes(space: str, params: dict[str, Any]) -> None:
    from nas.export import INPUT_NAME, OUTPUT_NAME, run_onnx, to_onnx
    from nas.sparse.serialization import read_metadata

    data = model_bytes(space, params, seed=3, density=0.6)
    exported = to_onnx(data)

    rng = np.random.default_rng(0)
    for batch in (1, 8):  # the batch dimension is dynamic
        x = rng.normal(size=(batch, 1, 8, 8)).astype(np.float32)
        want, got = _torch_out(data, x), run_onnx(exported, x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert (got.argmax(1) == want.argmax(1)).all()
    # Untrained conv nets answer nearly the same for every input: compare what does depend on
    # the input too, relative to its own size, so the check means something.
    want_c, got_c = want - want.mean(axis=0), got - got.mean(axis=0)
    scale = np.abs(want_c).max()
    assert scale > 1e-5
    np.testing.assert_allclose(got_c, want_c, rtol=0, atol=1e-2 * scale)

    proto = onnx.load_from_string(exported)
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == [INPUT_NAME] and [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # named, i.e. dynamic
    assert {p.key: p.value for p in proto.metadata_props} == read_metadata(data)

    # The masks are baked in: every pruned weight is a zero among the graph's constants.
    import safetensors.numpy

    tensors = safetensors.numpy.load(data)
    pruned = sum(int((~m).sum()) for k, m in tensors.items() if k.endswith("_mask"))
    zeros = sum(int((onnx.numpy_helper.to_array(t) == 0).sum()) for t in proto.graph.initializer)
    assert pruned > 0 and zeros >= pruned


def test_baking_keeps_the_function_and_drops_the_parametrizations() -> None:
    from torch.nn.utils import parametrize

    from nas.export import bake_parametrizations
    from nas.training import load_trained_model

    model = load_trained_model(model_bytes("sparse_cnn", {"families": ["conv"]}, seed=1))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
        baked = bake_parametrizations(model)
        after = baked(x)
    assert not any(parametrize.is_parametrized(m) for m in baked.modules())
    assert not any("parametrizations" in k for k in baked.state_dict())
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_safetensors_export_is_the_stored_file_with_weights_masks_and_metadata() -> None:
    import safetensors.numpy

    from nas.export import export_model

    data = model_bytes()
    assert export_model(data, "safetensors") == data
    tensors = safetensors.numpy.load(data)
    masks = {k.removesuffix("_mask"): v for k, v in tensors.items() if k.endswith("_mask")}
    assert masks and all(v.dtype == np.bool_ for v in masks.values())
    for name, mask in masks.items():
        assert tensors[name].shape == mask.shape and (tensors[name][~mask] == 0).all()
    assert any(k.endswith(".bias") for k in tensors)
    with open_header(data) as meta:
        assert set(meta) == {"search_space", "search_space_params", "arch", "dataset", "input_shape", "num_classes"}
        assert json.loads(meta["input_shape"]) == [1, 8, 8]

    with pytest.raises(ValueError, match="safetensors"):
        export_model(b"\x01", "safetensors")
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(data, "pickle")  # type: ignore[arg-type]


class open_header:
    """The string metadata of safetensors bytes, as any safetensors reader sees it."""

    def __init__(self, data: bytes) -> None:
        from nas.sparse.serialization import read_metadata

        self.meta = read_metadata(data)

    def __enter__(self) -> dict[str, str]:
        return self.meta

    def __exit__(self, *exc: object) -> None:
        return None


# -- the API -------------------------------------------------------------------------------------


@pytest.fixture
def client(server: Server, key: str) -> Iterator[Client]:
    with Client(url=server.url, api_key=key, backoff=0.01) as c:
        yield c


def test_api_exports_onnx_on_first_request_and_keeps_it(client: Client, server: Server, tmp_path: Path) -> None:
    from nas.export import run_onnx

    job = client.submit(SPEC)
    trial = complete_trial(server.store, job.id, accuracy=0.9)
    data = model_bytes("sparse_mlp", seed=5)
    store_model(server, trial, data)
    with pytest.raises(NotFound):
        server.store.get_artifact(trial.id, "model", "onnx")  # nothing exported yet

    first = client.download_model(trial.id, tmp_path / "a.onnx", format="onnx")
    artifact = server.store.get_artifact(trial.id, "model", "onnx")
    stored = server.settings.artifact_dir / artifact.path
    assert stored.read_bytes() == first.read_bytes() and artifact.size_bytes == first.stat().st_size
    x = np.random.default_rng(1).normal(size=(3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(first.read_bytes(), x), _torch_out(data, x), rtol=1e-4, atol=1e-5)

    mtime = stored.stat().st_mtime_ns
    second = client.download_model(trial.id, tmp_path / "b.onnx", format="onnx")
    assert second.read_bytes() == first.read_bytes() and stored.stat().st_mtime_ns == mtime  # served, not redone
    assert client.download_model(trial.id, tmp_path / "c.safetensors").read_bytes() == data


@pytest.mark.parametrize("state", [s for s in TrialState])
def test_api_says_why_a_trial_has_no_model(client: Client, server: Server, tmp_path: Path, state: TrialState) -> None:
    job = client.submit(SPEC)
    trial = server.store.create_trial(job.id, {"n": 1})
    if state not in (TrialState.queued, TrialState.infeasible):  # infeasible trials never start
        server.store.start_trial(trial.id)
    if state.finished:
        server.store.finish_trial(trial.id, state, error="out of memory" if state is TrialState.failed else None)
    reason = {
        TrialState.queued: "has not run yet",
        TrialState.running: "still running",
        TrialState.complete: "was not stored",
        TrialState.pruned: "early stopping pruned it",
        TrialState.failed: "it failed: out of memory",
        TrialState.infeasible: "infeasible",
    }[state]
    for format in ("safetensors", "onnx"):
        with pytest.raises(NotFoundError, match=f"trial {trial.id} has no model: .*{reason}"):
            client.download_model(trial.id, tmp_path, format=format)
    assert list(tmp_path.iterdir()) == []


def test_api_hides_other_owners_models(client: Client, server: Server, tmp_path: Path) -> None:
    stranger = server.store.create_api_key("stranger")
    with Client(url=server.url, api_key=stranger) as other:
        job = other.submit(SPEC)
    trial = complete_trial(server.store, job.id, accuracy=0.5)
    store_model(server, trial, model_bytes())
    for format in ("safetensors", "onnx"):
        with pytest.raises(NotFoundError, match="not found"):
            client.download_model(trial.id, tmp_path, format=format)
    with pytest.raises(NotFound):
        server.store.get_artifact(trial.id, "model", "onnx")  # and nothing was exported for them
