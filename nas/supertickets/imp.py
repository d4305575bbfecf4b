"""One round of a lottery-ticket chain (Frankle & Carbin 2019; rewinding: Frankle et al. 2019), as a trial.

Round 0 trains the network dense from θ0 and remembers the rewind point θk (the weights after k
optimizer steps; θ0 when k = 0). Round r > 0 starts from its parent round's saved model: it prunes
``rate`` of each layer's surviving weights by their trained magnitude (the output layer at its own
rate; or one global threshold over all but the output layer), resets the survivors to θk and trains
again. The rewind point travels from round to round inside the saved model's metadata (a base64
safetensors string under ``lottery_rewind``), so the saved model stays a plain ``save_model`` file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.sparse.imp import clone_state, load_state, prune_survivors
from nas.sparse.masks import get_mask, magnitude_masks, masks, prunable_weights, raw_weight, set_mask
from nas.sparse.serialization import load_model, read_metadata
from nas.sparse.stats import weight_sparsity
from nas.specs import JobSpec
from nas.supertickets.train import Report, build_space, decode_tensors, encode_tensors, train
from nas.training import (
    LastEpoch,
    TrialOutcome,
    end_trial,
    load_data,
    on_device,
    trial_device,
    trial_seed,
    weight_optimizer,
)

REWIND_KEY = "lottery_rewind"
ROUND_KEY = "lottery"


@dataclass(frozen=True)
class RoundPlan:
    """What one round does: which chain, which round, how to prune and where to rewind."""

    chain: int
    round: int
    seed: int  # the chain's seed: with the space arch it fixes θ0
    rate: float  # fraction of each hidden layer's survivors pruned per round
    rate_output: float  # fraction of the output layer's survivors pruned per round
    rewind_step: int  # k: survivors go back to θk (0: θ0)
    scope: str  # "layer" (Frankle & Carbin) or "global" (open_lth)


def expected_survivors(n: int, rate: float, rounds: int) -> int:
    """Weights of an ``n``-weight layer left after ``rounds`` rounds at ``rate`` (layer-wise pruning)."""
    alive = n
    for _ in range(rounds):
        alive = max(1, alive - round(rate * alive))
    return alive


def run_round(
    spec: JobSpec, plan: RoundPlan, space_arch: dict[str, Any], data_dir: Path, report: Report, parent_model: bytes | None
) -> TrialOutcome:
    """Train round ``plan.round`` of a chain; returns its ``TrialOutcome`` (outputs say chain, round, sparsity)."""
    device = trial_device()
    data = on_device(load_data(spec, data_dir), device)
    space = build_space(spec)
    seed = trial_seed(spec, {"lottery_seed": plan.seed, "arch": space_arch})
    torch.manual_seed(seed)
    model = space.build(space_arch, data.input_shape, data.num_classes).to(device)  # θ0: the same in every round
    total_steps = spec.training.epochs * data.steps_per_epoch(spec.training.batch_size)
    if not 0 <= plan.rewind_step < total_steps:
        raise ValueError(
            f"strategy.params.rewind_step {plan.rewind_step} must be below the {total_steps} steps of a round"
        )

    rewind: dict[str, torch.Tensor] = {}

    def save_rewind_point(step: int) -> None:
        if step == plan.rewind_step and plan.round == 0:
            rewind.update(clone_state(model))

    max_steps = None
    if plan.round == 0:
        if parent_model is not None:
            raise ValueError("round 0 of a lottery chain trains from scratch; it has no parent")
        if plan.rewind_step == 0:
            rewind = clone_state(model)
    else:
        if parent_model is None:
            raise ValueError(f"round {plan.round} of chain {plan.chain} needs its parent round's model")
        rewind = _rewind_state(parent_model, plan)
        trained = space.build(space_arch, data.input_shape, data.num_classes)
        load_model(trained, parent_model)
        new_masks = next_masks(trained, plan)
        load_state(model, rewind)
        owners = prunable_weights(model)
        for name, mask in new_masks.items():
            set_mask(*owners[name], mask)  # zeroes the rewound values of the pruned weights
        max_steps = total_steps - plan.rewind_step  # rewound to step k: train the remaining T - k steps

    optimizer = weight_optimizer(model.parameters(), spec.training)
    steps = total_steps if max_steps is None else max_steps
    last = LastEpoch(report, min(spec.training.epochs, math.ceil(steps / data.steps_per_epoch(spec.training.batch_size))))
    train_time, _ = train(
        model,
        optimizer,
        data,
        spec,
        trial_seed(spec, {"lottery_seed": plan.seed, "arch": space_arch, "round": plan.round}),
        last,
        spec.training.epochs,
        max_steps=max_steps,
        after_step=save_rewind_point,
        extra_metrics=lambda: {"round": float(plan.round)},
    )
    info = {"chain": plan.chain, "round": plan.round, "rewind_step": plan.rewind_step, "seed": plan.seed}
    return end_trial(
        model,
        spec,
        data,
        space_arch,
        train_time,
        last_epoch=last,
        extra_metadata={REWIND_KEY: encode_tensors(rewind), ROUND_KEY: json.dumps(info, sort_keys=True)},
        outputs={**info, "sparsity": weight_sparsity(model), "densities": _densities(model)},
    )


def next_masks(trained: nn.Module, plan: RoundPlan) -> dict[str, torch.Tensor]:
    """The masks of the next round: ``rate`` of every layer's survivors go, the smallest trained magnitudes first.

    The output layer (the last prunable weight) loses ``rate_output`` of its survivors; with
    ``scope="global"`` the other layers share one threshold over all their survivors.
    """
    owners = prunable_weights(trained)
    output = list(owners)[-1]
    new: dict[str, torch.Tensor] = {}
    survivors: dict[str, torch.Tensor] = {}
    for name, (module, attr) in owners.items():
        weight, mask = raw_weight(module, attr), get_mask(module, attr)
        alive = weight.numel() if mask is None else int(mask.sum())
        if name == output or plan.scope == "layer":
            rate = plan.rate_output if name == output else plan.rate
            keep = max(1, alive - round(rate * alive))
            new[name] = prune_survivors(weight, mask, keep)
        else:
            alive_mask = torch.ones_like(weight, dtype=torch.bool) if mask is None else mask.bool()
            survivors[name] = weight.detach()[alive_mask]
            new[name] = alive_mask
    if survivors:
        n = sum(s.numel() for s in survivors.values())
        drop = round(plan.rate * n)
        kept = magnitude_masks(survivors, drop / n)
        for name, keep_mask in kept.items():
            mask = new[name].clone()
            mask[new[name]] = keep_mask
            new[name] = mask
    return new


def _rewind_state(parent_model: bytes, plan: RoundPlan) -> dict[str, torch.Tensor]:
    """θk from the parent round's model, after checking that the parent is the previous round of this chain."""
    meta = read_metadata(parent_model)
    if REWIND_KEY not in meta or ROUND_KEY not in meta:
        raise ValueError("the parent trial's model is not a lottery round (no rewind point in its metadata)")
    parent = json.loads(meta[ROUND_KEY])
    if parent["chain"] != plan.chain or parent["round"] != plan.round - 1:
        raise ValueError(
            f"round {plan.round} of chain {plan.chain} has as parent round {parent['round']} of chain {parent['chain']}"
        )
    return decode_tensors(meta[REWIND_KEY])


def _densities(model: nn.Module) -> dict[str, float]:
    return {name: float(mask.float().mean()) for name, mask in masks(model).items()}
