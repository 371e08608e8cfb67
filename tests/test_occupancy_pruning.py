"""Run-time All-in-One pruning of StereoVoxelNet: the all_in_one fine-tuning method, the predictor's ratio
switch and the occupancy node's ``pruning`` parameters and diagnostics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_occupancy_node import _Camera, _occupancy_node, _wait, graph  # noqa: F401 (graph: fixture)
from test_svn_train import CAMERA, TINY_GRID, _dataset

from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID


def _train_all_in_one(root: Path) -> Path:
    """A tiny StereoVoxelNet fine-tuned two steps with all_in_one; returns its final.pt."""
    from stereovoxel_ros.core.models.stereovoxelnet import create_stereovoxelnet
    from stereovoxel_ros.offline.train.tasks import OccupancyTask, PreparedStereoSet
    from stereovoxel_ros.offline.train.trainer import TrainConfig, Trainer, make_training_method

    torch.manual_seed(0)
    data = _dataset(root / "data")
    model = create_stereovoxelnet("stereovoxelnet_fast", TINY_GRID, input_size=(64, 32))
    train = PreparedStereoSet(data, "train", (64, 32), with_depth=True, progress=False)
    method = make_training_method("all_in_one", ratios="0.25,0.5", bn_batches=1, bn_batch_size=2)
    cfg = TrainConfig(epochs=1, batch_size=4, progress=False, warmup_steps=1)  # one step
    Trainer(OccupancyTask(model, "stereovoxelnet_fast"), train, None, root / "run", cfg, method).fit()
    return root / "run" / "final.pt"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for this module (the predictor would set 2): on a loaded 2-core machine two
    spinning OpenMP threads make these tiny models tens of times slower."""
    threads, original = torch.get_num_threads(), torch.set_num_threads
    torch.set_num_threads(1)
    torch.set_num_threads = lambda n: None
    try:
        yield
    finally:
        torch.set_num_threads = original
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pruned_checkpoint(tmp_path_factory, one_torch_thread) -> Path:
    return _train_all_in_one(tmp_path_factory.mktemp("all_in_one"))


@pytest.fixture(scope="module")
def node_checkpoints(tmp_path_factory, one_torch_thread) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("node_checkpoints")
    return {
        "masked": _node_checkpoint(root / "masked.pt"),
        "plain": _node_checkpoint(root / "plain.pt", masks=False),
    }


@pytest.mark.slow
def test_all_in_one_method_stores_nested_masks(pruned_checkpoint: Path) -> None:
    from stereovoxel_ros.core.models.stereovoxelnet import load_checkpoint
    from stereovoxel_ros.core.occupancy.pruning_switch import NestedMasks

    loaded = load_checkpoint(pruned_checkpoint, TINY_GRID)
    assert loaded.meta["method"] == "all_in_one"
    masks = NestedMasks.from_state(loaded.meta["pruning_masks"])
    assert masks.ratios == (0.0, 0.25, 0.5)  # ratio 0 is always added
    assert {"correlation", "frustum", "encoder.c0", "extractor.backbone.stem"} <= set(masks.levels)
    assert any(n.startswith("decoder.mlps.") for n in masks.levels)
    for levels in masks.levels.values():
        kept = [int((levels > i).sum()) for i in range(3)]
        assert kept[0] == len(levels) > kept[1] > kept[2] >= 1
    for name in masks.levels:  # nested: a channel kept at a higher ratio is kept at every lower one
        assert all(bool(torch.all(masks.keep(name, i) >= masks.keep(name, i + 1))) for i in range(2))
    assert len(masks.bn_stats) == 3 and masks.bn_stats[0]
    # the plain weights are the ratio-0 network: its calibrated BN statistics are the model's own
    modules = dict(loaded.model.named_modules())
    for name, (mean, var) in masks.bn_stats[0].items():
        assert torch.equal(modules[name].running_mean, mean) and torch.equal(modules[name].running_var, var)
    summary = loaded.meta["all_in_one"]
    assert summary["pruned_groups"] == len(masks.levels) and summary["bn_calibrated"]


def test_method_options_are_checked() -> None:
    from stereovoxel_ros.offline.train.trainer import TrainingError, make_training_method

    with pytest.raises(TrainingError, match="ascending"):
        make_training_method("all_in_one", ratios="0.5,0.25")
    with pytest.raises(TrainingError, match="parts"):
        make_training_method("all_in_one", parts="head")
    with pytest.raises(TrainingError, match="l1_baseline"):
        make_training_method("all_in_one", l1_baseline="maybe")
    assert make_training_method("all_in_one", ratios=0.5).ratios == (0.0, 0.5)


def _pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    left = rng.integers(0, 255, (CAMERA.height, CAMERA.width, 3), dtype=np.uint8)
    return left, np.roll(left, -2, axis=1)


