"""EfficientFormerV2 search space: subnets (depth, stage width, per-block expansion), actions, parameter counter."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from stereovoxel_ros.core.models.efficientformer_v2 import EfficientFormerV2Config, stage_resolutions


class SearchSpaceError(ValueError):
    """A subnet does not fit its search space (stage count, width, block count, expansion ratio)."""


def round_channels(value: float, divisor: int = 8) -> int:
    """Nearest multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, round(value / divisor) * divisor)


@dataclass(frozen=True)
class Subnet:
    """One architecture of the space: the first ``len(ffn_ratios[i])`` FFN and ``len(attn_ratios[i])``
    attention blocks of stage i are active, at width ``widths[i]`` with the given per-block expansion ratios."""

    widths: tuple[int, ...]
    ffn_ratios: tuple[tuple[float, ...], ...]
    attn_ratios: tuple[tuple[float, ...], ...]

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(f) + len(a) for f, a in zip(self.ffn_ratios, self.attn_ratios))

    def config(self, base: EfficientFormerV2Config) -> EfficientFormerV2Config:
        """The standalone EfficientFormerV2 configuration of this subnet."""
        return replace(
            base,
            widths=self.widths,
            depths=self.depths,
            mlp_ratios=tuple(f + a for f, a in zip(self.ffn_ratios, self.attn_ratios)),
            num_attn=tuple(len(a) for a in self.attn_ratios),
        )

    def to_dict(self) -> dict:
        return {
            "widths": list(self.widths),
            "ffn_ratios": [list(r) for r in self.ffn_ratios],
            "attn_ratios": [list(r) for r in self.attn_ratios],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Subnet:
        try:
            return cls(
                tuple(int(w) for w in data["widths"]),
                tuple(tuple(float(r) for r in s) for s in data["ffn_ratios"]),
                tuple(tuple(float(r) for r in s) for s in data["attn_ratios"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SearchSpaceError(f"malformed subnet record {data!r}: {err}") from err

    def describe(self) -> str:
        """Compact text, e.g. ``w32/48/96/176 d2+0/2+0/4+2/2+2``."""
        depth = "/".join(f"{len(f)}+{len(a)}" for f, a in zip(self.ffn_ratios, self.attn_ratios))
        return f"w{'/'.join(map(str, self.widths))} d{depth}"


@dataclass(frozen=True)
class SearchSpace:
    """Elastic depth (FFN and attention blocks per stage), stage width and per-block expansion ratio.

    ``base`` is the largest network: its widths, FFN/attention block counts and everything else
    (attention sizes, classifier) — its own ``mlp_ratios`` are replaced by ``max(ratio_choices)``.
    """

    base: EfficientFormerV2Config
    width_mults: tuple[float, ...] = (1.0, 0.75, 0.5)
    ratio_choices: tuple[float, ...] = (4.0, 3.0, 2.0, 1.0)
    min_blocks: int = 1
    image_hw: tuple[int, int] = (32, 32)
    _widths: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        widths = tuple(
            tuple(sorted({round_channels(w * m) for m in self.width_mults}, reverse=True))
            for w in self.base.widths
        )
        object.__setattr__(self, "_widths", widths)
        object.__setattr__(self, "ratio_choices", tuple(sorted(set(self.ratio_choices), reverse=True)))

    @property
    def num_stages(self) -> int:
        return len(self.base.widths)

    def width_choices(self, stage: int) -> tuple[int, ...]:
        """Allowed widths of a stage, largest first."""
        return self._widths[stage]

    def max_ffn(self, stage: int) -> int:
        return self.base.depths[stage] - self.base.num_attn[stage]

    def max_attn(self, stage: int) -> int:
        return self.base.num_attn[stage]

    def resolutions(self) -> list[tuple[int, int]]:
        """Feature-map size (H, W) of each stage for ``image_hw``."""
        return stage_resolutions(*self.image_hw, self.num_stages)

    def largest(self) -> Subnet:
        r = self.ratio_choices[0]
        return Subnet(
            tuple(c[0] for c in self._widths),
            tuple((r,) * self.max_ffn(i) for i in range(self.num_stages)),
            tuple((r,) * self.max_attn(i) for i in range(self.num_stages)),
        )

    def smallest(self) -> Subnet:
        """Narrowest, lowest expansion, ``min_blocks`` FFN blocks per stage (attention only where no FFN)."""
        r = self.ratio_choices[-1]
        ffn, attn = [], []
        for i in range(self.num_stages):
            n_ffn = min(self.min_blocks, self.max_ffn(i))
            ffn.append((r,) * n_ffn)
            attn.append((r,) * max(0, self.min_blocks - n_ffn))
        return Subnet(tuple(c[-1] for c in self._widths), tuple(ffn), tuple(attn))

    def sample(self, rng: random.Random) -> Subnet:
        """A uniformly drawn subnet (per stage: width, FFN count, attention count; per block: ratio)."""
        widths, ffn, attn = [], [], []
        for i in range(self.num_stages):
            widths.append(rng.choice(self._widths[i]))
            while True:
                n_ffn, n_attn = rng.randint(0, self.max_ffn(i)), rng.randint(0, self.max_attn(i))
                if n_ffn + n_attn >= self.min_blocks:
                    break
            ffn.append(tuple(rng.choice(self.ratio_choices) for _ in range(n_ffn)))
            attn.append(tuple(rng.choice(self.ratio_choices) for _ in range(n_attn)))
        return Subnet(tuple(widths), tuple(ffn), tuple(attn))

    def validate(self, subnet: Subnet) -> None:
        """Raise ``SearchSpaceError`` naming the first field of ``subnet`` outside the space."""
        n = self.num_stages
        if not (len(subnet.widths) == len(subnet.ffn_ratios) == len(subnet.attn_ratios) == n):
            raise SearchSpaceError(f"subnet {subnet.describe()} has the wrong number of stages (need {n})")
        for i in range(n):
            if subnet.widths[i] not in self._widths[i]:
                raise SearchSpaceError(f"stage {i} width {subnet.widths[i]} not in {self._widths[i]}")
            if len(subnet.ffn_ratios[i]) > self.max_ffn(i) or len(subnet.attn_ratios[i]) > self.max_attn(i):
                raise SearchSpaceError(
                    f"stage {i}: {len(subnet.ffn_ratios[i])} FFN + {len(subnet.attn_ratios[i])} attention blocks "
                    f"exceed the space ({self.max_ffn(i)} + {self.max_attn(i)})"
                )
            if subnet.depths[i] < self.min_blocks:
                raise SearchSpaceError(f"stage {i} has {subnet.depths[i]} blocks, minimum {self.min_blocks}")
            for r in subnet.ffn_ratios[i] + subnet.attn_ratios[i]:
                if r not in self.ratio_choices:
                    raise SearchSpaceError(f"stage {i} expansion ratio {r} not in {self.ratio_choices}")

    def actions(self, subnet: Subnet) -> list[tuple[str, Subnet]]:
        """Every one-step shrink of ``subnet``: drop the last FFN/attention block of a stage, narrow a stage,
        or lower one block's expansion ratio. Returns (description, new subnet) pairs."""
        out: list[tuple[str, Subnet]] = []
        ffn, attn = list(subnet.ffn_ratios), list(subnet.attn_ratios)
        for i in range(self.num_stages):
            if subnet.depths[i] > self.min_blocks:
                if ffn[i]:
                    new = [*ffn[:i], ffn[i][:-1], *ffn[i + 1 :]]
                    out.append((f"stage{i} drop ffn block", replace(subnet, ffn_ratios=tuple(new))))
                if attn[i]:
                    new = [*attn[:i], attn[i][:-1], *attn[i + 1 :]]
                    out.append((f"stage{i} drop attention block", replace(subnet, attn_ratios=tuple(new))))
            choices = self._widths[i]
            pos = choices.index(subnet.widths[i])
            if pos + 1 < len(choices):
                widths = (*subnet.widths[:i], choices[pos + 1], *subnet.widths[i + 1 :])
                out.append(
                    (f"stage{i} width {subnet.widths[i]}->{choices[pos + 1]}", replace(subnet, widths=widths))
                )
            for kind, ratios in (("ffn", ffn), ("attn", attn)):
                for j, r in enumerate(ratios[i]):
                    pos = self.ratio_choices.index(r)
                    if pos + 1 == len(self.ratio_choices):
                        continue
                    lowered = (*ratios[i][:j], self.ratio_choices[pos + 1], *ratios[i][j + 1 :])
                    new = tuple(lowered if k == i else ratios[k] for k in range(self.num_stages))
                    field_name = "ffn_ratios" if kind == "ffn" else "attn_ratios"
                    desc = f"stage{i} {kind}{j} ratio {r:g}->{self.ratio_choices[pos + 1]:g}"
                    out.append((desc, replace(subnet, **{field_name: new})))
        return out


# ---------------------------------------------------------------- parameter counter (closed form)


def _conv_norm(c_in: int, c_out: int, kernel: int = 1, groups: int = 1) -> int:
    return c_out * (c_in // groups) * kernel * kernel + c_out + 2 * c_out  # weight, bias, BN affine


def _mlp(dim: int, hidden: int) -> int:
    return _conv_norm(dim, hidden) + _conv_norm(hidden, hidden, 3, hidden) + _conv_norm(hidden, dim)


def _attention(cfg: EfficientFormerV2Config, dim: int, stride: bool) -> int:
    nh, kd = cfg.num_heads, cfg.key_dim
    dh = int(cfg.attn_ratio * kd) * nh
    n = 2 * _conv_norm(dim, nh * kd) + _conv_norm(dim, dh) + _conv_norm(dh, dh, 3, dh)
    n += 2 * (nh * nh + nh) + dh * dim + dim + 2 * dim + nh * cfg.bias_resolution**2
    return n + (dim * 9 + dim + 2 * dim if stride else 0)


def _attention_downsample(cfg: EfficientFormerV2Config, dim: int, out: int) -> int:
    nh, kd = cfg.num_heads, cfg.downsample_key_dim
    dh = int(cfg.attn_ratio * kd) * nh
    n = dim * 9 + dim + _conv_norm(dim, nh * kd)  # local-global query
    n += _conv_norm(dim, nh * kd) + _conv_norm(dim, dh) + _conv_norm(dh, dh, 3, dh)
    return n + dh * out + out + 2 * out + nh * (2 * cfg.bias_resolution) ** 2


def count_config_params(cfg: EfficientFormerV2Config) -> int:
    """Parameter count of ``EfficientFormerV2(cfg)`` in closed form (no model is built)."""
    w = cfg.widths
    n = _conv_norm(cfg.in_chans, w[0] // 2, 3) + _conv_norm(w[0] // 2, w[0], 3)
    for i, dim in enumerate(w):
        if i > 0:
            n += _conv_norm(w[i - 1], dim, 3)
            if i in cfg.attn_downsample_stages:
                n += _attention_downsample(cfg, w[i - 1], dim)
        for j, ratio in enumerate(cfg.mlp_ratios[i]):
            n += _mlp(dim, int(dim * ratio)) + dim
            if j >= cfg.depths[i] - cfg.num_attn[i]:
                n += _attention(cfg, dim, i in cfg.attn_stride_stages) + dim
    if cfg.num_classes > 0:
        heads = 2 if cfg.distillation_head else 1
        n += 2 * w[-1] + heads * (w[-1] * cfg.num_classes + cfg.num_classes)
    return n


def count_subnet_params(space: SearchSpace, subnet: Subnet) -> int:
    """Parameter count of the standalone model of ``subnet``."""
    return count_config_params(subnet.config(space.base))


def space_to_dict(space: SearchSpace) -> dict:
    """JSON-able description of ``space`` (stored beside supernet checkpoints and search results)."""
    from dataclasses import asdict

    return {
        "base": asdict(space.base),
        "width_mults": list(space.width_mults),
        "ratio_choices": list(space.ratio_choices),
        "min_blocks": space.min_blocks,
        "image_hw": list(space.image_hw),
    }


def space_from_dict(data: dict) -> SearchSpace:
    """Inverse of ``space_to_dict``."""
    try:
        base = dict(data["base"])
        for key in ("widths", "depths", "num_attn", "attn_stride_stages", "attn_downsample_stages"):
            base[key] = tuple(base[key])
        base["mlp_ratios"] = tuple(tuple(r) for r in base["mlp_ratios"])
        return SearchSpace(
            EfficientFormerV2Config(**base),
            width_mults=tuple(data["width_mults"]),
            ratio_choices=tuple(data["ratio_choices"]),
            min_blocks=int(data["min_blocks"]),
            image_hw=tuple(data["image_hw"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise SearchSpaceError(f"malformed search-space record: {err}") from err
