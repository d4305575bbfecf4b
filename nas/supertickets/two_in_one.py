"""SuperTickets' two-in-one supernet training (You et al., ECCV 2022), on the ``supernet`` space.

One training run of the weight-sharing supernet does two things at once:

* **search by network slimming**: the loss adds ``rho * sum|gamma|`` over the BatchNorm scales of
  every block's expansion channels (``bn_prune_filter: expansion_only``), rho ramped linearly from
  0 over the first pruning interval (the paper ramps over its first 25 epochs, its interval);
  channels are kept sorted by |gamma| (a function-preserving permutation), so a block's first
  channels are its important ones, and a ticket keeps, per block, the smallest width covering its
  live channels (|gamma| at least ``slim_threshold`` times the largest), the shallowest depth
  covering its live blocks and the smallest kernel holding all but ``kernel_tolerance`` of the
  depthwise weight mass;
* **progressive unstructured pruning**: every ``interval`` steps the supernet's sparsity steps up
  by ``step`` (10%) until the largest target, by global magnitude pruning over every conv and
  Linear weight. With ``reactivation``, pruned weights keep their values and are scored with the
  others at the next step, so they can come back (the code's ``set_zeros`` no-op); without it,
  pruned weights stay pruned.

Sub-networks are trained with the sandwich rule (largest, smallest and ``n_random`` random ones
per step, gradients summed), so every ticket is trained inside the supernet. When the sparsity has
stayed one interval at a requested target (at the end of training for the largest), that target's
ticket is cut out: the slimmed sub-network with its weights and masks, topped up by magnitude to
exactly the target sparsity where the cut kept relatively more weights. Tickets ride in the saved
model's metadata (``ticket:<sparsity>``, a base64 safetensors model of the sub-network).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.sparse.masks import get_mask, magnitude_masks, magnitude_prune, prunable_weights, raw_weight, set_mask
from nas.sparse.serialization import load_model, read_metadata, save_model
from nas.sparse.stats import weight_sparsity
from nas.specs import JobSpec
from nas.supertickets.elastic import ElasticMobileNet, InvertedResidual
from nas.supertickets.layout import Block, Layout
from nas.supertickets.schedule import rho_at, schedule
from nas.supertickets.train import Report, build_space, decode_bytes, encode_bytes, train
from nas.training import (
    Data,
    LastEpoch,
    TrialOutcome,
    end_trial,
    load_data,
    on_device,
    recalibrate_batchnorm,
    trial_device,
    trial_seed,
    weight_optimizer,
)

TICKETS_KEY = "supertickets"


@dataclass(frozen=True)
class Settings:
    """The two-in-one training's knobs (the strategy's params, resolved)."""

    targets: tuple[float, ...]
    step: float
    interval_epochs: float
    reactivation: bool
    rho: float
    slim_threshold: float
    kernel_tolerance: float
    sandwich: bool
    n_random: int
    calibration_batches: int = 20


def ticket_key(sparsity: float) -> str:
    """The metadata key of a target's ticket."""
    return f"ticket:{sparsity:.6g}"


def bn_l1(supernet: ElasticMobileNet) -> torch.Tensor:
    """``sum |gamma|`` over the expansion BatchNorms: network slimming's sparsity term."""
    return sum(bn.weight.abs().sum() for bn in supernet.expansion_bns())  # type: ignore[return-value]


def prune_step(supernet: nn.Module, sparsity: float, reactivation: bool) -> None:
    """Global magnitude pruning of every conv and Linear weight to ``sparsity``.

    Without reactivation the scores are the weights as the forward pass sees them, so pruned
    weights (zero) are the first to go again; with it, pruned weights keep their last values
    (restored after masking) and compete with the live ones.
    """
    if not reactivation:
        magnitude_prune(supernet, sparsity, {}, "global")
        return
    owners = prunable_weights(supernet)
    values = {name: raw_weight(module, attr).detach().clone() for name, (module, attr) in owners.items()}
    for name, mask in magnitude_masks(values, sparsity).items():
        module, attr = owners[name]
        set_mask(module, attr, mask)
        with torch.no_grad():
            raw_weight(module, attr).copy_(values[name])  # masked in the forward pass, kept for reactivation


