"""Slimmable EfficientFormerV2 supernet: shared weights sliced per subnet, sandwich-rule training, export."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from stereovoxel_research.search.search_space import SearchSpace, Subnet
from stereovoxel_ros.core.models.efficientformer_v2 import (
    Attention4D,
    Attention4DDownsample,
    ConvMlp,
    ConvNorm,
    EfficientFormerV2,
)


def _conv(conv: nn.Conv2d, x: torch.Tensor, out_ch: int | None = None) -> torch.Tensor:
    """``conv`` on the first ``x.shape[1]`` input and first ``out_ch`` output channels (depthwise: all of x)."""
    c_in = x.shape[1]
    if conv.groups > 1:
        weight, groups = conv.weight[:c_in], c_in
    else:
        weight, groups = conv.weight[:out_ch, :c_in], 1
    bias = None if conv.bias is None else conv.bias[: weight.shape[0]]
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, 1, groups)


def _bn(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    return F.batch_norm(
        x,
        bn.running_mean[:c],
        bn.running_var[:c],
        bn.weight[:c],
        bn.bias[:c],
        bn.training,
        bn.momentum,
        bn.eps,
    )


def _conv_norm(cn: ConvNorm, x: torch.Tensor, out_ch: int | None = None) -> torch.Tensor:
    conv, bn, act = cn
    return act(_bn(bn, _conv(conv, x, out_ch)))


def _mlp(mlp: ConvMlp, x: torch.Tensor, hidden: int) -> torch.Tensor:
    return _conv_norm(mlp.fc2, _conv_norm(mlp.mid, _conv_norm(mlp.fc1, x, hidden)), x.shape[1])


def _proj(proj: nn.Sequential, x: torch.Tensor, out_ch: int) -> torch.Tensor:
    act, conv, bn = proj
    return _bn(bn, _conv(conv, act(x), out_ch))


def _attention(attn: Attention4D, x: torch.Tensor) -> torch.Tensor:
    dim, (height, width) = x.shape[1], x.shape[-2:]
    if attn.stride_conv is not None:
        x = _bn(attn.stride_conv[1], _conv(attn.stride_conv[0], x))
    v = _conv_norm(attn.v, x)
    out = attn.attend(_conv_norm(attn.q, x), _conv_norm(attn.k, x), v, attn.v_local(v))
    if attn.stride_conv is not None:
        out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
    return _proj(attn.proj, out, dim)


def _attention_downsample(attn: Attention4DDownsample, x: torch.Tensor, out_ch: int) -> torch.Tensor:
    q = _conv_norm(attn.q.proj, _conv(attn.q.local, x) + x[:, :, ::2, ::2])
    v = _conv_norm(attn.v, x)
    return _proj(attn.proj, attn.attend(q, _conv_norm(attn.k, x), v, attn.v_local(v)), out_ch)


class Supernet(nn.Module):
    """The largest subnet's ``EfficientFormerV2``; any subnet runs on prefix slices of its weights.

    Stage i of the shared model holds ``max_ffn(i)`` FFN blocks then ``max_attn(i)`` attention blocks;
    a subnet uses the first k of each kind, the first ``widths[i]`` channels and the first
    ``int(width · ratio)`` hidden channels of each FFN.
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.model = EfficientFormerV2(space.largest().config(space.base))

    def forward(self, x: torch.Tensor, subnet: Subnet) -> torch.Tensor:
        """Logits (or the last feature map without a head) of ``subnet``."""
        m, cfg, w = self.model, self.space.base, subnet.widths
        x = _conv_norm(m.stem[0], x, w[0] // 2)
        x = _conv_norm(m.stem[1], x, w[0])
        for i in range(self.space.num_stages):
            if i > 0:
                down = m.downsamples[i]
                out = _conv_norm(down.conv, x, w[i])
                x = out + _attention_downsample(down.attn, x, w[i]) if down.attn is not None else out
            blocks = m.stages[i]
            for j, ratio in enumerate(subnet.ffn_ratios[i]):
                blk = blocks[j]
                x = x + _mlp(blk.mlp, x, int(w[i] * ratio)) * blk.ls.gamma[: w[i]]
            for j, ratio in enumerate(subnet.attn_ratios[i]):
                blk = blocks[self.space.max_ffn(i) + j]
                x = x + _attention(blk.attn, x) * blk.ls1.gamma[: w[i]]
                x = x + _mlp(blk.mlp, x, int(w[i] * ratio)) * blk.ls2.gamma[: w[i]]
        if m.head is None:
            return x
        head = m.head
        feat = head.drop(_bn(head.norm, x).mean(dim=(2, 3)))
        logits = F.linear(feat, head.fc.weight[:, : w[-1]], head.fc.bias)
        if head.fc_dist is not None and cfg.distillation_head:
            logits = (logits + F.linear(feat, head.fc_dist.weight[:, : w[-1]], head.fc_dist.bias)) / 2
        return logits

    @torch.no_grad()
    def export(self, subnet: Subnet) -> EfficientFormerV2:
        """A standalone ``EfficientFormerV2`` of ``subnet`` holding copies of the shared weights."""
        self.space.validate(subnet)
        model = EfficientFormerV2(subnet.config(self.space.base))
        source = dict(self.model.state_dict())
        n_ffn = [len(f) for f in subnet.ffn_ratios]
        pattern = re.compile(r"^stages\.(\d+)\.(\d+)\.")
        for name, target in model.state_dict().items():
            match = pattern.match(name)
            src_name = name
            if match:
                i, j = int(match[1]), int(match[2])
                src_j = j if j < n_ffn[i] else self.space.max_ffn(i) + j - n_ffn[i]
                src_name = f"stages.{i}.{src_j}." + name[match.end() :]
            src = source[src_name]
            target.copy_(src[tuple(slice(0, s) for s in target.shape)] if target.ndim else src)
        return model


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL divergence of the student's softened distribution from the (detached) teacher's."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=1), F.softmax(teacher.detach() / t, dim=1), reduction="batchmean"
    ) * (t * t)


def train_supernet(
    supernet: Supernet,
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    epochs: int,
    steps_per_epoch: int,
    lr: float = 3e-3,
    num_random: int = 2,
    seed: int = 0,
    progress: str | None = None,
) -> list[float]:
    """Sandwich-rule training: per step the largest (cross-entropy), the smallest and ``num_random`` random
    subnets (in-place distillation from the largest) accumulate gradients into one update.

    ``batches(epoch)`` yields (x, y) training batches. Returns the largest subnet's mean loss per epoch.
    """
    from tqdm import tqdm

    space, rng = supernet.space, random.Random(seed)
    opt = torch.optim.AdamW(supernet.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.15
    )
    largest, smallest = space.largest(), space.smallest()
    losses = []
    bar = tqdm(range(epochs), desc=progress or "supernet", leave=False, disable=progress is None)
    for epoch in bar:
        supernet.train()
        total, count = 0.0, 0
        for step, (x, y) in enumerate(batches(epoch)):
            if step >= steps_per_epoch:
                break
            opt.zero_grad(set_to_none=True)
            logits = supernet(x, largest)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            for sub in [smallest, *(space.sample(rng) for _ in range(num_random))]:
                distillation_loss(supernet(x, sub), logits).backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        losses.append(total / max(count, 1))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running statistics as the exact average over ``batches``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    for x in batches:
        model(x)
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    model.eval()
