"""Dynamic synthetic sequences: the static world's trajectory, a box removed, a box appearing, a person walking."""

from __future__ import annotations

import numpy as np
import pytest

from stereovoxel_ros.offline.data.synth_config import SynthConfig, SynthWorldError
from stereovoxel_ros.offline.data.synth_dynamic import DynamicScenario, generate_dynamic_sequence
from stereovoxel_ros.offline.data.synth_sequences import generate_sequence

CONFIG = SynthConfig.for_size(160, 90, frame_rate=15.0, shadows=False)
FRAMES = 12


@pytest.fixture(scope="module")
def frames() -> list:
    return list(generate_dynamic_sequence(CONFIG, 5, 0, FRAMES))


def test_the_trajectory_and_stamps_are_the_static_generators(frames) -> None:
    static = list(generate_sequence(CONFIG, 5, 0, FRAMES))
    for dynamic, frame in zip(frames, static):
        np.testing.assert_array_equal(dynamic.frame.pose, frame.pose)
        assert dynamic.frame.stamp_ns == frame.stamp_ns


def test_the_dynamic_objects_act_and_their_truth_follows(frames) -> None:
    scenario = DynamicScenario()
    removed_at, appears_at = round(scenario.removed_at * FRAMES), round(scenario.appears_at * FRAMES)
    for d in frames:
        removed, appearing = d.objects["removed_box"], d.objects["appearing_box"]
        assert removed.present == (d.index < removed_at) and appearing.present == (d.index >= appears_at)
        pixels = {name: int(np.count_nonzero(d.frame.labels == s.label)) for name, s in d.objects.items()}
        assert (pixels["removed_box"] > 0) == removed.present  # visible while there, gone after
        assert (pixels["appearing_box"] > 0) == appearing.present
        assert pixels["person"] > 0
        assert removed.covers(np.array([removed.xy]))[0] == removed.present
    steps = np.diff([d.objects["person"].xy for d in frames], axis=0)
    np.testing.assert_allclose(np.linalg.norm(steps, axis=1), scenario.person_speed / CONFIG.frame_rate)


def test_a_bad_scenario_is_named() -> None:
    with pytest.raises(SynthWorldError, match="removed_at"):
        DynamicScenario(removed_at=1.5)
    with pytest.raises(SynthWorldError, match="at least 4 frames"):
        next(generate_dynamic_sequence(CONFIG, 5, 0, 2))


def test_mapbench_bad_options_are_one_line_errors(capsys) -> None:
    from stereovoxel_ros.cli import main

    assert main(["mapbench", "--sequences", "0"]) == 1
    assert main(["mapbench", "--map", "p_hot=0.7", "--methods", "ground_truth", "--sequences", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--sequences" in err[0] and "p_hot" in err[1]
