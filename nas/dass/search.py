"""DASS's search (``train_search.py``): three phases of bilevel training of a score-masked DARTS supernet.

The training data is split into a part that trains the network (weights, then scores) and a
validation part that trains α (DARTS's 50/50 split). Every step first moves α on a validation
batch, then the network on a training batch: first-order DARTS (the gradient of the validation
loss at the current weights), as DARTS's cheap variant; DASS's code unrolls one virtual step.

1. *pretrain*: dense (every mask keeps ``k = 1``); weights and α train.
2. *prune*: HYDRA's scaled score init from the pretrained weights, masks ``TopK(|S|, k)`` per
   layer; the scores train (SGD, straight-through gradient) while the weights are frozen, and α
   keeps training on the masked network, so the architecture gradient is the sparse network's.
3. *finetune*: the masks become fixed; weights and α train under them.

The derived cell is DARTS's genotype of the final α. :func:`search` runs on tensors (benchmarks
call it directly); :func:`run_search_trial` is the ``dass`` strategy's search trial, which splits
the job's training part (its validation split already held out) for α and evaluates its epochs on
the job's validation split, so the test split is seen once, at the trial's end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas import registry
from nas.dass.genotype import Genotype
from nas.dass.network import Supernet
from nas.sparse.layers import ScoreMask, get_score_mask, scaled_scores
from nas.sparse.masks import harden_mask, prunable_weights, raw_weight
from nas.sparse.stats import weight_sparsity
from nas.specs import JobSpec, TrainingSpec
from nas.training import (
    LastEpoch,
    TrialOutcome,
    end_trial,
    evaluate,
    load_data,
    on_device,
    recalibrate_batchnorm,
    trial_device,
    trial_seed,
    weight_optimizer,
)

Report = Callable[[int, dict[str, float]], None]
PHASES = ("pretrain", "prune", "finetune")
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class SearchOptions:
    """The search's schedule and its α and score optimizers (DASS's defaults in the strategy's ``Params``)."""

    k: float
    pretrain_epochs: int
    prune_epochs: int
    finetune_epochs: int
    arch_lr: float = 1e-2
    arch_weight_decay: float = 1e-3
    score_lr: float = 0.1
    grad_clip: float = 5.0
    arch_steps_while_pruning: bool = True


@dataclass
class Data:
    """The search's tensors: ``train`` trains the network, ``val`` trains α, ``test`` is only reported
    (a search trial passes the job's validation split here; a benchmark, the test split)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @classmethod
    def split(
        cls, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, val_fraction: float, seed: int
    ) -> Data:
        """Hold ``val_fraction`` of the training examples, drawn by ``seed``, out for α."""
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        n_val = min(max(1, round(val_fraction * len(x))), len(x) - 1)
        val, train = order[:n_val], order[n_val:]
        return cls(x[train], y[train], x[val], y[val], x_test, y_test)


@dataclass
class SearchResult:
    genotype: Genotype
    accuracy: float  # accuracy of the supernet on Data.test after the last phase
    loss: float
    search_val_accuracy: float  # on Data.val, which trained α
    train_time_s: float
    history: list[dict[str, float]] = field(default_factory=list)


def search(
    model: Supernet,
    data: Data,
    options: SearchOptions,
    training: TrainingSpec,
    seed: int,
    report: Report | None = None,
) -> SearchResult:
    """Run the three phases on ``model`` in place; ``report(epoch, metrics)`` after every (1-based) epoch.

    With ``report``, every epoch is evaluated on ``data.test`` (reported as ``val_loss`` and
    ``val_accuracy``: a search trial's is the job's validation split) and on ``data.val``
    (``search_val_accuracy``), after a BatchNorm recalibration once masks exist; without, only the
    final network is.

    ``training`` gives the weights' optimizer, learning rate and batch size. A phase of no epochs
    still sets up its masks, so the model always leaves with fixed hard masks at ``options.k``
    (``k = 1`` with ``prune_epochs = finetune_epochs = 0`` is plain first-order DARTS, dense).
    """
    shuffle = torch.Generator().manual_seed(seed)
    arch_optimizer = torch.optim.Adam(
        model.arch_parameters(), lr=options.arch_lr, betas=(0.5, 0.999), weight_decay=options.arch_weight_decay
    )
    history: list[dict[str, float]] = []
    epoch, train_time = 0, 0.0
    final: tuple[float, float, float] | None = None  # (loss, accuracy on data.test, accuracy on data.val)
    for phase, epochs in zip(PHASES, (options.pretrain_epochs, options.prune_epochs, options.finetune_epochs)):
        if phase == "prune":
            _start_pruning(model, options.k)
            final = None
        elif phase == "finetune":
            _fix_masks(model)
        if epochs == 0:
            continue
        trained = _trained_parameters(model, phase)
        optimizer = (
            torch.optim.SGD(trained, lr=options.score_lr, momentum=0.9)
            if phase == "prune"
            else weight_optimizer(trained, training)  # fresh for every phase, as HYDRA builds one per phase
        )
        step_arch = phase != "prune" or options.arch_steps_while_pruning
        for _ in range(epochs):
            epoch += 1
            start = time.perf_counter()
            model.train()
            loss_sum = 0.0
            for (xb, yb), (xv, yv) in _batches(data, training.batch_size, shuffle):
                if step_arch:
                    arch_optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(model(xv), yv).backward(inputs=model.arch_parameters())
                    arch_optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                loss.backward(inputs=trained)
                if phase != "prune":
                    nn.utils.clip_grad_norm_(trained, options.grad_clip)
                optimizer.step()
                loss_sum += loss.item() * len(yb)
            metrics = {
                "train_loss": loss_sum / len(data.y_train),
                "sparsity": weight_sparsity(model),
                "phase": float(PHASES.index(phase) + 1),
                "arch_entropy": _arch_entropy(model),
            }
            final = None
            if report is not None:
                final = _evaluate(model, data, training.batch_size, recalibrate=phase != "pretrain")
                metrics.update(val_loss=final[0], val_accuracy=final[1], search_val_accuracy=final[2])
            metrics["epoch_time_s"] = elapsed = time.perf_counter() - start
            train_time += elapsed
            history.append({"epoch": float(epoch), **metrics})
            if report is not None:
                report(epoch, metrics)
    if final is None:
        final = _evaluate(model, data, training.batch_size, recalibrate=options.k < 1.0)
    return SearchResult(model.genotype(), final[1], final[0], final[2], train_time, history)


def _evaluate(model: Supernet, data: Data, batch_size: int, recalibrate: bool) -> tuple[float, float, float]:
    """Loss and accuracy on ``data.test``, accuracy on ``data.val``; BatchNorm statistics recomputed
    first after pruning.

    Pruning to a few percent leaves channels all but constant while the running averages still
    hold their dense-era statistics; fresh ones over the whole training split match what training sees.
    """
    if recalibrate:
        recalibrate_batchnorm(model, data.x_train, batch_size)
    test_loss, accuracy = evaluate(model, data.x_test, data.y_test)
    _, val_accuracy = evaluate(model, data.x_val, data.y_val)
    return test_loss, accuracy, val_accuracy


def _score_masks(model: nn.Module) -> list[ScoreMask]:
    return [p for module, attr in prunable_weights(model).values() if (p := get_score_mask(module, attr)) is not None]


def _start_pruning(model: Supernet, k: float) -> None:
    """HYDRA's scaled score init from the current weights, masks at ``k``; only scores (and norms) train."""
    with torch.no_grad():
        for module, attr in prunable_weights(model).values():
            mask = get_score_mask(module, attr)
            mask.scores.copy_(scaled_scores(raw_weight(module, attr)))
            mask.k = k


