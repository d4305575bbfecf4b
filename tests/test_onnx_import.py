"""ONNX import: real files written by torch.onnx.export (both exporters) and onnx.helper, converted,
compared with onnxruntime, trained, pruned; and every refusal, by the check it names."""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from nas import registry
from nas.models.onnx_import import (
    OPSET_MAX,
    OPSET_MIN,
    SUPPORTED_OPERATORS,
    ModelLimits,
    ModelRejected,
    check_onnx,
    compare_with_onnxruntime,
    input_shape,
    load_onnx_model,
    to_torch,
)
from nas.models.summary import read_model
from nas.settings import Settings
from nas.sparse.masks import masks, prunable_weights

LIMITS = ModelLimits(max_bytes=16 << 20, max_params=1_000_000)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = F.avg_pool2d(torch.relu(self.conv2(x)), 2, ceil_mode=True)
        return self.fc(x.view(x.size(0), -1))


class DepthwiseResidual(nn.Module):
    """A MobileNet-style block: depthwise and pointwise convolutions, ReLU6, HardSwish, a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem(x))
        x = x + F.hardswish(self.pw(F.relu6(self.bn(self.dw(x)))))
        x = F.adaptive_avg_pool2d(F.leaky_relu(x, 0.1), 1).flatten(1)
        return F.log_softmax(self.head(x), dim=1)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(12, 32)
        self.norm = nn.BatchNorm1d(32)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.tanh(F.gelu(self.norm(self.hidden(x))))))


class ResidualSE(nn.Module):
    """ResNet basic blocks with a strided 1x1 downsample, squeeze-excitation, padding, channel slicing and chunking."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.conv1 = nn.Conv2d(8, 16, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.squeeze = nn.Conv2d(16, 4, 1)
        self.excite = nn.Conv2d(4, 16, 1)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.down(x))
        x = x * torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean((2, 3), keepdim=True)))))
        x = self.pad(x)
        a, b = x[:, :8], x[:, 8:]
        c, d = torch.chunk(torch.cat([b, a], 1), 2, dim=1)
        return self.fc(nn.Flatten()(F.adaptive_avg_pool2d(torch.cat([d, c * 0.5], 1), 1)))


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters away from their identity defaults, so a lost BN shows."""
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
                module.weight.copy_(torch.randn(module.num_features, generator=gen))
                module.bias.copy_(torch.randn(module.num_features, generator=gen))
    return model.eval()


def export(model: nn.Module, shape: tuple[int, ...], path: Path, *, dynamo: bool) -> Path:
    """``model`` written by torch.onnx.export with a symbolic batch dimension, its weights inside the file."""
    torch.manual_seed(0)
    example = (torch.randn(2, *shape),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(
                model, example, path, dynamo=True, external_data=False, input_names=["x"], output_names=["y"],
                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
            )  # fmt: skip
        else:  # the TorchScript exporter without constant folding keeps BatchNormalization nodes
            torch.onnx.export(
                model, example, path, dynamo=False, input_names=["x"], output_names=["y"],
                dynamic_axes={"x": {0: "batch"}}, do_constant_folding=False,
            )  # fmt: skip
    return path


CASES = {
    "cnn": (SmallCNN, (1, 12, 12), {"conv1.weight": [6, 1, 3, 3], "conv2.weight": [8, 6, 3, 3], "fc.weight": [10, 32]}),
    "depthwise_residual": (
        DepthwiseResidual,
        (3, 8, 8),
        {"stem.weight": [8, 3, 3, 3], "dw.weight": [8, 1, 3, 3], "pw.weight": [8, 8, 1, 1], "head.weight": [4, 8]},
    ),
    "mlp": (MLP, (12,), {"hidden.weight": [32, 12], "out.weight": [3, 32]}),
    "resnet_se": (
        ResidualSE,
        (3, 8, 8),
        {
            "stem_0.weight": [8, 3, 3, 3], "conv1.weight": [16, 8, 3, 3], "conv2.weight": [16, 16, 3, 3],
            "down_0.weight": [16, 8, 1, 1], "squeeze.weight": [4, 16, 1, 1], "excite.weight": [16, 4, 1, 1],
            "fc.weight": [10, 16],
        },
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    folder = tmp_path_factory.mktemp("onnx")
    files = {}
    for name, (cls, shape, _) in CASES.items():
        for dynamo in (True, False):
            torch.manual_seed(1)
            files[name, dynamo] = export(_randomize_bn(cls()), shape, folder / f"{name}-{dynamo}.onnx", dynamo=dynamo)
    return files


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", list(CASES))
def test_exported_models_match_onnxruntime_and_expose_prunable_layers(exported, name: str, dynamo: bool) -> None:
    path = exported[name, dynamo]
    info = read_model(path, LIMITS)  # checks, converts, compares with onnxruntime
    _, shape, layers = CASES[name]
    assert info.input_shape == shape
    assert {layer["name"]: layer["shape"] for layer in info.layers} == layers
    assert {layer["kind"] for layer in info.layers} == ({"linear"} if name == "mlp" else {"conv", "linear"})
    assert all(layer["params"] == int(np.prod(layer["shape"])) for layer in info.layers)
    assert info.num_outputs == {"cnn": 10, "depthwise_residual": 4, "mlp": 3, "resnet_se": 10}[name]
    assert info.opset == 20 and info.producer.startswith("pytorch")

    module = to_torch(check_onnx(path, LIMITS))
    assert not module.training
    assert compare_with_onnxruntime(check_onnx(path, LIMITS), module, shape) < 1e-4
    if not dynamo:  # the TorchScript export kept BatchNormalization: a BatchNorm2d/1d with the running statistics
        norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm1d if name == "mlp" else nn.BatchNorm2d)]
        assert norms and all(not torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in norms)


def test_converted_model_trains_and_runs_after_magnitude_pruning(exported) -> None:
    module = copy.deepcopy(load_onnx_model(exported["cnn", True], LIMITS))
    module.train()
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    before = module.conv1.weight.detach().clone()
    F.cross_entropy(module(x), y).backward()
    assert all(p.grad is not None for p in module.parameters())
    optimizer.step()
    assert not torch.equal(before, module.conv1.weight)

    sparsifier = registry.sparsifiers.create("magnitude", {"sparsity": 0.75, "prune_at": 0.0})
    sparsifier.attach(module, optimizer, total_steps=1, layer_sparsity=None)
    assert set(masks(module)) == set(CASES["cnn"][2])
    for name, (owner, attr) in prunable_weights(module).items():
        weight = getattr(owner, attr)
        assert (weight == 0).float().mean().item() == pytest.approx(0.75, abs=0.02), name
    F.cross_entropy(module(x), y).backward()
    with torch.no_grad():
        assert module.eval()(x).shape == (8, 10)


def test_opset_13_export_with_decomposed_gelu_and_shape_arithmetic(tmp_path: Path) -> None:
    """The oldest opset taken: the TorchScript exporter writes Gelu as Erf arithmetic and flatten
    as Shape/Gather/Unsqueeze/Concat/Reshape."""
    path = tmp_path / "old.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _randomize_bn(SmallCNN()), (torch.randn(2, 1, 12, 12),), path, dynamo=False, opset_version=13,
            input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
        torch.manual_seed(1)
        torch.onnx.export(
            MLP().eval(), (torch.randn(2, 12),), tmp_path / "mlp.onnx", dynamo=False, opset_version=13,
            input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
    ops = {node.op_type for node in onnx.load(path).graph.node} | {n.op_type for n in onnx.load(tmp_path / "mlp.onnx").graph.node}
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Erf"} <= ops
    assert read_model(path, LIMITS).opset == 13
    assert [layer["name"] for layer in read_model(tmp_path / "mlp.onnx", LIMITS).layers] == ["hidden.weight", "out.weight"]


def test_layers_are_named_after_the_torch_modules_when_batchnorm_was_folded_in(tmp_path: Path) -> None:
    """The TorchScript exporter's constant folding merges BatchNorm into Conv and names the merged
    weights onnx::Conv_<n>; the node's scope name still gives the torch module path."""
    path = tmp_path / "folded.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _randomize_bn(ResidualSE()), (torch.randn(2, 3, 8, 8),), path, dynamo=False, input_names=["x"],
            output_names=["y"], dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
    proto = onnx.load(path)
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    assert any(i.name.startswith("onnx::Conv") for i in proto.graph.initializer)
    info = read_model(path, LIMITS)
    assert {layer["name"]: layer["shape"] for layer in info.layers} == CASES["resnet_se"][2]


