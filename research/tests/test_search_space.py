"""Search space: subnet validity, shrink actions, closed-form parameter counter vs built models."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from stereovoxel_research.search.search_space import (
    SearchSpace,
    SearchSpaceError,
    Subnet,
    count_config_params,
    count_subnet_params,
    space_from_dict,
    space_to_dict,
)
from stereovoxel_ros.core.models.efficientformer_v2 import (
    EFFICIENTFORMER_V2_CONFIGS,
    EfficientFormerV2,
    count_parameters,
)


def _built_params(cfg) -> int:
    with torch.device("meta"):
        return count_parameters(EfficientFormerV2(cfg))


@pytest.mark.parametrize("name", sorted(EFFICIENTFORMER_V2_CONFIGS))
@pytest.mark.parametrize("classes", [0, 1000])
def test_counter_matches_published_variants(name: str, classes: int) -> None:
    cfg = replace(EFFICIENTFORMER_V2_CONFIGS[name], num_classes=classes, distillation_head=classes > 0)
    assert count_config_params(cfg) == _built_params(cfg)


def test_counter_matches_random_subnets(space: SearchSpace) -> None:
    rng = random.Random(0)
    for subnet in [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(12))]:
        space.validate(subnet)
        assert count_subnet_params(space, subnet) == _built_params(subnet.config(space.base)), (
            subnet.describe()
        )


def test_largest_and_smallest(space: SearchSpace) -> None:
    largest, smallest = space.largest(), space.smallest()
    assert largest.widths == (32, 48, 96, 176) and largest.depths == (2, 2, 6, 4)
    assert all(r == 4.0 for s in largest.ffn_ratios + largest.attn_ratios for r in s)
    assert smallest.widths == (16, 24, 48, 88) and smallest.depths == (1, 1, 1, 1)
    assert count_subnet_params(space, smallest) < count_subnet_params(space, largest) / 10


def test_every_action_shrinks_and_stays_valid(space: SearchSpace) -> None:
    rng = random.Random(1)
    for subnet in [space.largest(), space.sample(rng), space.sample(rng)]:
        actions = space.actions(subnet)
        assert actions
        params = count_subnet_params(space, subnet)
        for desc, new in actions:
            space.validate(new)
            assert count_subnet_params(space, new) < params, desc
    kinds = {d.split(" ", 1)[1].split(" ")[0] for d, _ in space.actions(space.largest())}
    assert {"drop", "width", "ffn0", "attn0"} <= kinds
    assert space.actions(space.smallest()) == []  # narrowest, ratio 1, one block per stage


def test_validate_names_the_bad_field(space: SearchSpace) -> None:
    good = space.largest()
    with pytest.raises(SearchSpaceError, match="stage 1 width 40"):
        space.validate(replace(good, widths=(32, 40, 96, 176)))
    with pytest.raises(SearchSpaceError, match="expansion ratio 5"):
        space.validate(replace(good, ffn_ratios=((5.0, 4.0), (4.0, 4.0), (4.0,) * 4, (4.0, 4.0))))
    with pytest.raises(SearchSpaceError, match="stage 3 has 0 blocks"):
        space.validate(
            replace(good, ffn_ratios=(*good.ffn_ratios[:3], ()), attn_ratios=(*good.attn_ratios[:3], ()))
        )
    with pytest.raises(SearchSpaceError, match="malformed subnet"):
        Subnet.from_dict({"widths": [1]})


def test_round_trips(space: SearchSpace) -> None:
    subnet = space.sample(random.Random(2))
    assert Subnet.from_dict(subnet.to_dict()) == subnet
    again = space_from_dict(space_to_dict(space))
    assert again == space and again.width_choices(1) == space.width_choices(1) == (48, 32, 24)
