"""Run-time pruning control: the derived latency target, the per-frame switch with frequency rescaling, the
cpufreq userspace governor on a fake sysfs, and ``stereovoxel dvfs`` on a tiny All-in-One checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stereovoxel_ros.core.occupancy.pruning_control import (
    CpufreqGovernor,
    PruningControlError,
    PruningController,
    derived_target_ms,
    monotone_relative,
)


class _Predictor:
    pruning_ratios = (0.0, 0.25, 0.5)

    def __init__(self) -> None:
        self.pruning_ratio = 0.0

    def set_pruning_ratio(self, ratio: float) -> None:
        assert ratio in self.pruning_ratios
        self.pruning_ratio = ratio

    def profile_pruning(self, repeats: int = 5) -> list[float]:
        return [100.0, 80.0, 60.0]


def test_target_is_derived_from_measured_latency_and_switches_when_the_cpu_slows() -> None:
    assert derived_target_ms([100.0, 70.0]) == pytest.approx(125.0)
    assert monotone_relative([100.0, 101.0, 60.0]) == [1.0, 1.0, 0.6]  # noise never predicts slower
    with pytest.raises(PruningControlError, match="margin"):
        derived_target_ms([100.0], margin=0.5)
    predictor = _Predictor()
    control = PruningController(predictor, predictor.profile_pruning(), frequency=lambda: None)
    assert control.derived and control.target_ms == pytest.approx(125.0)
    for _ in range(10):  # at the usual speed the unpruned network meets the derived target
        assert control.update(100.0) == 0.0
    for _ in range(3):  # the machine slows 2x: 200 ms unpruned, only ratio 0.5 (120 ms) fits
        control.update(200.0 * {0.0: 1.0, 0.25: 0.8, 0.5: 0.6}[predictor.pruning_ratio])
    assert predictor.pruning_ratio == 0.5
    for _ in range(20):  # back to full speed: relaxes to the unpruned network (after the dwell)
        control.update(100.0 * {0.0: 1.0, 0.25: 0.8, 0.5: 0.6}[predictor.pruning_ratio])
    assert predictor.pruning_ratio == 0.0 and control.status()["pruning_target"] == "derived"
    with pytest.raises(PruningControlError, match="> 0"):
        PruningController(predictor, [100.0, 80.0, 60.0], target_ms=-1.0)


def test_a_frequency_step_rescales_the_last_latency() -> None:
    mhz = iter([(2000.0, 2000.0), (1000.0, 2000.0)])
    predictor = _Predictor()
    control = PruningController(predictor, [100.0, 80.0, 60.0], target_ms=130.0, frequency=lambda: next(mhz))
    # the frame ran at 2 GHz in 100 ms; the CPU is now at 1 GHz: the next frame would take 200 ms unpruned
    assert control.update(100.0) == 0.5 and control.cpu_mhz == (1000.0, 2000.0)


def _sysfs(root: Path, governors: str = "performance schedutil userspace") -> Path:
    for cpu in ("cpu0", "cpu1"):
        d = root / "devices/system/cpu" / cpu / "cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_governor").write_text("schedutil\n")
        (d / "scaling_available_governors").write_text(governors + "\n")
        (d / "scaling_setspeed").write_text("<unsupported>\n")
        (d / "scaling_available_frequencies").write_text("1000000 2000000 1500000\n")
    return root


def test_cpufreq_userspace_governor_sets_and_restores(tmp_path: Path) -> None:
    governor = CpufreqGovernor.find(str(_sysfs(tmp_path / "a")))
    assert governor is not None and governor.frequencies_khz == (2000000, 1500000, 1000000)
    cpu1 = tmp_path / "a/devices/system/cpu/cpu1/cpufreq"
    with governor.at(1500000):
        assert (cpu1 / "scaling_governor").read_text() == "userspace"
        assert (cpu1 / "scaling_setspeed").read_text() == "1500000"
    assert (cpu1 / "scaling_governor").read_text() == "schedutil"
    with pytest.raises(PruningControlError, match="not among"), governor.at(1234):
        pass
    assert CpufreqGovernor.find(str(_sysfs(tmp_path / "b", "performance schedutil"))) is None
    assert CpufreqGovernor.find(str(tmp_path / "none")) is None


@pytest.mark.slow
def test_dvfs_command_reports_fixed_and_switching_spread(tmp_path: Path, capsys) -> None:
    from test_svn_eval import _all_in_one_checkpoint
    from test_svn_train import _dataset

    from stereovoxel_ros.cli import main

    data, ckpt = _dataset(tmp_path / "data"), _all_in_one_checkpoint(tmp_path / "aio.pt")
    out = tmp_path / "dvfs"
    args = ["dvfs", str(ckpt), "--dataset", str(data), "--frames", "2", "--out", str(out)]
    assert main([*args, "--levels", "emulated"]) == 0
    printed = capsys.readouterr().out
    assert "emulated" in printed and "switching cuts the spread" in printed
    result = json.loads((out / "dvfs.json").read_text())
    assert result["level_kind"] == "emulated" and result["derived_target"]
    assert len(result["levels"]) == 4 and all(len(v["switching_ms"]) == 2 for v in result["levels"].values())
    assert result["summary"]["spread_reduction"] > 0 and (out / "dvfs.png").stat().st_size > 5000
    if CpufreqGovernor.find() is None:  # asking for real frequencies where there are none is a user error
        assert main([*args, "--levels", "cpufreq"]) == 1
        assert "no settable CPU frequency" in capsys.readouterr().err