def _fix_masks(model: Supernet) -> None:
    """Replace every score mask by the hard mask it applies; the scores leave the model."""
    for module, attr in prunable_weights(model).values():
        mask = get_score_mask(module, attr)
        if mask is not None:
            harden_mask(module, attr, mask.mask)


def _trained_parameters(model: Supernet, phase: str) -> list[nn.Parameter]:
    """What the phase's optimizer trains: scores and norms while pruning, else every weight (never α)."""
    arch = {id(p) for p in model.arch_parameters()}
    if phase == "prune":
        norms = [p for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)]
        trained = [p.scores for p in _score_masks(model)] + norms
    else:
        score_ids = {id(p.scores) for p in _score_masks(model)}
        trained = [p for p in model.parameters() if id(p) not in arch and id(p) not in score_ids]
    keep = arch | {id(p) for p in trained}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return trained


def _batches(
    data: Data, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
    """One epoch of training batches, each paired with a validation batch (cycling the smaller split)."""
    train = torch.randperm(len(data.y_train), generator=generator).split(batch_size)
    val = torch.randperm(len(data.y_val), generator=generator).split(batch_size)
    for i, batch in enumerate(train):
        v = val[i % len(val)]
        yield (data.x_train[batch], data.y_train[batch]), (data.x_val[v], data.y_val[v])


def _arch_entropy(model: Supernet) -> float:
    """Mean entropy of the edges' operation weights, as a fraction of its maximum (1 = uniform, 0 = decided)."""
    with torch.no_grad():
        alphas = torch.cat([a for a in model.arch_parameters()])
        probs = F.softmax(alphas, dim=-1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
        return float(entropy / math.log(alphas.shape[-1])) if alphas.shape[-1] > 1 else 0.0


def run_search_trial(
    spec: JobSpec, arch: dict[str, Any], data_dir: Path, report: Report, options: SearchOptions, val_fraction: float
) -> TrialOutcome:
    """The ``dass`` strategy's search trial: search the supernet ``arch`` describes, return its derived cell.

    The outcome's ``outputs`` hold the genotype (``genotype``, an architecture of the space), the
    keep fraction searched at and the final softmax of α; its model is the masked supernet, which
    ``nas.training.load_trained_model`` rebuilds, and it is measured as its sparse inference model,
    like every trial (:func:`nas.training.end_trial`).
    """
    device = trial_device()
    tensors = on_device(load_data(spec, data_dir), device)
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    seed = trial_seed(spec, arch)
    torch.manual_seed(seed)
    model = space.build(arch, tensors.input_shape, tensors.num_classes).to(device)
    if not isinstance(model, Supernet):
        raise ValueError(f"a DASS search trial needs a supernet arch (kind: supernet), got kind {arch.get('kind')!r}")
    data = Data.split(tensors.x_train, tensors.y_train, tensors.x_val, tensors.y_val, val_fraction, seed)
    last = LastEpoch(report, options.pretrain_epochs + options.prune_epochs + options.finetune_epochs)
    result = search(model, data, options, spec.training, seed, last)
    with torch.no_grad():
        alphas = {
            "normal": F.softmax(model.alphas_normal, dim=-1).tolist(),
            "reduce": F.softmax(model.alphas_reduce, dim=-1).tolist(),
        }
    outputs = {
        "genotype": result.genotype.to_arch(),
        "k": options.k,
        "operations": list(model.ops),
        "alphas": alphas,
    }
    return end_trial(
        model,
        spec,
        tensors,
        arch,
        result.train_time_s,
        last_epoch=last,
        search_split=(data.x_val, data.y_val),
        outputs=outputs,
    )
