"""Export of trial models: every search space's sparse inference model runs in onnxruntime as in
torch; shrunk layers are smaller in ONNX, CSR layers dense and labelled so; the torch inference
file round-trips; the report says what each layer became; the API exports on first request, keeps
the files and records the ONNX latency."""

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

    # The pruning is baked in: no pruned weight came back (each is a stored zero, or gone with its unit).
    import safetensors.numpy

    tensors = safetensors.numpy.load(data)
    assert any(k.endswith("_mask") and (~m).any() for k, m in tensors.items())
    trained = sum(int(np.count_nonzero(t)) for k, t in tensors.items() if t.dtype == np.float32)
    floats = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer]
    assert sum(int(np.count_nonzero(t)) for t in floats if t.dtype == np.float32) <= trained


def test_safetensors_export_is_the_stored_file_with_weights_masks_and_metadata() -> None:
    import safetensors.numpy

    data = model_bytes()
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
        open_header(b"\x01")


class open_header:
    """The string metadata of safetensors bytes, as any safetensors reader sees it."""

    def __init__(self, data: bytes) -> None:
        from nas.sparse.serialization import read_metadata

        self.meta = read_metadata(data)

    def __enter__(self) -> dict[str, str]:
        return self.meta

    def __exit__(self, *exc: object) -> None:
        return None


def _channel_pruned(kept: int = 40, csr: bool = False) -> tuple[bytes, list[dict[str, Any]]]:
    """An MLP whose first layer keeps ``kept`` of its units (the rest masked whole), and its trial layer
    report: every layer ``dense``/``shrunk`` as the structure says, or ``fc1`` run as CSR when ``csr``."""
    from nas.sparse.masks import get_mask, prunable_weights, set_mask
    from nas.sparse.serialization import read_metadata, save_model
    from nas.training import load_trained_model

    data = model_bytes("sparse_mlp", seed=5, density=0.5)
    model = load_trained_model(data)
    module, attr = prunable_weights(model)["fc0.weight"]
    mask = get_mask(module, attr).clone()
    mask[kept:] = 0
    set_mask(module, attr, mask)
    layers = [
        {"name": name, "pattern": "channel" if name == "fc0.weight" else "unstructured",
         "kernel": "csr" if csr and name == "fc1.weight" else "dense"}
        for name in prunable_weights(model)
    ]  # fmt: skip
    return save_model(model, read_metadata(data)), layers


def _initializers(onnx_bytes: bytes) -> list[tuple[int, ...]]:
    return [tuple(t.dims) for t in onnx.load_from_string(onnx_bytes).graph.initializer]


def test_a_shrunk_model_exports_a_smaller_onnx_that_matches_torch() -> None:
    from nas.export import export_trial, run_onnx

    data, layers = _channel_pruned(kept=40)
    full, _ = _channel_pruned(kept=300)  # the same network with every unit kept
    exported = export_trial(data, layers, min_run_time=0.01)

    by_layer = {entry["layer"]: entry for entry in exported.report["layers"]}
    assert by_layer["fc0.weight"]["kernel"] == "shrunk" and by_layer["fc0.weight"]["inference_shape"] == [40, 64]
    assert by_layer["fc1.weight"]["inference_shape"][1] == 40  # the consumer lost the columns too
    assert (40, 64) in _initializers(exported.onnx) and (300, 64) not in _initializers(exported.onnx)
    assert len(exported.onnx) < 0.8 * len(export_trial(full, min_run_time=0.01).onnx)

    x = np.random.default_rng(2).normal(size=(5, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(exported.onnx, x), _torch_out(data, x), rtol=1e-4, atol=1e-5)


def test_a_csr_layer_is_dense_in_onnx_and_labelled_so() -> None:
    from nas.export import CSR_IN_ONNX, export_trial

    data, layers = _channel_pruned(kept=40, csr=True)
    exported = export_trial(data, layers, {"trial_id": "t1"}, min_run_time=0.01)
    report = exported.report

    assert report["onnx"]["dense_in_onnx"] == ["fc1.weight"]
    fc1 = next(entry for entry in report["layers"] if entry["layer"] == "fc1.weight")
    assert fc1["kernel"] == "csr" and fc1["onnx"] == CSR_IN_ONNX and "dense" in CSR_IN_ONNX
    shape = tuple(fc1["inference_shape"])
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load_from_string(exported.onnx).graph.initializer]
    stored = next(w for w in weights if w.shape == shape)  # the whole matrix is in the graph, zeros included
    assert 0 < np.count_nonzero(stored) < stored.size

    proto = onnx.load_from_string(exported.onnx)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["kernels"])["fc1.weight"] == "csr"
    assert json.loads(props["sparsity_report"]) == report
    assert float(props["onnx_latency_ms"]) == report["onnx"]["latency_ms"] > 0
    assert "dense" in proto.doc_string