def test_converted_module_pickles_and_exports_back_to_onnx(exported, tmp_path: Path) -> None:
    """Trials get copies of the converted module, and the trained result is exported again."""
    import pickle

    module = load_onnx_model(exported["cnn", False], LIMITS)  # its flatten is Shape arithmetic
    x = torch.randn(3, 1, 12, 12)
    clone = pickle.loads(pickle.dumps(module))
    assert torch.equal(clone(x), module(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (x,), tmp_path / "again.onnx", dynamo=True, external_data=False, input_names=["x"],
            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
        )  # fmt: skip
    again = check_onnx(tmp_path / "again.onnx", LIMITS)
    assert compare_with_onnxruntime(again, module, (1, 12, 12)) < 1e-4


def test_weights_shared_between_nodes_stay_one_module() -> None:
    weight = _init("shared.weight", np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32))
    nodes = [
        helper.make_node("Gemm", ["x", "shared.weight"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Identity", ["shared.weight"], ["tied"]),  # how the TorchScript exporter ties weights
        helper.make_node("Gemm", ["r", "tied"], ["y"], transB=1),
    ]
    proto = _model(nodes, [_value("x", ["N", 4])], [_value("y", ["N", 4])], [weight])
    module = _convert_and_compare(proto)
    assert list(prunable_weights(module)) == ["shared.weight"]


def _model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="handmade")


def _value(name: str, shape: list, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _bytes(proto: onnx.ModelProto) -> bytes:
    return proto.SerializeToString()


def _convert_and_compare(proto: onnx.ModelProto) -> nn.Module:
    checked = check_onnx(_bytes(proto), LIMITS)
    module = to_torch(checked)
    compare_with_onnxruntime(checked, module, input_shape(checked))
    return module


def test_handmade_graph_with_same_padding_matmul_bias_and_shape_ops() -> None:
    """Operators the exporters above did not write: SAME/asymmetric pads, MatMul+Add fused into one
    Linear, Reshape with 0 and -1, Transpose, Concat, Sigmoid, HardSigmoid, Clip, Softmax, Shape arithmetic."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((4 * 5 * 5 * 2, 6)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "block.conv.w"], ["c"], name="block/conv", auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Conv", ["x", "onnx::Conv_7"], ["c2"], name="/asym/Conv", pads=[1, 0, 1, 2], strides=[2, 2]),
        helper.make_node("Sigmoid", ["c"], ["s"]),
        helper.make_node("HardSigmoid", ["c2"], ["h"], alpha=0.3, beta=0.4),
        helper.make_node("Concat", ["s", "h"], ["cat"], axis=1),
        helper.make_node("Transpose", ["cat"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Clip", ["t", "lo", "hi"], ["clip"]),
        helper.make_node("Reshape", ["clip", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "head"], ["mm"], name="head_matmul"),
        helper.make_node("Add", ["mm", "head.bias"], ["logits"]),
        helper.make_node("Shape", ["logits"], ["dims"]),
        helper.make_node("Gather", ["dims", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero_axis"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "two_three"], ["target"], axis=0),
        helper.make_node("Reshape", ["logits", "target"], ["grid"]),
        helper.make_node("Softmax", ["grid"], ["y"], axis=-1),
    ]
    initializers = [
        _init("block.conv.w", w),
        _init("onnx::Conv_7", -w),  # an exporter's generated name: the module is named after the node
        _init("lo", np.array(0.1, np.float32)),
        _init("hi", np.array(0.9, np.float32)),
        _init("shape", np.array([0, -1], np.int64)),
        _init("head", fc),
        _init("head.bias", rng.standard_normal(6).astype(np.float32)),
        _init("zero", np.array(0, np.int64)),
        _init("zero_axis", np.array([0], np.int64)),
        _init("two_three", np.array([2, 3], np.int64)),
    ]
    proto = _model(nodes, [_value("x", ["N", 2, 9, 9])], [_value("y", ["N", 2, 3])], initializers)
    module = _convert_and_compare(proto)
    names = {name: tuple(owner.weight.shape) for name, (owner, _) in prunable_weights(module).items()}
    assert names == {"block_conv.weight": (4, 2, 3, 3), "asym.weight": (4, 2, 3, 3), "head.weight": (6, 200)}
    assert module.head.bias is not None  # the Add became the Linear's bias
    assert module(torch.randn(5, 2, 9, 9)).shape == (5, 2, 3)


def test_handmade_graph_with_dropout_pooling_squeeze_and_a_scaled_gemm() -> None:
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Dropout", ["x", "ratio"], ["d"], name="drop"),
        helper.make_node("MaxPool", ["d"], ["p"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
        helper.make_node("AveragePool", ["p"], ["q"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0),
        helper.make_node("GlobalMaxPool", ["q"], ["g"]),
        helper.make_node("Squeeze", ["g", "spatial"], ["s"]),
        helper.make_node("Gemm", ["s", "w"], ["h"], alpha=0.5, beta=2.0, name="scaled"),
        helper.make_node("Identity", ["h"], ["i"]),
        helper.make_node("LeakyRelu", ["i"], ["l"], alpha=0.2),
        helper.make_node("Gemm", ["l", "w2", "b2"], ["y"], transB=1),
    ]
    initializers = [
        _init("ratio", np.array(0.25, np.float32)),
        _init("spatial", np.array([2, 3], np.int64)),
        _init("w", rng.standard_normal((3, 5)).astype(np.float32)),
        _init("w2", rng.standard_normal((2, 5)).astype(np.float32)),
        _init("b2", rng.standard_normal((1, 2)).astype(np.float32)),
    ]
    proto = _model(nodes, [_value("x", ["N", 3, 7, 7])], [_value("y", ["N", 2])], initializers)
    module = _convert_and_compare(proto)
    assert isinstance(module.drop, nn.Dropout) and module.drop.p == 0.25  # fine-tuning uses it
    assert {name: tuple(owner.weight.shape) for name, (owner, _) in prunable_weights(module).items()} == {
        "w.weight": (5, 3), "w2.weight": (2, 5)
    }


def test_handmade_graph_with_split_expand_reductions_and_elementwise_math() -> None:
    nodes = [
        helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
        helper.make_node("Exp", ["a"], ["e"]),
        helper.make_node("Neg", ["e"], ["n"]),
        helper.make_node("Abs", ["b"], ["ab"]),
        helper.make_node("Sqrt", ["ab"], ["sq"]),
        helper.make_node("Pow", ["sq", "two"], ["pw"]),
        helper.make_node("ReduceMax", ["pw", "one"], ["mx"], keepdims=1),
        helper.make_node("ReduceMin", ["pw", "one"], ["mn"], keepdims=1),
        helper.make_node("ReduceSum", ["pw", "one"], ["sm"], keepdims=1),
        helper.make_node("Sub", ["mx", "mn"], ["range"]),
        helper.make_node("Div", ["sm", "range"], ["ratio"]),
        helper.make_node("Shape", ["a"], ["a_shape"]),
        helper.make_node("Expand", ["ratio", "a_shape"], ["wide"]),
        helper.make_node("Cast", ["wide"], ["cast"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["n", "cast"], ["m"]),
        helper.make_node("Concat", ["m", "pw"], ["c"], axis=1),
        helper.make_node("LogSoftmax", ["c"], ["y"], axis=1),
    ]
    initializers = [
        _init("sizes", np.array([2, 4], np.int64)),
        _init("two", np.array(2.0, np.float32)),
        _init("one", np.array([1], np.int64)),
    ]
    proto = _model(nodes, [_value("x", ["N", 6])], [_value("y", ["N", 6])], initializers, opset=18)
    module = _convert_and_compare(proto)
    assert module(torch.randn(4, 6)).shape == (4, 6) and not list(prunable_weights(module))


def test_corrupted_files_are_refused_or_accepted_never_crash(exported) -> None:
    data = exported["cnn", False].read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(40):
        corrupted = bytearray(data)
        for at in rng.integers(0, len(data), size=3):
            corrupted[at] = int(rng.integers(0, 256))
        try:
            proto = check_onnx(bytes(corrupted), LIMITS)
            compare_with_onnxruntime(proto, to_torch(proto), input_shape(proto))
            outcomes["accepted"] += 1
        except ModelRejected:  # anything else (a crash, a torch or onnxruntime error) fails the test
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 40


def _tiny(opset: int = 17, **changes) -> onnx.ModelProto:
    """x (N, 4) -> Gemm -> Relu -> y, with ``changes`` to its parts."""
    nodes = changes.get("nodes") or [
        helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    inputs = changes.get("inputs") or [_value("x", ["N", 4])]
    outputs = changes.get("outputs") or [_value("y", ["N", 3])]
    initializers = [_init("fc.weight", np.ones((3, 4), np.float32)), _init("fc.bias", np.zeros(3, np.float32))]
    return _model(nodes, inputs, outputs, initializers, opset=opset)


def test_a_valid_tiny_model_passes(tmp_path: Path) -> None:
    module = _convert_and_compare(_tiny())
    assert isinstance(module.fc, nn.Linear)
    proto = _tiny()
    proto.producer_name, proto.producer_version = "maker\x1b[31m", "1" * 500
    (tmp_path / "m.onnx").write_bytes(_bytes(proto))
    info = read_model(tmp_path / "m.onnx", LIMITS)
    assert info.producer.startswith("maker\\x1b[31m 111") and len(info.producer) < 220
    assert (info.input_shape, info.num_outputs, info.params, info.opset) == ((4,), 3, 15, 17)


def test_module_names_never_shadow_the_graph_module() -> None:
    nodes = [helper.make_node("Gemm", ["x", "graph.weight"], ["y"], transB=1)]
    proto = _model(nodes, [_value("x", ["N", 4])], [_value("y", ["N", 3])], [_init("graph.weight", np.ones((3, 4), np.float32))])
    module = _convert_and_compare(proto)
    assert list(prunable_weights(module)) == ["graph_2.weight"]


def test_not_onnx_is_refused() -> None:
    for data in (b"", b"PK\x03\x04 this is a zip", b"\x00\xff" * 40):
        with pytest.raises(ModelRejected, match="not an ONNX model"):
            check_onnx(data, LIMITS)


def test_external_data_is_refused_by_tensor_name(tmp_path: Path) -> None:
    proto = _tiny()
    onnx.save_model(proto, tmp_path / "m.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    with pytest.raises(ModelRejected, match=r"external data: tensor 'fc\.weight'.*weights\.bin"):
        check_onnx(tmp_path / "m.onnx", LIMITS)


def test_external_data_in_a_constant_attribute_is_refused() -> None:
    tensor = _init("konst", np.ones(3, np.float32))
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="/etc/passwd")
    nodes = [
        helper.make_node("Constant", [], ["k"], value=tensor),
        helper.make_node("Gemm", ["x", "fc.weight", "k"], ["y"], transB=1),
    ]
    with pytest.raises(ModelRejected, match="external data: tensor 'konst'"):
        check_onnx(_bytes(_tiny(nodes=nodes)), LIMITS)


def test_unsupported_operator_is_refused_by_name_and_node() -> None:
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["boxes"]),
        helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["y"], name="nms_1\x1b[2J"),
    ]
    graph = helper.make_graph(
        nodes, "g", [_value("x", ["N", 4])], [_value("y", [None, 3], TensorProto.INT64)],
        initializer=[_init("axes", np.array([0], np.int64)), _init("scores", np.ones((1, 1, 5), np.float32))],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    checked = check_onnx(_bytes(proto), LIMITS)
    # the node's name is shown with its terminal escape written out
    with pytest.raises(ModelRejected, match=r"unsupported operator NonMaxSuppression at node nms_1\\x1b\[2J; supported: .*Conv"):
        to_torch(checked)
    assert "Loop" not in SUPPORTED_OPERATORS and "Conv" in SUPPORTED_OPERATORS


def test_opset_out_of_range_is_refused() -> None:
    for opset in (OPSET_MIN - 1, OPSET_MAX + 1):
        with pytest.raises(ModelRejected, match=rf"opset {opset} is not supported.*{OPSET_MIN} to {OPSET_MAX}"):
            check_onnx(_bytes(_tiny(opset=opset)), LIMITS)


def test_signature_is_refused_unless_one_float_batched_input_and_one_output() -> None:
    nodes = [helper.make_node("Add", ["x", "x2"], ["y"])]
    two_inputs = _tiny(nodes=nodes, inputs=[_value("x", ["N", 4]), _value("x2", ["N", 4])], outputs=[_value("y", ["N", 4])])
    with pytest.raises(ModelRejected, match=r"inputs: the model has 2 inputs \(x, x2\)"):
        check_onnx(_bytes(two_inputs), LIMITS)
    two_outputs = _tiny(
        nodes=[helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["z"])],
        outputs=[_value("y", ["N", 4]), _value("z", ["N", 4])],
    )
    with pytest.raises(ModelRejected, match="outputs: the model has 2 outputs"):
        check_onnx(_bytes(two_outputs), LIMITS)
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    for shape, elem, message in (
        (["N", 3, 8], TensorProto.FLOAT, "must be \\(N, features\\) or \\(N, C, H, W\\)"),
        ([8, 4], TensorProto.FLOAT, "first dimension must be the batch"),
        (["N", "F"], TensorProto.FLOAT, "every dimension but the batch must be a fixed size"),
        (["N", 4], TensorProto.INT64, "must be a float32 tensor"),
    ):
        proto = _tiny(nodes=relu, inputs=[_value("x", shape, elem)], outputs=[_value("y", shape, elem)])
        with pytest.raises(ModelRejected, match=message):
            check_onnx(_bytes(proto), LIMITS)


def test_size_and_parameter_limits_are_refused() -> None:
    data = _bytes(_tiny())
    with pytest.raises(ModelRejected, match=rf"size limit: the file is {len(data)} bytes, over the limit of 100 bytes"):
        check_onnx(data, ModelLimits(max_bytes=100, max_params=10**6))
    with pytest.raises(ModelRejected, match="parameter limit: the model holds 15 values, over the limit of 10"):
        check_onnx(data, ModelLimits(max_bytes=1 << 20, max_params=10))


def test_a_graph_that_computes_a_huge_tensor_is_refused() -> None:
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["column"]),
        helper.make_node("Mul", ["column", "row"], ["outer"]),  # (N, 16384, 16384)
        helper.make_node("ReduceSum", ["outer", "axes"], ["y"], keepdims=0),
    ]
    initializers = [_init("axes", np.array([2], np.int64)), _init("row", np.ones((1, 1, 1 << 14), np.float32))]
    proto = _model(nodes, [_value("x", ["N", 1 << 14])], [_value("y", ["N", 1 << 14])], initializers)
    with pytest.raises(ModelRejected, match=r"tensor size: 'outer' would hold 268435456 values per example"):
        check_onnx(_bytes(proto), LIMITS)


def test_checker_failure_is_refused() -> None:
    dangling = [helper.make_node("Add", ["x", "missing"], ["y"])]
    with pytest.raises(ModelRejected, match="ONNX checker failed"):
        check_onnx(_bytes(_tiny(nodes=dangling, outputs=[_value("y", ["N", 4])])), LIMITS)
    mismatched = [helper.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(ModelRejected, match="ONNX checker failed"):  # full_check: output declared int64
        check_onnx(_bytes(_tiny(nodes=mismatched, outputs=[_value("y", ["N", 4], TensorProto.INT64)])), LIMITS)


def test_batch_norm_in_training_mode_is_refused() -> None:
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "mean", "var"], name="bn", training_mode=1),
    ]
    initializers = [_init(n, np.ones(4, np.float32)) for n in "sbmv"]
    proto = _model(nodes, [_value("x", ["N", 4])], [_value("y", ["N", 4])], initializers)
    with pytest.raises(ModelRejected, match="BatchNormalization at node bn is in training mode"):
        to_torch(check_onnx(_bytes(proto), LIMITS))


def test_a_module_that_disagrees_with_onnxruntime_is_refused() -> None:
    proto = check_onnx(_bytes(_tiny()), LIMITS)
    module = to_torch(proto)
    with torch.no_grad():
        module.fc.bias.add_(1.0)
    with pytest.raises(ModelRejected, match=r"onnxruntime comparison: outputs differ by up to 1 "):
        compare_with_onnxruntime(proto, module, (4,))


def test_limits_come_from_the_settings(monkeypatch) -> None:
    monkeypatch.setenv("NAS_LIMIT_MODEL_BYTES", "123")
    monkeypatch.setenv("NAS_LIMIT_MODEL_PARAMS", "45")
    settings = Settings.from_env()
    limits = ModelLimits.from_settings(settings)
    assert (limits.max_bytes, limits.max_params, limits.opset_min, limits.opset_max) == (123, 45, OPSET_MIN, OPSET_MAX)
    assert Settings.from_env().to_env()["NAS_LIMIT_MODEL_BYTES"] == "123"
    with pytest.raises(ModelRejected, match="size limit"):
        load_onnx_model(io.BytesIO(_bytes(_tiny())).getvalue())
