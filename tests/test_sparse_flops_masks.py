"""Training FLOP meter (per-layer split, frozen and sparse accounting) and dynamic sparse masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from stereovoxel_ros.offline.train.sparse_training import (
    DynamicSparseTraining,
    SparseConfig,
    SparseMasks,
    SparseTrainingError,
    erk_densities,
)
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


def test_dynamic_sparse_training_moves_masks_and_keeps_sparsity():
    from stereovoxel_ros.offline.train.continual_benchmark import train_with_method

    torch.manual_seed(0)
    model = _net()
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 10, (64,))
    method = DynamicSparseTraining(SparseConfig(sparsity=0.8, update_interval=2, min_weights=100))
    train_with_method(model, method, x, y, epochs=3, batch_size=16)
    info = method.finalize(model)
    assert info["mask_updates"] >= 2 and sum(u["moved"] for u in method.updates) > 0
    for name, mask in method.masks.masks.items():
        weight = dict(model.named_modules())[name].weight
        assert bool((weight[~mask] == 0).all())
    assert info["weight_density"] == pytest.approx(0.2, abs=0.01)
    assert 0 < info["train_flops"] < 0.6 * info["train_flops_executed"]
    # per-sample cached counting (used for fixed-size inputs) gives the same totals as counting every step
    model = _net()
    cached = DynamicSparseTraining(SparseConfig(sparsity=0.8, update_interval=2, min_weights=100))
    cached.cache_flops = True
    train_with_method(model, cached, x[:56], y[:56], epochs=3, batch_size=16)  # last batch of 8
    model = _net()
    exact = DynamicSparseTraining(SparseConfig(sparsity=0.8, update_interval=2, min_weights=100))
    train_with_method(model, exact, x[:56], y[:56], epochs=3, batch_size=16)
    a, b = cached.finalize(model), exact.finalize(model)
    assert a["train_flops"] == pytest.approx(b["train_flops"], rel=1e-6)
    assert a["train_flops_executed"] == b["train_flops_executed"]