def test_the_report_describes_every_layer_and_the_onnx_check() -> None:
    from nas.export import export_trial
    from nas.sparse.serialization import read_metadata

    data, layers = _channel_pruned(kept=40, csr=True)
    report = export_trial(data, layers, {"trial_id": "t1", "metrics": {"latency_ms": 0.5}}, min_run_time=0.01).report

    assert report["trial"] == {"trial_id": "t1", "metrics": {"latency_ms": 0.5}}
    assert [entry["layer"] for entry in report["layers"]] == [layer["name"] for layer in layers]
    tensors = safetensors_numpy().load(data)
    for entry in report["layers"]:
        assert set(entry) >= {"layer", "shape", "density", "pattern", "kernel", "inference_shape", "onnx"}
        weight = tensors[entry["layer"]]
        assert entry["shape"] == list(weight.shape)
        assert entry["density"] == pytest.approx(np.count_nonzero(weight) / weight.size)
        assert entry["nonzero"] == np.count_nonzero(weight)
    assert [e["pattern"] for e in report["layers"]][:2] == ["channel", "unstructured"]
    assert [e["kernel"] for e in report["layers"]][:2] == ["shrunk", "csr"]
    totals = report["totals"]
    assert totals["nonzero"] == sum(e["nonzero"] for e in report["layers"])
    assert totals["onnx_weights"] < totals["weights"]
    check = report["onnx"]
    assert 0 <= check["max_abs_difference"] <= check["atol"] + check["rtol"]
    assert check["latency_ms"] > 0 and check["torch_latency_ms"] > 0 and check["measured_on"]["threads"] == 1
    assert report["input_shape"] == json.loads(read_metadata(data)["input_shape"])


def safetensors_numpy() -> Any:
    import safetensors.numpy

    return safetensors.numpy


def test_an_onnx_file_that_differs_from_torch_is_an_error() -> None:
    from nas.export import ExportError, _checked, to_onnx
    from nas.sparse.inference import to_inference
    from nas.training import load_trained_model

    one, other = model_bytes("sparse_mlp", seed=1), model_bytes("sparse_mlp", seed=2)
    model = load_trained_model(other)
    inference, _ = to_inference(model, (1, 8, 8), kernels={name: "dense" for name in _names(model)})
    with pytest.raises(ExportError, match="differs from the torch inference model"):
        _checked(to_onnx(one), inference, (1, 8, 8))


def _names(model: Any) -> list[str]:
    from nas.sparse.masks import prunable_weights

    return list(prunable_weights(model))


