"""ParameterValues: the typed parameter reads the nodes' configs share."""

from __future__ import annotations

import math

import pytest

from stereovoxel_ros.ros.parameter_values import ParameterValues


def test_parameter_values_name_the_bad_parameter() -> None:
    params = ParameterValues(
        {"rate": 2.5, "flagged": True, "count": 3, "mode": " fast ", "nan": math.nan, "yes": 1}, ValueError
    )
    assert (
        params.number("rate", 0, 10) == 2.5 and params.flag("flagged") and params.integer("count", 1, 5) == 3
    )
    assert params.text("mode", (" fast ",)) == "fast"
    for call, message in (
        (lambda: params.number("nan"), r"parameter 'nan' = nan: must be a finite number"),
        (lambda: params.number("rate", 3, 4), r"'rate' = 2.5: must be in \[3, 4\]"),
        (lambda: params.integer("flagged", 0, 5), r"'flagged' = True: must be an integer in \[0, 5\]"),
        (lambda: params.flag("yes"), r"'yes' = 1: must be true or false"),
        (lambda: params.text("mode", ("slow",)), r"'mode' = ' fast ': must be one of slow"),
    ):
        with pytest.raises(ValueError, match=message):
            call()
