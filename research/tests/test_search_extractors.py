"""``stereovoxel search extractors``: every candidate timed directly at the shipped model's input size."""

from __future__ import annotations

import json

import pytest

from stereovoxel_ros.cli import main


@pytest.mark.slow
def test_extractor_candidates_are_timed_against_the_shipped_one(tmp_path, capsys) -> None:
    assert main(["search", "extractors", "--repeats", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "extractors.json").read_text())
    w, h = result["input_size"]  # the shipped model's input size, whatever it is
    assert f"input size {w}x{h}" in capsys.readouterr().out
    rows = {r["extractor"]: r for r in result["rows"]}
    base = rows["mobilenetv2 x0.5 (shipped)"]
    assert base["pyramid_vs_base"] == pytest.approx(1.0) and not base["attention"]
    assert rows["effv2_s0, 3 stages (attention)"]["attention"]
    assert all(r["extractor_ms"] > 0 and r["pyramid_ms"] >= 0 for r in rows.values())
    assert main(["search", "extractors", "--repeats", "0", "--out", str(tmp_path)]) == 1
    assert "--repeats" in capsys.readouterr().err
