"""``InstanceHead``: a light network that turns what the embedding store keeps for a plane into
per-pixel maps from which a seeded watershed makes instances (foreground, and normalised
distances to each object's centre and boundary; micro-sam's "AIS" idea), with a small branch
on the image itself at full resolution for the boundary detail (HQ-SAM's idea of fusing early,
fine features, carried to instances).

Frames: ``image`` is the plane in its original frame, ``B x C x H x W`` (C = 3, the encoder's
RGB after its intensity mapping, in [0, 1]); ``embedding`` (``B x 256 x H/16 x W/16``) and
``hq`` (``B x 32 x H/4 x W/4``) are the store's image embedding and HQ features, cropped to
the image's valid region of the model input and resized to those grids by the caller
(``engine.automatic.instances.head_inputs``). H and W are multiples of 16. Output
``B x 3 x H x W`` logits: foreground, centre closeness, boundary distance (each through a
sigmoid: 1 inside / at the centre / deep inside).

The image branch is a small U-Net: ``width / 2`` channels at full resolution (thin: it only
places the boundaries), ``width`` at 1/2, ``2 x width`` at 1/4, 1/8 and 1/16 of the plane; the
HQ features join at 1/4, the image embedding at 1/16. At ``width=16`` about 0.1 M parameters
and 1.3 GFLOP for a 256 x 256 plane, most of it at 1/2 and full resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

OUTPUTS = ("foreground", "centre", "boundary")


class _Block(nn.Module):
    """Two 3x3 convolutions with GroupNorm and ReLU; the first may stride 2."""

    def __init__(self, cin: int, cout: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(min(8, cout // 4), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(min(8, cout // 4), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class InstanceHead(nn.Module):
    def __init__(self, *, embed_dim: int = 256, hq_dim: int = 32, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        f = max(4, w // 2)  # the full-resolution branch stays thin: it only sharpens boundaries
        self.config = dict(embed_dim=embed_dim, hq_dim=hq_dim, in_channels=in_channels, width=width)
        self.enc0 = _Block(in_channels, f)
        self.enc1 = _Block(f, w, stride=2)
        self.enc2 = _Block(w, 2 * w, stride=2)
        self.hq_in = nn.Conv2d(hq_dim, 2 * w, 1)
        self.enc3 = _Block(2 * w, 2 * w, stride=2)
        self.enc4 = _Block(2 * w, 2 * w, stride=2)
        self.embed_in = nn.Conv2d(embed_dim, 2 * w, 1)
        self.bottom = nn.Conv2d(2 * w, 2 * w, 3, padding=2, dilation=2)  # a wider view of the cells
        self.dec3 = _Block(4 * w, 2 * w)
        self.dec2 = _Block(4 * w, 2 * w)
        self.dec1 = _Block(3 * w, w)
        self.dec0 = _Block(w + f, f)
        self.out = nn.Conv2d(f, len(OUTPUTS), 1)

    def forward(self, image: torch.Tensor, embedding: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W``, ``B x 256 x H/16 x W/16``, ``B x 32 x H/4 x W/4`` -> ``B x 3 x H x W``."""
        e0 = self.enc0(image)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1) + self.hq_in(hq)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3) + self.embed_in(embedding)
        e4 = e4 + F.relu(self.bottom(e4))
        d3 = self.dec3(torch.cat([_up(e4, e3), e3], 1))
        d2 = self.dec2(torch.cat([_up(d3, e2), e2], 1))
        d1 = self.dec1(torch.cat([_up(d2, e1), e1], 1))
        d0 = self.dec0(torch.cat([_up(d1, e0), e0], 1))
        return self.out(d0)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
