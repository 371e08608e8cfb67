"""Training FLOP meter (per-layer split, frozen and sparse accounting) and dynamic sparse masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from stereovoxel_ros.offline.train.sparse_training import (
    SparseConfig,
    SparseMasks,
    SparseTrainingError,
    erk_densities,
    options_by_config,
)
from stereovoxel_ros.offline.train.spfde import SpFDEConfig, make_method
from stereovoxel_ros.offline.train.training_flops import TrainingFlopMeter, count_step_flops


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10),
    )  # fmt: skip


def _step(model: nn.Module, x: torch.Tensor):
    return lambda: F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long)).backward()


def test_layer_split_matches_torch_total_and_conv_formula():
    model, x = _net(), torch.randn(4, 3, 8, 8)
    step = count_step_flops(model, _step(model, x))
    with FlopCounterMode(display=False) as ref:
        _step(model, x)()
    assert step.total == ref.get_total_flops()
    conv2 = step.layers["2"]
    assert conv2.forward == 2 * 4 * 8 * 8 * 32 * 16 * 9  # 2·B·H·W·Cout·Cin·k²
    assert conv2.grad_input == conv2.forward and conv2.grad_weight == conv2.forward
    first = step.layers["0"]
    assert first.grad_input == 0 and first.grad_weight == first.forward  # the image needs no gradient
    lin = step.layers["8"]
    assert lin.forward == lin.grad_input == lin.grad_weight == 2 * 4 * 24 * 10


def test_frozen_front_has_no_backward_and_sparsity_scales_layers():
    model, x = _net(), torch.randn(4, 3, 8, 8)
    for p in model[0].parameters():
        p.requires_grad_(False)
    for p in model[2].parameters():
        p.requires_grad_(False)
    step = count_step_flops(model, _step(model, x))
    assert step.layers["0"].grad_weight == step.layers["2"].grad_weight == step.layers["2"].grad_input == 0
    assert step.layers["6"].grad_weight > 0
    full = step.sparse_total()
    assert full == step.total
    half = step.sparse_total({"2": 0.5})
    assert half == pytest.approx(full - 0.5 * step.layers["2"].forward)
    dense_wgrad = step.sparse_total({"6": 0.25}, {"6": 1.0})
    l6 = step.layers["6"]
    assert dense_wgrad == pytest.approx(full - 0.75 * (l6.forward + l6.grad_input))


def test_meter_ignores_eval_mode_and_rejects_double_begin():
    model, x = _net(), torch.randn(2, 3, 8, 8)
    meter = TrainingFlopMeter(model)
    meter.begin()
    model.eval()
    with torch.no_grad():
        model(x)
    model.train()
    _step(model, x)()
    step = meter.end()
    assert meter.executed == step.total > 0
    meter.begin()
    with pytest.raises(RuntimeError, match="already"):
        meter.begin()
    meter.close()


def test_erk_densities_hit_target_and_cap_at_one():
    shapes = {"a": (8, 3, 3, 3), "b": (64, 64, 3, 3), "c": (10, 64)}
    d = erk_densities(shapes, 0.2)
    numel = {k: int(np.prod(s)) for k, s in shapes.items()}
    total = sum(d[k] * numel[k] for k in shapes) / sum(numel.values())
    assert total == pytest.approx(0.2)
    assert d["a"] == 1.0 and d["b"] < d["c"] <= 1.0


def test_masks_prune_regrow_keep_density_and_zero_new_weights():
    model = _net()
    masks = SparseMasks(model, SparseConfig(sparsity=0.75, distribution="uniform", min_weights=300))
    assert set(masks.masks) == {"0", "2", "6"}  # the 240-weight classifier stays dense
    w = model[2].weight
    before = masks.masks["2"].clone()
    assert float((w != 0).float().mean()) == pytest.approx(0.25, abs=1e-3)
    grow_score = torch.rand(w.shape)
    moved = masks.prune_and_regrow("2", 100, w.detach().abs(), grow_score)
    after = masks.masks["2"]
    assert moved > 0 and int(after.sum()) == int(before.sum())
    grown = after & ~before
    assert int(grown.sum()) == moved and bool((w[grown] == 0).all()) and bool((w[~after] == 0).all())
    with pytest.raises(SparseTrainingError, match="sparsity"):
        SparseConfig(sparsity=1.5)


def test_method_options_split_over_the_configs_and_unknown_ones_are_named():
    sparse, spfde = options_by_config(
        (SparseConfig, SpFDEConfig), {"sparsity": 0.5, "freeze_schedule": [[0.2, 0.4]]}, "spfde"
    )
    assert sparse == {"sparsity": 0.5} and spfde == {"freeze_schedule": [[0.2, 0.4]]}
    assert make_method(freeze_schedule=[[0.2, 0.4]]).spfde.freeze_schedule == ((0.2, 0.4),)
    with pytest.raises(SparseTrainingError, match=r"unknown spfde options \['bogus'\]"):
        options_by_config((SparseConfig, SpFDEConfig), {"sparsity": 0.5, "bogus": 1}, "spfde")