def _masked_reference(path: Path, ratio_index: int):
    """The checkpoint's model with the masks applied as multiplies (no compaction) and the ratio's BN stats."""
    from stereovoxel_ros.core.models.stereovoxelnet import load_checkpoint
    from stereovoxel_ros.core.occupancy.channel_groups import check_levels
    from stereovoxel_ros.core.occupancy.occupancy_predictor import checkpoint_masks
    from stereovoxel_ros.offline.train.all_in_one_finetune import GroupMasks

    loaded = load_checkpoint(path, TINY_GRID)
    masks = checkpoint_masks(loaded.meta)
    model = loaded.model.eval()
    modules = dict(model.named_modules())
    for name, (mean, var) in masks.bn_stats[ratio_index].items():
        modules[name].running_mean.copy_(mean)
        modules[name].running_var.copy_(var)
    hooks = GroupMasks(model, list(check_levels(model, masks.levels).values()), masks.ratios)
    with torch.no_grad():  # the levels as scores rank exactly the exported kept sets
        for name, levels in masks.levels.items():
            hooks.scores[name.replace(".", "__")].copy_(levels.float())
    hooks.ratio_index = ratio_index
    return model, hooks


@pytest.mark.slow
def test_predictor_switches_ratio_with_outputs_of_the_masked_model(pruned_checkpoint: Path) -> None:
    from stereovoxel_ros.core.models.stereovoxelnet import load_checkpoint
    from stereovoxel_ros.core.occupancy.occupancy_predictor import PredictorError, StereoVoxelNetPredictor

    predictor = StereoVoxelNetPredictor(pruned_checkpoint, TINY_GRID, pruning=True)
    assert predictor.pruning_ratios == (0.0, 0.25, 0.5) and predictor.pruning_ratio == 0.0
    left, right = _pair()
    inputs = predictor.prepare(left, right, CAMERA)
    unpruned = load_checkpoint(pruned_checkpoint, TINY_GRID).model.eval()
    outputs, params = {}, {}
    with torch.no_grad():
        plain = torch.sigmoid(unpruned(*inputs)[-1])
        for i, ratio in enumerate(predictor.pruning_ratios):
            predictor.set_pruning_ratio(ratio)
            reference, hooks = _masked_reference(pruned_checkpoint, i)
            got = torch.sigmoid(predictor.model(*inputs)[-1])
            # compact convs (pruned channels removed, BN folded) sum in another order: float noise only
            torch.testing.assert_close(got, torch.sigmoid(reference(*inputs)[-1]), rtol=0, atol=1e-4)
            hooks.remove()
            outputs[ratio] = got
            params[ratio] = sum(p.numel() for p in predictor.model.parameters())
            result = predictor.predict(left, right, CAMERA)
            assert result.stats["pruning_ratio"] == ratio
    torch.testing.assert_close(outputs[0.0], plain, rtol=0, atol=1e-4)  # ratio 0 = the unpruned model
    # pruned ratios are physically smaller networks, not masks: fewer weights, fewer correlation groups
    assert params[0.0] > params[0.25] > params[0.5]
    assert predictor.pruning.models[2].config.correlation_groups < unpruned.config.correlation_groups
    assert not torch.equal(outputs[0.0], outputs[0.5])
    with pytest.raises(PredictorError, match="not among the trained ratios"):
        predictor.set_pruning_ratio(0.3)
    assert len(predictor.profile_pruning(repeats=1)) == 3 and predictor.pruning_ratio == 0.5


def test_predictor_refuses_pruning_without_masks(tmp_path: Path) -> None:
    from stereovoxel_ros.core.models.stereovoxelnet import create_stereovoxelnet, save_checkpoint
    from stereovoxel_ros.core.occupancy.occupancy_predictor import PredictorError, StereoVoxelNetPredictor

    path = tmp_path / "plain.pt"
    save_checkpoint(path, create_stereovoxelnet("stereovoxelnet_fast", TINY_GRID, input_size=(64, 32)), "x")
    with pytest.raises(PredictorError, match=r"carries no pruning masks.*--method all_in_one"):
        StereoVoxelNetPredictor(path, TINY_GRID, pruning=True)
    assert StereoVoxelNetPredictor(path, TINY_GRID).pruning_ratios == ()


# ---- node ------------------------------------------------------------------------------------------------


def _node_checkpoint(path: Path, masks: bool = True) -> Path:
    """A small untrained StereoVoxelNet in the node's default grid, with exported (uncalibrated) masks."""
    from stereovoxel_ros.core.models.stereovoxelnet import create_stereovoxelnet, save_checkpoint
    from stereovoxel_ros.offline.train.all_in_one_finetune import make_method
    from stereovoxel_ros.offline.train.trainer import TrainContext

    torch.manual_seed(0)
    model = create_stereovoxelnet("stereovoxelnet_fast", DEFAULT_GRID, input_size=(64, 32)).eval()
    meta = {}
    if masks:
        method = make_method(ratios="0,0.25,0.5")
        optimizer = torch.optim.AdamW(model.parameters())
        method.setup(model, optimizer, TrainContext(1, 1, 1, 0, path.parent, 0))
        meta = method.finalize(model)
    save_checkpoint(path, model, "stereovoxelnet_fast", meta)
    return path