def sort_channels(supernet: ElasticMobileNet, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Reorder every block's hidden channels by decreasing |gamma| of its expansion BatchNorm.

    The permutation is applied to the expand conv's outputs, both BatchNorms, the depthwise conv
    and the project conv's inputs (weights, masks and optimizer state), so the supernet computes
    the same function and a narrow sub-network's first channels are the important ones.
    """
    for stage in supernet.stages:
        for block in stage:
            order = torch.argsort(channel_importance(block), descending=True, stable=True)
            _permute_block(block, order, optimizer)


def channel_importance(block: InvertedResidual) -> torch.Tensor:
    """|gamma| of each hidden channel's expansion BatchNorm; 0 for a channel unstructured pruning cut off
    (its expand row, depthwise kernel or project column entirely pruned), which reads nothing or feeds nothing."""
    gamma = block.expand.bn.weight.detach().abs()
    connected = (
        block.expand.conv.weight.detach().flatten(1).ne(0).any(1)
        & block.dw.conv.weight.detach().flatten(1).ne(0).any(1)
        & block.project.conv.weight.detach().transpose(0, 1).flatten(1).ne(0).any(1)
    )
    return gamma * connected


def _permute_block(block: InvertedResidual, order: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    targets: list[tuple[torch.Tensor, int]] = []
    for module, dim in ((block.expand.conv, 0), (block.dw.conv, 0), (block.project.conv, 1)):
        targets.append((raw_weight(module, "weight"), dim))
        mask = get_mask(module, "weight")
        if mask is not None:
            targets.append((mask, dim))
    for bn in (block.expand.bn, block.dw.bn):
        targets += [(bn.weight, 0), (bn.bias, 0), (bn.running_mean, 0), (bn.running_var, 0)]
    with torch.no_grad():
        for tensor, dim in targets:
            tensor.copy_(tensor.index_select(dim, order))
            state = optimizer.state.get(tensor, {}) if optimizer is not None else {}
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == tensor.shape:
                    value.copy_(value.index_select(dim, order))


def ticket_layout(supernet: ElasticMobileNet, space: Any, settings: Settings) -> Layout:
    """The slimmed sub-network: per block the smallest width, kernel and stage depth the space offers that keep what lives.

    Call after :func:`sort_channels`, so live channels come first. A live channel has |gamma| at least
    ``slim_threshold`` times the largest and is still connected (:func:`channel_importance`).
    """
    p = space.params
    full = supernet.layout
    gammas = [channel_importance(block) for stage in supernet.stages for block in stage]
    threshold = settings.slim_threshold * float(torch.cat(gammas).max())
    stages: list[tuple[Block, ...]] = []
    index = 0
    for s, blocks in enumerate(full.stages):
        chosen: list[Block] = []
        live_depth = 1
        for b in range(len(blocks)):
            block = supernet.stages[s][b]
            live = int((gammas[index] >= threshold).sum())
            index += 1
            if live > 0:
                live_depth = b + 1
            cin = full.block_in(s, b)
            expand = min((e for e in p.expand_choices if cin * e >= live), default=max(p.expand_choices))
            chosen.append(Block(expand, _kernel(block, cin * expand, p.kernel_choices, settings.kernel_tolerance)))
        depth = min(d for d in p.depth_choices if d >= live_depth)  # the largest choice is len(blocks)
        stages.append(tuple(chosen[:depth]))
    return Layout(full.in_channels, full.num_classes, full.stem_channels, full.stem_stride, full.stage_channels,
                  full.stage_strides, tuple(stages))  # fmt: skip


def _kernel(block: InvertedResidual, hidden: int, choices: list[int], tolerance: float) -> int:
    """The smallest kernel whose centre holds all but ``tolerance`` of the live depthwise weights' magnitude."""
    weight = block.dw.conv.weight.detach()[:hidden].abs()  # as the forward pass sees it: pruned weights are 0
    total = float(weight.sum())
    size = weight.shape[-1]
    for k in sorted(choices):
        if k > size:
            continue
        off = (size - k) // 2
        inside = float(weight[:, :, off : off + k, off : off + k].sum())
        if total == 0.0 or total - inside <= tolerance * total:
            return k
    return max(k for k in choices if k <= size)


def cut_ticket(supernet: ElasticMobileNet, space: Any, settings: Settings, sparsity: float) -> tuple[dict[str, Any], nn.Module]:
    """The ticket at ``sparsity``: the slimmed sub-network's arch and standalone model (weights and masks)."""
    arch = space.arch_of(ticket_layout(supernet, space, settings))
    sub = space.extract(supernet, arch)
    if weight_sparsity(sub) < sparsity - 1e-9:
        magnitude_prune(sub, sparsity, {}, "global")  # same global criterion, on the ticket's own weights
    return arch, sub


@dataclass
class TwoInOne:
    """What one two-in-one training leaves: the supernet, its tickets and the schedule it followed."""

    supernet: ElasticMobileNet
    train_time: float
    tickets: list[dict[str, Any]]  # sparsity, arch, measured_sparsity, params, step
    ticket_models: dict[float, nn.Module]  # sparsity -> standalone ticket (weights and masks)
    schedule: list[dict[str, float]]  # step -> sparsity of every pruning step


def two_in_one(
    space: Any, data: Data, spec: JobSpec, settings: Settings, report: Report, seed: int,
    device: torch.device = torch.device("cpu"),
) -> TwoInOne:
    """Train the space's supernet two-in-one on ``data`` (``spec.training``'s optimizer, epochs and batch size),
    on ``device``; the tickets are cut out onto the CPU."""
    torch.manual_seed(seed)
    supernet = space.build_supernet(data.input_shape, data.num_classes).to(device)
    optimizer = weight_optimizer(supernet.parameters(), spec.training)

    steps_per_epoch = data.steps_per_epoch(spec.training.batch_size)
    total_steps = spec.training.epochs * steps_per_epoch
    interval = max(1, round(settings.interval_epochs * steps_per_epoch))
    levels = schedule(settings.targets, settings.step)
    prune_at = {(i + 1) * interval: level for i, level in enumerate(levels)}
    if max(prune_at) >= total_steps:
        raise ValueError(
            f"{len(levels)} pruning intervals of {interval} steps do not fit in {total_steps} training steps: "
            f"raise training.epochs or lower strategy.params.interval_epochs"
        )
    targets = {round(t, 6) for t in settings.targets}
    largest, smallest = space.largest(), space.smallest()
    rng = random.Random(seed)
    state = {"level": 0.0, "step": 0}
    tickets: list[dict[str, Any]] = []
    models: dict[float, nn.Module] = {}

    def step_fn(xb: torch.Tensor, yb: torch.Tensor) -> float:
        state["step"] += 1
        archs = [largest]
        if settings.sandwich:
            archs += [smallest] + [space.sample(rng) for _ in range(settings.n_random)]
        largest_loss = 0.0
        for i, arch in enumerate(archs):
            # Only the whole supernet updates the shared BatchNorm statistics; tickets recalibrate their own.
            supernet.set_active(None if i == 0 else space.layout(arch, data.input_shape, data.num_classes), track_stats=False)
            loss = F.cross_entropy(supernet(xb), yb)
            if i == 0:
                largest_loss = loss.item()
                loss = loss + rho_at(state["step"], settings.rho, interval) * bn_l1(supernet)
            loss.backward()
        supernet.set_active(None)
        return largest_loss

    def take_ticket(level: float, step: int) -> None:
        sort_channels(supernet, optimizer)
        arch, sub = cut_ticket(supernet, space, settings, level)
        models[level] = sub
        tickets.append(
            {
                "sparsity": level,
                "arch": arch,
                "measured_sparsity": weight_sparsity(sub),
                "params": sum(p.numel() for p in sub.parameters()),
                "step": step,
            }
        )

    def after_step(step: int) -> None:
        if step in prune_at:
            if state["level"] in targets:
                take_ticket(state["level"], step)  # a full interval at this target: its ticket
            sort_channels(supernet, optimizer)
            state["level"] = prune_at[step]
            prune_step(supernet, state["level"], settings.reactivation)

    train_time, _ = train(
        supernet,
        optimizer,
        data,
        spec,
        seed,
        report,
        spec.training.epochs,
        step_fn=step_fn,
        after_step=after_step,
        extra_metrics=lambda: {"target_sparsity": state["level"], "bn_l1": float(bn_l1(supernet).detach())},
    )
    supernet.set_active(None)
    # The last pruning step moved the weights under the running statistics: re-estimate them, as for tickets.
    recalibrate_batchnorm(supernet, data.x_train, spec.training.batch_size, settings.calibration_batches, seed)
    take_ticket(state["level"], total_steps)
    steps = [{"step": step, "sparsity": level} for step, level in sorted(prune_at.items())]
    return TwoInOne(supernet, train_time, tickets, models, steps)


def train_supernet(spec: JobSpec, settings: Settings, data_dir: Path, report: Report) -> TrialOutcome:
    """The supernet trial: two-in-one training, then the tickets; returns its ``TrialOutcome``."""
    device = trial_device()
    data = on_device(load_data(spec, data_dir), device)
    space = build_space(spec)
    last = LastEpoch(report, spec.training.epochs)
    result = two_in_one(space, data, spec, settings, last, trial_seed(spec, {"supertickets": "supernet"}), device)
    blobs = {ticket_key(level): encode_bytes(save_model(model, {})) for level, model in result.ticket_models.items()}
    outputs = {"tickets": result.tickets, "schedule": result.schedule, "supernet_arch": space.largest()}
    return end_trial(
        result.supernet,
        spec,
        data,
        space.largest(),
        result.train_time,
        last_epoch=last,
        extra_metadata={**blobs, TICKETS_KEY: json.dumps(result.tickets, sort_keys=True)},
        outputs=outputs,
    )


def use_ticket(ticket: nn.Module, data: Data, spec: JobSpec, retrain_epochs: int, report: Report, seed: int) -> float:
    """Keep a ticket as cut (``retrain_epochs == 0``: its one epoch is the trial ending's evaluation) or
    fine-tune it under its fixed mask; returns the training time. The trial ending recalibrates its
    BatchNorm statistics, which the supernet's many sub-networks accumulated."""
    if retrain_epochs == 0:
        report(1, {})
        return 0.0
    torch.manual_seed(seed)
    optimizer = weight_optimizer(ticket.parameters(), spec.training)
    train_time, _ = train(ticket, optimizer, data, spec, seed, report, retrain_epochs)
    return train_time


def evaluate_ticket(
    spec: JobSpec,
    space_arch: dict[str, Any],
    sparsity: float,
    retrain_epochs: int,
    data_dir: Path,
    report: Report,
    parent_model: bytes | None,
) -> TrialOutcome:
    """A ticket's trial: its weights from the supernet trial, evaluated as cut (``retrain_epochs == 0``)
    or after fine-tuning under its fixed mask, BatchNorm recalibrated by the trial ending."""
    if parent_model is None:
        raise ValueError("a SuperTickets ticket needs the supernet trial's model (its parent)")
    meta = read_metadata(parent_model)
    key = ticket_key(sparsity)
    if key not in meta:
        raise ValueError(f"the supernet trial has no ticket at sparsity {sparsity:g} (it has {_ticket_keys(meta)})")
    device = trial_device()
    data = on_device(load_data(spec, data_dir), device)
    space = build_space(spec)
    ticket = space.build(space_arch, data.input_shape, data.num_classes)
    load_model(ticket, decode_bytes(meta[key]))
    ticket.to(device)
    seed = trial_seed(spec, {"ticket": sparsity, "retrain": retrain_epochs})
    last = LastEpoch(report, max(retrain_epochs, 1))
    train_time = use_ticket(ticket, data, spec, retrain_epochs, last, seed)
    outputs = {"sparsity": sparsity, "retrain_epochs": retrain_epochs, "measured_sparsity": weight_sparsity(ticket)}
    return end_trial(ticket, spec, data, space_arch, train_time, last_epoch=last, outputs=outputs)


def _ticket_keys(meta: dict[str, str]) -> str:
    return ", ".join(k.removeprefix("ticket:") for k in sorted(meta) if k.startswith("ticket:")) or "none"
