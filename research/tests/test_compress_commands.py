"""The ``stereovoxel compress`` commands end to end on the digits task, and the seed's PIM-QAT point (slow)."""

from __future__ import annotations

import json

import pytest
import torch

from stereovoxel_ros.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see the root conftest.py


def test_pim_qat_train_and_eval_write_table_and_plot(tmp_path):
    ckpt = tmp_path / "conv.pt"
    common = ["--epochs", "1", "--scheme", "native", "--adc-bits", "6", "--adc-range", "0.125"]
    assert (
        main(["compress", "pim-qat", "train", "--method", "conventional", *common, "--out", str(ckpt)]) == 0
    )
    for extra in ([], ["--noise", "0.5", "--seeds", "1", "--bn-calibrate"]):
        argv = ["compress", "pim-qat", "eval", "--checkpoint", str(ckpt), "--results", str(tmp_path), *extra]
        assert main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "pim_qat_results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[1]["draws"] == 1 and rows[1]["bn_calibration"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert (tmp_path / "pim_qat_results.md").read_text().count("| `stereovoxel compress pim-qat eval") == 2
    assert (tmp_path / "pim_qat_results.png").stat().st_size > 1000


def test_all_in_one_train_and_eval(tmp_path, capsys):
    ckpt = tmp_path / "aio.pt"
    argv = ["compress", "all-in-one", "train", "--epochs", "1", "--widths", "8,16,32", "--ratios", "0,0.5"]
    assert main([*argv, "--out", str(ckpt)]) == 0
    assert (
        main(["compress", "all-in-one", "eval", "--checkpoint", str(ckpt), "--results", str(tmp_path)]) == 0
    )
    table = (tmp_path / "all_in_one_results.md").read_text()
    assert "| all-in-one | 0.000 |" in table and "| all-in-one | 0.500 |" in table
    assert (tmp_path / "all_in_one_results.png").stat().st_size > 1000


def test_eval_rejects_a_wrong_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something-else"}, bad)
    assert main(["compress", "pim-qat", "eval", "--checkpoint", str(bad), "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "stereovoxel compress: " in err and "pim-qat checkpoint" in err and "Traceback" not in err
    assert main(["compress", "all-in-one", "eval", "--checkpoint", str(tmp_path / "none.pt")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_pim_qat_recovers_what_conventional_quantization_loses_on_the_chip():
    from stereovoxel_research.compress.pim_qat import deploy_on_pim, prepare_for_training
    from stereovoxel_research.compress.pim_simulator import PIMConfig
    from stereovoxel_research.digits_task import (
        DigitsCNN,
        accuracy,
        load_digits_data,
        train_classifier,
    )

    data = load_digits_data()
    chip = PIMConfig(scheme="bit_serial", weight_bits=4, act_bits=4, rows=64, adc_bits=4, adc_range=0.25)
    acc = {}
    for method in ("conventional", "pim-qat"):
        torch.manual_seed(0)
        model = DigitsCNN()
        prepare_for_training(model, chip, method, exclude=("features.0", "classifier"))
        train_classifier(model, data, epochs=4)
        deploy_on_pim(model, chip)
        acc[method] = accuracy(model, data)
    assert acc["pim-qat"] > acc["conventional"] + 0.05, acc
    assert acc["pim-qat"] > 0.85, acc


def test_pim_ablation_table_and_findings_from_rows():
    from stereovoxel_research.compress.pim_ablation import ablation_findings, ablation_table

    def row(training, deploy, noise, bn, acc):
        return {"scheme": "native", "training": training, "train_adc_bits": 4, "deploy": deploy,
                "noise_lsb": noise, "bn_calibration": bn, "accuracy": acc, "accuracy_std": 0.0}  # fmt: skip

    rows = [
        row("conventional QAT", "digital", 0.0, False, 0.90),
        row("conventional QAT", "pim", 0.0, False, 0.50),
        row("conventional QAT", "pim", 0.0, True, 0.80),  # recovers 75% of the 0.40 lost
        row("PIM-QAT rescale=both", "pim", 0.0, False, 0.85),
        row("PIM-QAT rescale=both", "pim", 0.0, True, 0.86),
    ]
    table = ablation_table(rows)
    assert "| native | conventional QAT | 4 | 0.900 | 0.500 ± 0.000 | 0.800 ± 0.000 |" in table
    findings = ablation_findings(rows)
    assert "holds" in findings[0] and "(75% of the loss recovered)" in findings[0]
    assert "best PIM-QAT - best conventional = +0.060" in findings[1]
    rows[2]["accuracy"] = 0.6  # 25%: the statement no longer holds
    assert "does not hold" in ablation_findings(rows)[0]


def test_pim_ablate_rejects_a_bad_scheme(capsys):
    assert main(["compress", "pim-qat", "ablate", "--schemes", "analog"]) == 1
    err = capsys.readouterr().err
    assert "--schemes" in err and "Traceback" not in err
