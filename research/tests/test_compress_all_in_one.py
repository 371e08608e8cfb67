"""All-in-One: nested masks, joint training, compact run-time switch and the DVFS ratio selector."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stereovoxel_research.compress.all_in_one import AllInOne
from stereovoxel_research.digits_task import DigitsCNN, DigitsCNNConfig
from stereovoxel_ros.core.occupancy.pruning_switch import (
    NestedMasks,
    PrunedModelSwitch,
    RatioSelector,
    SelectorConfig,
    levels_from_scores,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see the root conftest.py


RATIOS = (0.0, 0.25, 0.5, 0.75)


def _trained_all_in_one(steps: int = 15) -> AllInOne:
    torch.manual_seed(0)
    aio = AllInOne(DigitsCNN(DigitsCNNConfig(widths=(8, 16, 32))), RATIOS)
    opt = torch.optim.Adam(aio.parameters(), lr=1e-2)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(steps):
        loss = aio.joint_loss(x, y, F.cross_entropy)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return aio


def test_levels_give_nested_masks_with_the_right_counts():
    levels = levels_from_scores(torch.tensor([0.3, 2.0, -1.0, 0.9, 0.1, 1.5, 0.0, 0.7]), RATIOS)
    masks = NestedMasks(RATIOS, {"c": levels}, {"c": "c"})
    kept = [masks.keep("c", i) for i in range(len(RATIOS))]
    assert [int(k.sum()) for k in kept] == [8, 6, 4, 2]
    assert kept[3].nonzero().flatten().tolist() == [1, 5]  # the two highest scores
    for wide, narrow in itertools.pairwise(kept):
        assert bool((narrow <= wide).all())  # a higher ratio's kept set is inside the lower one's


def test_joint_training_moves_scores_and_masks_stay_nested():
    aio = _trained_all_in_one()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in aio.scores.values()
    )  # STE reaches scores
    masks = aio.export()
    assert set(masks.levels) == {"features.0", "features.3", "features.7"}
    assert masks.mask_points["features.3"] == "features.4"  # the mask sits after the conv's BN
    for conv, lv in masks.levels.items():
        width = len(lv)
        for i, r in enumerate(RATIOS):
            assert int(masks.keep(conv, i).sum()) == max(1, round(width * (1 - r)))
            if i:
                assert bool((masks.keep(conv, i) <= masks.keep(conv, i - 1)).all())


def test_switch_compact_models_match_masked_model_and_shrink():
    aio = _trained_all_in_one(steps=3)
    x = torch.randn(4, 1, 8, 8)
    stats = aio.calibrate_bn(lambda: iter([torch.randn(16, 1, 8, 8) for _ in range(3)]))
    masks = aio.export(stats)
    model = aio.detach_model()
    switch = PrunedModelSwitch(model, masks, example_input=x)
    params = []
    for i, r in enumerate(RATIOS):
        compact = switch.set_ratio(r)
        with torch.no_grad():
            assert torch.allclose(compact(x), switch.model(x), atol=1e-5)
        params.append(sum(p.numel() for p in compact.parameters()))
        if i:
            assert switch.compact_layers[i] == 3
    assert params == sorted(params, reverse=True) and params[-1] < params[0] / 3
    # the per-ratio BN statistics are what the masked model runs with
    assert torch.equal(dict(model.named_modules())["features.4"].running_mean, stats[-1]["features.4"][0])
    restored = NestedMasks.from_state(masks.state())
    assert restored.ratios == RATIOS and torch.equal(
        restored.levels["features.3"], masks.levels["features.3"]
    )


def test_switch_compacts_through_a_depthwise_block():
    """MobileNet-style expand 1x1 -> BN -> ReLU -> depthwise 3x3 -> BN -> ReLU -> project 1x1 shrinks too."""
    torch.manual_seed(0)
    block = nn.Sequential(
        nn.Conv2d(4, 16, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        nn.Conv2d(16, 8, 1),
    )
    aio = AllInOne(block, (0.0, 0.5), exclude=("3", "6"))
    assert aio.conv_names == ["0"]
    x = torch.randn(2, 4, 6, 6)
    stats = aio.calibrate_bn(lambda: iter([torch.randn(8, 4, 6, 6)]))
    switch = PrunedModelSwitch(aio.detach_model(), aio.export(stats), example_input=x)
    compact = switch.set_ratio(0.5)
    assert switch.compact_layers[1] == 1
    modules = dict(compact.named_modules())
    assert modules["0"].out_channels == 8 and modules["3"].groups == 8 and modules["4"].num_features == 8
    assert modules["6"].in_channels == 8
    with torch.no_grad():
        assert torch.allclose(compact(x), switch.model(x), atol=1e-5)


def test_switch_without_compaction_still_zeroes_pruned_channels():
    aio = _trained_all_in_one(steps=1)
    masks = aio.export()
    model = aio.detach_model().eval()
    switch = PrunedModelSwitch(model, masks)  # no example input: masks applied as multiplies
    switch.set_ratio(0.5)
    seen = {}
    dict(model.named_modules())["features.4"].register_forward_hook(lambda m, a, o: seen.update(out=o))
    with torch.no_grad():
        switch.module(torch.randn(2, 1, 8, 8))
    zero_channels = (seen["out"].abs().sum(dim=(0, 2, 3)) == 0).nonzero().flatten()
    assert zero_channels.tolist() == (~masks.keep("features.3", 2)).nonzero().flatten().tolist()


def test_selector_picks_the_least_pruned_ratio_on_target_with_hysteresis():
    sel = RatioSelector(
        RATIOS,
        [1.0, 0.7, 0.45, 0.25],
        SelectorConfig(10.0, hysteresis=0.15, smoothing=1.0, min_dwell_frames=2),
    )
    assert sel.update_latency(8.0) == 0.0  # on target unpruned
    assert sel.update_latency(20.0) == 0.5  # throttled 2x: 20·0.45 = 9 ms is the first that fits
    # at ratio 0.5 a 4.9 ms frame means ~10.9 ms unpruned: 0.25 would take 7.6 ms <= 8.5 ms → relax after dwell
    assert sel.update_latency(4.9, 0.5) == 0.5  # dwell: one frame since the switch
    assert sel.update_latency(4.9, 0.5) == 0.25
    # 9.5 ms unpruned fits the target but not the hysteresis band (<= 8.5 ms): stay at 0.25
    for _ in range(5):
        assert sel.update_latency(9.5 * 0.7) == 0.25
    assert sel.update_latency(7.0 * 0.7) == 0.0
    assert sel.switches == 3
    status = sel.status()
    assert status["pruning_ratio"] == "0.00" and status["pruning_switches"] == "3"


def test_selector_from_cpu_frequency():
    sel = RatioSelector(RATIOS, [1.0, 0.7, 0.45, 0.25], SelectorConfig(10.0, smoothing=1.0))
    assert sel.update_frequency(2000, 2000, latency_at_max_ms=9.0) == 0.0
    assert sel.update_frequency(800, 2000, latency_at_max_ms=9.0) == 0.75  # 22.5 ms unpruned → 5.6 ms at 0.75


def test_read_cpu_frequency_from_sysfs(tmp_path):
    for cpu, cur in (("cpu0", 1200000), ("cpu1", 1800000)):
        d = tmp_path / "devices/system/cpu" / cpu / "cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_cur_freq").write_text(f"{cur}\n")
        (d / "cpuinfo_max_freq").write_text("2400000\n")
    from stereovoxel_ros.core.tracing.hardware import CpuFrequency, HardwareSampler

    assert CpuFrequency(str(tmp_path))() == (1500.0, 2400.0)
    sample = HardwareSampler(str(tmp_path)).sample()
    assert (sample["cpu_freq_mhz"], sample["cpu_freq_max_mhz"]) == (1500.0, 2400.0)


def test_all_in_one_rejects_bad_ratios_and_models():
    from stereovoxel_research.compress.all_in_one import AllInOneError

    with pytest.raises(AllInOneError, match="ratios"):
        AllInOne(DigitsCNN(), (0.5, 0.25))
    with pytest.raises(AllInOneError, match="prunable"):
        AllInOne(nn.Sequential(nn.Linear(3, 3)), RATIOS)
