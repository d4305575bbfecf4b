"""Every search space takes the input shapes and class counts it can serve, as users' datasets bring them.

An uploaded dataset may be a table ``(features,)``, a univariate series ``(length,)`` or images
``(channels, height, width)`` of any size: a 64x64 RGB set as well as 8x8 digits or 5x5 thumbnails.
Each space builds and runs its networks on every shape it takes, with the class count the data has,
within the parameter bounds it declares; a shape a space cannot serve is refused with the reason, by
the space and by job validation at the dataset.
"""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from nas import registry
from nas.specs import JobSpec

IMAGES = [(1, 8, 8), (3, 64, 64), (1, 5, 5), (3, 7, 13), (2, 1, 1)]
FLAT = [(13,), (1,)]
SEQUENCES = [(20, 3)]
TAKES = {
    "sparse_mlp": IMAGES + FLAT + SEQUENCES,
    "sparse_cnn": IMAGES,
    "sparse_rnn": IMAGES + FLAT + SEQUENCES,
    "dass_darts": IMAGES,
    "supernet": IMAGES,
}
CLASSES = (2, 37)


def _cases(shapes_of: dict[str, list[tuple[int, ...]]]) -> list[object]:
    return [pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}")
            for name, shapes in shapes_of.items() for shape in shapes]  # fmt: skip


def test_every_shipped_space_is_covered() -> None:
    assert set(TAKES) <= set(registry.search_spaces.names())


@pytest.mark.parametrize(("name", "shape"), _cases(TAKES))
def test_space_builds_and_runs_networks_for_the_shape(name: str, shape: tuple[int, ...], torch_single_thread: None) -> None:
    import torch

    space = registry.search_spaces.create(name, {})
    for seed, num_classes in enumerate(CLASSES):
        low, high = space.min_params(shape, num_classes), space.max_params(shape, num_classes)
        assert space.weight_specs(shape, num_classes) is not None
        arch = space.sample(random.Random(seed))
        torch.manual_seed(seed)
        model = space.build(arch, shape, num_classes).eval()
        with torch.no_grad():
            logits = model(torch.randn(3, *shape))
        assert logits.shape == (3, num_classes)
        assert low <= sum(p.numel() for p in model.parameters()) <= high


REFUSED = {name: [s for s in FLAT + SEQUENCES if s not in shapes] for name, shapes in TAKES.items()}


@pytest.mark.parametrize(("name", "shape"), _cases(REFUSED))
def test_a_shape_the_space_cannot_serve_is_refused_saying_why(name: str, shape: tuple[int, ...]) -> None:
    space = registry.search_spaces.create(name, {})
    for ask in (space.weight_specs, space.min_params, space.max_params):
        with pytest.raises(ValueError, match=r"needs image inputs \(channels, height, width\).*no height and width"):
            ask(shape, 10)
    with pytest.raises(ValidationError) as refused:
        JobSpec.model_validate({
            "search_space": {"name": name}, "dataset": {"name": "synthetic", "params": {"input_shape": list(shape)}},
        })  # fmt: skip
    (error,) = refused.value.errors()
    assert error["loc"] == ("dataset", "name") and error["type"] == "dataset_incompatible"
    assert "sparse_mlp takes inputs of any shape" in error["msg"]


def test_the_recurrent_space_reads_images_by_rows_and_flat_inputs_as_series() -> None:
    from search_spaces.sparse_rnn import sequence_shape

    assert sequence_shape((3, 28, 32)) == (28, 96)  # a row of every channel per step
    assert sequence_shape((20, 3)) == (20, 3)
    assert sequence_shape((50,)) == (50, 1)  # a univariate series (a table's columns, in their order)
    with pytest.raises(ValueError, match="none of these"):
        sequence_shape((1, 2, 3, 4))
