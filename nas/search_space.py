"""The search-space contract: what every registered space implements, and what it may add.

A search space turns its ``Params`` into a set of architectures. An architecture is a flat,
JSON-able dict (:data:`nas.arch.ArchSpec`): the store keeps it, the strategies propose it, the
trainer builds it, and two equal networks have equal dicts (their fingerprints match), so a space
lists only the keys a network uses.

Required (abstract) methods are what the service cannot work without: drawing an architecture,
building its network, the per-layer sparsity it fixes and the bounds on its size. Optional
capabilities have defaults that mean "the space does not offer this", and callers ask the base
for them instead of probing: per-layer sparsity patterns (default: none, every weight takes the
sparsifier's own pattern), the weights a sparsifier can check at submission (default: none, the
job is not checked), the stored model the networks are made from and its dense reference
(default: none, networks are built from scratch), and the dimensions that define-by-run samplers
such as Optuna's draw from (default: none, so ``tpe`` and ``nsga2`` refuse the space).

Importing this module imports neither torch nor optuna: the API server validates job specs with
spaces and never builds a model.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from nas.arch import ArchSpec
from nas.sparse.base import WeightSpec

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from torch import nn


class SearchSpace(ABC):
    """Base class of registered search spaces; ``Params`` holds their options.

    The JSON Schema of ``Params`` may list ``examples`` (pydantic's ``json_schema_extra``): option
    sets worth showing in the catalog, which the contract suite (``tests/test_contracts.py``) runs
    besides the defaults, so a capability the defaults leave off (searched sparsities, patterns)
    is checked too.
    """

    Params: ClassVar[type[BaseModel]]

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    # -- required -------------------------------------------------------------------------

    @abstractmethod
    def sample(self, rng: random.Random) -> ArchSpec:
        """An architecture drawn with ``rng`` alone, so a seeded job proposes the same ones again.

        The ``random`` strategy, the controls and every fallback draw through this; the result
        must be JSON-able (it is stored and fingerprinted) and accepted by :meth:`build`.
        """

    @abstractmethod
    def build(self, arch: ArchSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """The freshly initialised network of ``arch`` for inputs ``(batch, *input_shape)``.

        Its forward returns logits of shape ``(batch, num_classes)``; the trainer prunes it, so
        its weight names are those :meth:`layer_sparsity` and :meth:`layer_patterns` use. Raises
        ``ValueError`` naming the key when ``arch`` is not an architecture of the space, and when
        the space cannot take inputs of ``input_shape``.
        """

    @abstractmethod
    def layer_sparsity(self, arch: ArchSpec) -> dict[str, float] | None:
        """The sparsity (fraction of zero weights, in ``[0, 1)``) ``arch`` fixes per weight, by weight name.

        Spaces that search per-layer sparsity put it in the architecture; the trainer hands this
        map to the sparsifier and the latency predictor reads densities from it. ``None`` (or a
        weight left out) leaves the weight to the sparsifier's own target. Raises ``ValueError``
        for an arch that is not of the space, like :meth:`build`.
        """

    @abstractmethod
    def max_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """The most parameters any architecture of the space has, computed without building a model.

        Lets the server refuse at submission a space larger than it allows (``NAS_LIMIT_PARAMS``).
        """

    @abstractmethod
    def min_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        """The fewest parameters any architecture of the space has, computed without building a model.

        Lets a job whose ``constraints.max_params`` no architecture can meet be refused at
        submission instead of running only infeasible trials.
        """

    # -- optional capabilities ------------------------------------------------------------

    def layer_patterns(self, arch: ArchSpec) -> dict[str, str] | None:
        """The sparsity pattern ``arch`` fixes per weight: ``"dense"``, ``"unstructured"``, ``"channel"``, ``"2:4"``, ...

        The trainer sets it on the sparsifier before attaching (``Sparsifier.layer_patterns``).
        The default, ``None``, fixes none: every weight takes the sparsifier's own pattern.
        """
        return None

    def weight_specs(self, input_shape: tuple[int, ...], num_classes: int) -> list[WeightSpec] | None:
        """Every prunable weight any architecture can have, for ``Sparsifier.check`` at submission.

        Raises ``ValueError`` when the space cannot take inputs of ``input_shape`` (the job is then
        refused on its dataset). The default, ``None``, offers no list: the job's sparsifier is not
        checked against the space before training.
        """
        return None

    def fit_problems(self, input_shape: tuple[int, ...], num_classes: int) -> list[tuple[tuple[str | int, ...], str]]:
        """``(location within params, why)`` for each field whose choices cannot build on inputs of ``input_shape``.

        A space whose params describe the network piece by piece names the piece, so a job is
        refused at ``search_space.params.<location>``. The default, none: a space that cannot take
        the inputs at all says so from :meth:`weight_specs` (refused at the dataset).
        """
        return []

    def largest_at(self, limit: int, input_shape: tuple[int, ...], num_classes: int) -> tuple[str | int, ...]:
        """The field of params whose choices take the largest architecture past ``limit`` parameters.

        Called when :meth:`max_params` exceeds the server's limit, to refuse the job at
        ``search_space.params.<location>``. The default, ``()``: the params as a whole.
        """
        return ()

    def stored_model(self) -> str | None:
        """The id of the stored model (``POST /api/v1/models``) the space's networks are made from.

        The runner delivers that model's ONNX to every node a trial of the job runs on
        (:mod:`workers.models`). The default, ``None``: networks are built from scratch.
        """
        return None

    def reference_model(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module | None:
        """The trained network the space's architectures start from, dense, with its weights.

        The job measures its accuracy and latency once (:mod:`workers.baseline`) and shows them
        beside every trial (``dense_accuracy``, ``accuracy_drop``, ``dense_latency_ms``,
        ``speedup``). Raises ``ValueError`` like :meth:`build`. The default, ``None``: there is no
        given network to compare with.
        """
        return None

    def dimensions(self) -> dict[str, BaseDistribution] | None:
        """Every key an architecture may have, with the Optuna distribution of its values.

        Define-by-run samplers (``tpe``, ``nsga2``) draw an architecture key by key from these
        through :meth:`arch_from`. The default, ``None``, means the space cannot be drawn key by
        key, and those strategies refuse it at submission.
        """
        return None

    def arch_from(self, suggest: Callable[[str], Any]) -> ArchSpec:
        """The architecture whose keys ``suggest(key)`` gives, asking only for the keys it uses.

        ``suggest(key)`` returns a value of ``dimensions()[key]`` (an Optuna trial's
        ``suggest_*``, or :func:`nas.arch.uniform_suggest`). The default asks for every key of
        :meth:`dimensions` in order, which is right for a space without conditional keys; a space
        whose keys depend on others (``width_2`` only when ``depth`` is 3) overrides it and asks
        for a deciding key before the keys it decides.
        """
        dims = self.dimensions()
        if dims is None:
            raise NotImplementedError(f"{type(self).__name__} has no dimensions() to draw an architecture from")
        return {key: suggest(key) for key in dims}