@pytest.mark.parametrize(("space", "params"), [MODELS[0], MODELS[1], MODELS[3]], ids=["mlp", "conv", "lstm"])
def test_the_inference_file_loads_the_measured_model_without_code(space: str, params: dict[str, Any]) -> None:
    from nas.export import export_trial, load_inference_model
    from nas.sparse.csr import CSRConv2d, CSRLinear
    from nas.sparse.inference import to_inference
    from nas.sparse.inference_file import FORMAT
    from nas.training import load_trained_model

    data = model_bytes(space, params, seed=4, density=0.2)
    trained = load_trained_model(data)
    names = _names(trained)
    layers = [{"name": name, "kernel": "csr" if i % 2 == 0 else "dense"} for i, name in enumerate(names)]
    exported = export_trial(data, layers, min_run_time=0.01)
    measured, _ = to_inference(trained, (1, 8, 8), kernels={l["name"]: l["kernel"] for l in layers})

    loaded = load_inference_model(exported.inference)
    csr = [m for m in loaded.modules() if isinstance(m, (CSRLinear, CSRConv2d))]
    assert csr and len(csr) == sum(isinstance(m, (CSRLinear, CSRConv2d)) for m in measured.modules())
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), measured(x), rtol=0, atol=0)
    # Plain safetensors: any reader lists the CSR arrays and the JSON description.
    with _open(exported.inference) as f:
        keys, meta = set(f.keys()), f.metadata()
    assert any(k.endswith(".csr.values") for k in keys) and meta["format"] == FORMAT
    described = {e["path"] for e in json.loads(meta["modules"]) if e["csr"]}
    assert described == {n for n, m in measured.named_modules() if isinstance(m, (CSRLinear, CSRConv2d))}


class _open:
    """safetensors' reader over bytes (it opens files): the file written to a temporary path first."""

    def __init__(self, data: bytes) -> None:
        import tempfile

        self.file = tempfile.NamedTemporaryFile(suffix=".safetensors")
        self.file.write(data)
        self.file.flush()

    def __enter__(self) -> Any:
        import safetensors

        self.reader = safetensors.safe_open(self.file.name, "np")
        return self.reader.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.reader.__exit__(*exc)
        self.file.close()


def test_an_inference_file_that_does_not_fit_is_refused() -> None:
    import safetensors.torch

    from nas.export import export_trial, load_inference_model
    from nas.sparse.serialization import read_metadata

    data, layers = _channel_pruned(kept=40, csr=True)
    exported = export_trial(data, layers, min_run_time=0.01)
    with pytest.raises(ValueError, match="not a sparse-nas inference file"):
        load_inference_model(data)  # the masked training file
    tensors = safetensors.torch.load(exported.inference)
    meta = read_metadata(exported.inference)
    modules = json.loads(meta["modules"])
    modules[0]["config"]["out_features"] = 41
    tampered = safetensors.torch.save(tensors, metadata={**meta, "modules": json.dumps(modules)})
    with pytest.raises(ValueError, match="fc0.weight is \\[40, 64\\] in the file"):
        load_inference_model(tampered)


# -- the API -------------------------------------------------------------------------------------


@pytest.fixture
def client(server: Server, key: str) -> Iterator[Client]:
    with Client(url=server.url, api_key=key, backoff=0.01) as c:
        yield c


def test_api_exports_every_format_on_first_request_and_keeps_them(client: Client, server: Server, tmp_path: Path) -> None:
    from nas.export import load_inference_model, run_onnx
    from nas.specs import LayerInfo

    job = client.submit(SPEC)
    data, layers = _channel_pruned(kept=40, csr=True)
    trial = server.store.create_trial(job.id, {"n": 1})
    server.store.start_trial(trial.id)
    trial = server.store.finish_trial(
        trial.id, TrialState.complete, metrics={"accuracy": 0.9, "latency_ms": 0.05},
        layers=[LayerInfo(shape=[1], density=1.0, **layer) for layer in layers],
    )  # fmt: skip
    store_model(server, trial, data)
    with pytest.raises(NotFound):
        server.store.get_artifact(trial.id, "model", "inference.onnx")  # nothing exported yet

    first = client.download_model(trial.id, tmp_path, format="onnx")
    assert first.name == f"trial-{trial.id}.onnx"
    artifact = server.store.get_artifact(trial.id, "model", "inference.onnx")
    stored = server.settings.artifact_dir / artifact.path
    assert stored.read_bytes() == first.read_bytes() and artifact.size_bytes == first.stat().st_size
    x = np.random.default_rng(1).normal(size=(3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(first.read_bytes(), x), _torch_out(data, x), rtol=1e-4, atol=1e-5)
    metrics = client.trial(trial.id).metrics
    assert metrics["onnx_latency_ms"] > 0 and metrics["latency_ms"] == 0.05  # recorded beside the torch one

    mtime = stored.stat().st_mtime_ns
    inference = client.download_model(trial.id, tmp_path, format="inference")
    report_file = client.download_model(trial.id, tmp_path, format="report")
    assert stored.stat().st_mtime_ns == mtime  # made with the ONNX, served, not redone
    assert inference.name == f"trial-{trial.id}.inference.safetensors"
    assert report_file.name == f"trial-{trial.id}.report.json"
    with torch.no_grad():
        got = load_inference_model(inference)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _torch_out(data, x), rtol=1e-4, atol=1e-5)

    report = client.model_report(trial.id)
    assert report == json.loads(report_file.read_text())
    assert report["trial"]["trial_id"] == trial.id and report["trial"]["metrics"]["latency_ms"] == 0.05
    assert report["onnx"]["latency_ms"] == metrics["onnx_latency_ms"]
    assert {e["layer"]: e["kernel"] for e in report["layers"]}["fc1.weight"] == "csr"
    assert report["onnx"]["dense_in_onnx"] == ["fc1.weight"]
    assert client.download_model(trial.id, tmp_path / "m.safetensors").read_bytes() == data


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
        TrialState.cancelled: "its job was cancelled",
    }[state]
    for format in ("safetensors", "onnx", "inference", "report"):
        with pytest.raises(NotFoundError, match=f"trial {trial.id} has no model: .*{reason}"):
            client.download_model(trial.id, tmp_path, format=format)
    assert list(tmp_path.iterdir()) == []


