"""SuperTickets: the progressive schedule, BN-L1 slimming, reactivation, tickets, lineage, restart, and real trials."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from nas import registry
from nas.specs import JobSpec, Trial, TrialState
from nas.strategies.base import WAIT
from nas.strategies.supertickets import SuperTickets
from nas.supertickets.schedule import rho_at, schedule
from search_spaces.supernet import SupernetSpace

DIGITS = ((1, 8, 8), 10)
TINY_SPACE = {"stem_channels": 4, "stage_channels": [8, 12], "depth_choices": [1, 2], "expand_choices": [1, 2], "kernel_choices": [3, 5]}


def _spec(**strategy: object) -> JobSpec:
    params = {"targets": [0.5], "step": 0.25, "interval_epochs": 0.5, "retrain_epochs": 1, "calibration_batches": 4}
    return JobSpec.model_validate(
        {
            "search_space": {"name": "supernet", "params": TINY_SPACE},
            "strategy": {"name": "supertickets", "params": {**params, **strategy}},
            "dataset": {"name": "digits"},
            "training": {"epochs": 3, "batch_size": 128, "lr": 0.005},
            "budget": {"max_trials": 5},
        }
    )


def _strategy(spec: JobSpec) -> SuperTickets:
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    return SuperTickets(SuperTickets.Params.model_validate(spec.strategy.params), space, spec)


def _trial(number: int, arch: dict, state: TrialState, parent: str | None = None, outputs: dict | None = None) -> Trial:
    return Trial(
        id=f"t{number}",
        job_id="job",
        number=number,
        state=state,
        arch=arch,
        parent_id=parent,
        outputs=outputs or {},
        created_at=datetime.now(timezone.utc),
    )


# -- schedule and slimming ---------------------------------------------------------------------


def test_schedule_adds_ten_percent_per_interval_up_to_the_target() -> None:
    assert schedule([0.9], 0.1) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert schedule([0.5], 0.1) == [0.1, 0.2, 0.3, 0.4, 0.5]
    # a target off the grid is a level of its own, and the ramp stops at the largest target
    assert schedule([0.75, 0.95], 0.1) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95]
    assert rho_at(0, 1e-4, 10) == 0.0 and rho_at(5, 1e-4, 10) == pytest.approx(5e-5) and rho_at(50, 1e-4, 10) == 1e-4


def test_bn_l1_term_is_the_expansion_scales_and_pushes_them_to_zero(torch_single_thread: None) -> None:
    import torch

    from nas.supertickets.two_in_one import bn_l1

    space = SupernetSpace(SupernetSpace.Params(**TINY_SPACE))
    supernet = space.build_supernet(*DIGITS)
    bns = supernet.expansion_bns()
    assert len(bns) == 4  # one per block: 2 stages x 2 blocks
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(-1, 1)
    term = bn_l1(supernet)
    assert term.item() == pytest.approx(sum(bn.weight.abs().sum().item() for bn in bns), rel=1e-6)
    term.backward()
    for bn in bns:
        assert torch.equal(bn.weight.grad, bn.weight.sign())  # d(sum|g|)/dg: slimming's subgradient
    assert supernet.stem.bn.weight.grad is None  # only expansion channels are slimmed


def test_prune_step_is_global_and_reactivation_lets_weights_return(torch_single_thread: None) -> None:
    import torch

    from nas.sparse.masks import masks, prunable_weights, raw_weight
    from nas.sparse.stats import weight_sparsity
    from nas.supertickets.two_in_one import prune_step

    space = SupernetSpace(SupernetSpace.Params(**TINY_SPACE))
    for reactivation in (False, True):
        torch.manual_seed(0)
        supernet = space.build_supernet(*DIGITS)
        prune_step(supernet, 0.3, reactivation)
        assert weight_sparsity(supernet) == pytest.approx(0.3, abs=1e-4)
        before = {name: mask.clone() for name, mask in masks(supernet).items()}
        name = "stages.1.0.expand.conv.weight"
        module, attr = prunable_weights(supernet)[name]
        pruned = (before[name] == 0).nonzero()[0].tolist()
        with torch.no_grad():
            raw_weight(module, attr)[tuple(pruned)] = 100.0  # a pruned weight that has grown (reactivation keeps values)
        prune_step(supernet, 0.5, reactivation)
        assert weight_sparsity(supernet) == pytest.approx(0.5, abs=1e-4)
        after = masks(supernet)
        assert bool(after[name][tuple(pruned)]) is reactivation
        if not reactivation:  # pruned weights stay pruned
            assert all(bool((after[n] <= before[n]).all()) for n in before)


def test_sort_channels_preserves_the_function_and_moves_masks_and_optimizer_state(torch_single_thread: None) -> None:
    import torch

    from nas.sparse.masks import get_mask
    from nas.supertickets.two_in_one import prune_step, sort_channels

    space = SupernetSpace(SupernetSpace.Params(**TINY_SPACE))
    torch.manual_seed(0)
    supernet = space.build_supernet(*DIGITS)
    optimizer = torch.optim.Adam(supernet.parameters(), lr=0.01)
    x = torch.randn(16, 1, 8, 8)
    for _ in range(3):
        optimizer.zero_grad()
        supernet(x).square().mean().backward()
        optimizer.step()
    prune_step(supernet, 0.4, False)
    supernet.eval()
    expected = supernet(x)
    block = supernet.stages[0][1]
    gamma = block.expand.bn.weight.detach().clone()
    mask = get_mask(block.dw.conv, "weight").clone()
    moment = optimizer.state[block.expand.bn.weight]["exp_avg"].clone()
    sort_channels(supernet, optimizer)
    assert torch.allclose(supernet(x), expected, atol=1e-5)
    order = torch.argsort(gamma.abs() * (mask.flatten(1).ne(0).any(1)), descending=True, stable=True)
    assert torch.equal(get_mask(block.dw.conv, "weight"), mask[order])
    assert torch.equal(optimizer.state[block.expand.bn.weight]["exp_avg"], moment[order])


def test_ticket_layout_keeps_live_channels_blocks_and_kernel_centres(torch_single_thread: None) -> None:
    import torch

    from nas.supertickets.two_in_one import Settings, cut_ticket, sort_channels, ticket_layout

    space = SupernetSpace(SupernetSpace.Params(**TINY_SPACE))
    supernet = space.build_supernet(*DIGITS)
    settings = Settings((0.5,), 0.1, 1.0, False, 1e-4, 0.1, 0.05, True, 1, 4)
    with torch.no_grad():
        supernet.stages[0][0].expand.bn.weight[4:] = 0.001  # block 0.0: 4 of 8 hidden channels live -> expand 1
        supernet.stages[1][1].expand.bn.weight[:] = 0.0  # block 1.1 dead -> stage 1 depth 1
        outer = torch.ones(5, 5, dtype=torch.bool)
        outer[1:4, 1:4] = False
        for stage in supernet.stages:
            for block in stage:
                block.dw.conv.weight[:, :, outer] = 0.0  # only the 3x3 centres carry weight -> kernel 3
        supernet.stages[0][1].dw.conv.weight[:, :, 0, 0] = 1.0  # except block 0.1 -> kernel 5
    sort_channels(supernet)
    layout = ticket_layout(supernet, space, settings)
    assert [len(blocks) for blocks in layout.stages] == [2, 1]
    assert layout.stages[0][0].expand == 1 and layout.stages[0][1].expand == 2
    assert [b.kernel for blocks in layout.stages for b in blocks] == [3, 5, 3]
    arch, ticket = cut_ticket(supernet, space, settings, 0.5)
    assert arch == space.arch_of(layout)
    from nas.sparse.stats import weight_sparsity

    assert weight_sparsity(ticket) == pytest.approx(0.5, abs=1e-3)  # topped up to the target


# -- the strategy ------------------------------------------------------------------------------


def test_check_spec_refuses_other_spaces_short_schedules_and_budgets() -> None:
    base = _spec().model_dump(mode="json")
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({**base, "search_space": {"name": "sparse_mlp", "params": {}}})
    assert ("search_space", "name") in [e["loc"] for e in info.value.errors()]
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({**base, "training": {**base["training"], "epochs": 1}})
    assert [e["loc"] for e in info.value.errors()] == [("strategy", "params", "interval_epochs")]
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({**base, "budget": {**base["budget"], "max_trials": 2}})
    assert [e["loc"] for e in info.value.errors()] == [("budget", "max_trials")]
    with pytest.raises(ValidationError, match="strictly between 0 and 1"):
        _spec(targets=[0.5, 1.0])


def _tickets_outputs(space: SupernetSpace) -> dict:
    return {"tickets": [{"sparsity": 0.5, "arch": space.smallest()}, {"sparsity": 0.9, "arch": space.largest()}]}


def test_lineage_waits_for_the_supernet_then_proposes_every_ticket_twice() -> None:
    spec = _spec(targets=[0.5, 0.9])
    strategy = _strategy(spec)
    root = strategy.ask()
    assert root.parent_id is None and root.arch["ticket"] == "supernet"
    assert SuperTickets.space_arch(root.arch) == strategy.space.largest()
    assert strategy.ask() is WAIT
    strategy.tell(_trial(0, root.arch, TrialState.complete, outputs=_tickets_outputs(strategy.space)))
    plans = []
    while (plan := strategy.ask()) is not None:
        plans.append(plan)
    assert [(p.arch["ticket"], p.arch["ticket_sparsity"]) for p in plans] == [
        ("direct", 0.5), ("retrain", 0.5), ("direct", 0.9), ("retrain", 0.9)
    ]  # fmt: skip
    assert all(p.parent_id == "t0" for p in plans)
    assert SuperTickets.space_arch(plans[0].arch) == strategy.space.smallest()
    assert SuperTickets.planned_density(plans[0].arch) == pytest.approx(0.5)
    assert SuperTickets.planned_density(root.arch) == pytest.approx(0.1)  # the supernet ends at the largest target


def test_a_failed_supernet_ends_the_job() -> None:
    strategy = _strategy(_spec())
    root = strategy.ask()
    strategy.tell(_trial(0, root.arch, TrialState.failed))
    assert strategy.ask() is None


def test_replay_after_restart_never_repeats_a_trial() -> None:
    spec = _spec(targets=[0.5, 0.9])
    space = registry.search_spaces.create("supernet", spec.search_space.params)
    outputs = _tickets_outputs(space)
    root_arch = {**space.largest(), "ticket": "supernet", "ticket_sparsity": 0.9}
    history = [
        _trial(0, root_arch, TrialState.complete, outputs=outputs),
        _trial(1, {**space.smallest(), "ticket": "direct", "ticket_sparsity": 0.5}, TrialState.complete, "t0"),
        _trial(2, {**space.smallest(), "ticket": "retrain", "ticket_sparsity": 0.5}, TrialState.running, "t0"),
    ]
    strategy = SuperTickets.from_history(strategy_params(spec), space, spec, history)
    rest = []
    while (plan := strategy.ask()) is not None:
        rest.append((plan.arch["ticket"], plan.arch["ticket_sparsity"], plan.parent_id))
    assert rest == [("direct", 0.9, "t0"), ("retrain", 0.9, "t0")]
    # restarted while the supernet itself was still running: wait for it, never start a second one
    strategy = SuperTickets.from_history(strategy_params(spec), space, spec, [_trial(0, root_arch, TrialState.running)])
    assert strategy.ask() is WAIT
    strategy.tell(_trial(0, root_arch, TrialState.complete, outputs=outputs))
    assert strategy.ask().arch["ticket"] == "direct"


def strategy_params(spec: JobSpec) -> SuperTickets.Params:
    return SuperTickets.Params.model_validate(spec.strategy.params)


# -- real trials on digits ---------------------------------------------------------------------


def test_supernet_trial_and_its_tickets_run_on_digits(torch_single_thread: None, tmp_path: Path) -> None:
    from nas.sparse.serialization import read_metadata
    from nas.training import load_data, load_trained_model

    spec = _spec(targets=[0.25, 0.5])
    strategy = _strategy(spec)
    root = strategy.ask()
    epochs: list[dict] = []
    outcome = SuperTickets.run_trial(spec, root.arch, tmp_path, lambda e, m: epochs.append(m), None)
    # progressive pruning: +25% every half epoch up to the largest target, reported per epoch
    assert [s["sparsity"] for s in outcome.outputs["schedule"]] == [0.25, 0.5]
    steps = [s["step"] for s in outcome.outputs["schedule"]]
    assert steps[1] == 2 * steps[0]
    # each epoch reports the target its last step reached: the training part (the validation split held
    # out) takes 10 steps an epoch at batch 128, so the half-epoch prunings fall at steps 5 and 10
    per_epoch = load_data(spec, tmp_path).steps_per_epoch(spec.training.batch_size)
    reached = [max((s["sparsity"] for s in outcome.outputs["schedule"] if s["step"] <= e * per_epoch), default=0.0)
               for e in (1, 2, 3)]
    assert per_epoch == 10 and steps == [5, 10] and reached == [0.5, 0.5, 0.5]
    assert [round(m["target_sparsity"], 2) for m in epochs] == reached
    assert outcome.metrics["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert len(epochs) == 3 and all("bn_l1" in m for m in epochs)
    tickets = outcome.outputs["tickets"]
    assert [t["sparsity"] for t in tickets] == [0.25, 0.5]
    assert all(t["measured_sparsity"] == pytest.approx(t["sparsity"], abs=1e-3) for t in tickets)
    assert set(read_metadata(outcome.model_bytes)) >= {"ticket:0.25", "ticket:0.5"}
    load_trained_model(outcome.model_bytes)  # the saved supernet is a plain model of the space

    strategy.tell(_trial(0, root.arch, TrialState.complete, outputs=outcome.outputs))
    children = [strategy.ask() for _ in range(4)]
    assert strategy.ask() is None
    for plan in (children[2], children[3]):  # the 50% ticket, as cut and retrained
        reports: list[tuple[int, dict]] = []
        child = SuperTickets.run_trial(spec, plan.arch, tmp_path, lambda e, m: reports.append((e, m)), outcome.model_bytes)
        assert child.metrics["sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert [e for e, _ in reports] == [1]  # as cut: one evaluation; retrained: retrain_epochs=1 epoch
        assert child.metrics["accuracy"] > 0.2  # far above chance (0.1) on digits
        model = load_trained_model(child.model_bytes)
        assert type(model).__name__ == "MobileNet"
    with pytest.raises(ValueError, match="no ticket at sparsity 0.7"):
        SuperTickets.run_trial(spec, {**plan.arch, "ticket_sparsity": 0.7}, tmp_path, lambda e, m: None, outcome.model_bytes)


def test_strategy_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, nas.strategies.supertickets, nas.strategies.lottery_ticket; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