def test_pruning_parameter_is_validated() -> None:
    from test_occupancy_node import _defaults

    from stereovoxel_ros.ros.occupancy_parameters import OccupancyConfigError, OccupancyNodeConfig

    config = OccupancyNodeConfig.from_parameters(_defaults() | {"pruning": " 0.25 "})
    assert (config.pruning, config.pruning_ratio) == ("fixed", 0.25)
    assert OccupancyNodeConfig.from_parameters(_defaults()).pruning == "off"
    for value, why in [
        ("fast", "off, auto or a pruning ratio"),
        ("1.0", "in \\[0, 1\\)"),
        ("nan", "in \\[0, 1\\)"),
    ]:
        with pytest.raises(OccupancyConfigError, match=why) as info:
            OccupancyNodeConfig.from_parameters(_defaults() | {"pruning": value})
        assert "'pruning'" in str(info.value)
    with pytest.raises(OccupancyConfigError, match=r"'pruning_latency_target_ms'.*>= 0"):
        OccupancyNodeConfig.from_parameters(
            _defaults() | {"pruning": "auto", "pruning_latency_target_ms": -1.0}
        )
    derived = OccupancyNodeConfig.from_parameters(_defaults() | {"pruning": "auto"})
    assert derived.pruning_latency_target_ms == 0.0  # 0: derived from the latencies measured at configure
    with pytest.raises(OccupancyConfigError, match="needs backend stereovoxelnet"):
        OccupancyNodeConfig.from_parameters(_defaults() | {"pruning": "auto", "backend": "sgbm"})


@pytest.mark.ros
def test_node_auto_pruning_reports_selector_in_diagnostics(graph, node_checkpoints) -> None:  # noqa: F811
    from rclpy.lifecycle import TransitionCallbackReturn

    checkpoint = node_checkpoints["masked"]
    node = _occupancy_node(
        graph,
        backend="stereovoxelnet",
        checkpoint=str(checkpoint),
        pruning="auto",
        pruning_latency_target_ms=0.001,  # unreachable: the selector must prune as far as it can
    )
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
    assert node.pruning_selector is not None and node.predictor.pruning_ratios == (0.0, 0.25, 0.5)
    probe = _Camera(graph)
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert _wait(probe.connected)
    probe.publish(1_000_000_000)
    assert _wait(lambda: len(probe.clouds) >= 1, 20.0), node.stats.last_input_error
    assert node.predictor.pruning_ratio == 0.5

    def reported() -> dict | None:
        for msg in probe.diagnostics[::-1]:
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                if "stereo_occupancy" in status.name and values.get("pruning_switches", "0") != "0":
                    return values
        return None

    assert _wait(lambda: reported() is not None, 5.0), "/diagnostics lacks the pruning selector status"
    values = reported()
    assert values["pruning"] == "auto" and values["pruning_ratio"] == "0.50"
    assert values["pruning_target_ms"] == "0.00" and values["pruning_ratios"] == "0,0.25,0.5"
    assert values["pruning_target"] == "set"
    assert float(values["pruning_predicted_ms"]) > 0


@pytest.mark.ros
def test_node_auto_pruning_derives_its_target_from_measured_latency(graph, node_checkpoints) -> None:  # noqa: F811
    from rclpy.lifecycle import TransitionCallbackReturn

    node = _occupancy_node(
        graph, backend="stereovoxelnet", checkpoint=str(node_checkpoints["masked"]), pruning="auto"
    )  # pruning_latency_target_ms left at its default 0: derived at configure
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
    control = node.pruning_selector
    assert control.derived and control.target_ms == pytest.approx(1.25 * control.latency_per_ratio_ms[0])
    assert node.pruning_status()["pruning_target"] == "derived"


@pytest.mark.ros
def test_node_refuses_pruning_with_a_checkpoint_without_masks(graph, node_checkpoints) -> None:  # noqa: F811
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    plain = node_checkpoints["plain"]
    node = _occupancy_node(graph, backend="stereovoxelnet", checkpoint=str(plain), pruning="0.25")
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "'pruning'" in node.configure_error and "carries no pruning masks" in node.configure_error
    assert node.predictor is None and node.config is None and node.pruning_selector is None
    status = node.diagnostic_status()
    assert status.level == status.ERROR and "no pruning masks" in status.message

    masked = node_checkpoints["masked"]
    node.set_parameters([Parameter("checkpoint", value=str(masked)), Parameter("pruning", value="0.3")])
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "not among the trained ratios" in node.configure_error
    node.set_parameters([Parameter("pruning", value="0.25")])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
    assert node.predictor.pruning_ratio == 0.25 and node.pruning_selector is None
    assert {kv.key: kv.value for kv in node.diagnostic_status().values}["pruning_ratio"] == "0.25"