def test_api_hides_other_owners_models(client: Client, server: Server, tmp_path: Path) -> None:
    stranger = server.store.create_api_key("stranger")
    with Client(url=server.url, api_key=stranger) as other:
        job = other.submit(SPEC)
    trial = complete_trial(server.store, job.id, accuracy=0.5)
    store_model(server, trial, model_bytes())
    for format in ("safetensors", "onnx", "inference", "report"):
        with pytest.raises(NotFoundError, match="not found"):
            client.download_model(trial.id, tmp_path, format=format)
    with pytest.raises(NotFound):
        server.store.get_artifact(trial.id, "model", "inference.onnx")  # and nothing was exported for them


def test_a_model_sparsity_trial_exports_and_loads_given_its_network(tmp_path: Path) -> None:
    """A trial over an uploaded model rebuilds from the uploaded ONNX: the export finds it through the
    process's model catalog (as the API's work processes install it), a torch user passes the network."""
    import random

    from nas import registry
    from nas.export import export_trial, load_inference_model
    from nas.models.stored import use_model_catalog
    from nas.sparse.masks import prunable_weights, set_mask
    from nas.sparse.serialization import save_model
    from tests.pretrained import node_catalog, onnx_bytes, table_mlp_module

    torch.manual_seed(0)
    catalog, (model_id,) = node_catalog(tmp_path, [onnx_bytes(table_mlp_module(), (24,))])
    use_model_catalog(catalog)
    try:
        space = registry.search_spaces.create("model_sparsity", {"model_id": model_id})
        arch = space.sample(random.Random(0))
        model = space.build(arch, (24,), 4)
        for module, attr in prunable_weights(model).values():
            set_mask(module, attr, torch.rand_like(getattr(module, attr)) < 0.2)
        meta = {"search_space": "model_sparsity", "search_space_params": json.dumps({"model_id": model_id}),
                "arch": json.dumps(arch), "dataset": "synthetic", "input_shape": "[24]", "num_classes": "4"}  # fmt: skip
        data = save_model(model.eval(), meta)
        layers = [{"name": name, "kernel": "csr" if name == "fc1.weight" else "dense"} for name in prunable_weights(model)]
        exported = export_trial(data, layers, min_run_time=0.01)
        network = space.build(arch, (24,), 4)
    finally:
        use_model_catalog(None)

    assert exported.report["onnx"]["dense_in_onnx"] == ["fc1.weight"]
    loaded = load_inference_model(exported.inference, network=network)  # no catalog needed
    x = torch.randn(3, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    from nas.export import run_onnx

    np.testing.assert_allclose(run_onnx(exported.onnx, x.numpy()), model(x).detach().numpy(), rtol=1e-4, atol=1e-5)
