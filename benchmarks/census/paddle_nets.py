"""Paddle layers of the census beyond ``paddle.vision.models`` (imported by collect_paddle.py's
export script, in the paddle venv)."""

import paddle.nn as nn
import paddle.nn.functional as F


class SegHead(nn.Layer):
    """A small dense-prediction net: SAME-padded stem, dilated conv, a pyramid pool, both
    interpolations, a transposed conv and a pixel shuffle back to the input's size."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2D(3, 16, 3, stride=2, padding="SAME")
        self.down = nn.Conv2D(16, 32, 3, stride=2, padding=1, groups=2)
        self.dil = nn.Conv2D(32, 32, 3, padding=2, dilation=2)
        self.pool = nn.AdaptiveAvgPool2D((2, 2))
        self.up = nn.Conv2DTranspose(32, 16, 4, stride=2, padding=1)
        self.head = nn.Conv2D(16, 4 * 5, 1)
    def forward(self, x):
        a = F.relu(self.stem(x))
        b = F.relu(self.down(a))
        c = F.relu(self.dil(b))
        p = F.interpolate(self.pool(c), size=[32, 40], mode="nearest")
        d = c + p
        e = F.relu(self.up(d)) + F.interpolate(d, size=[64, 80], mode="bilinear", align_corners=False)[:, :16]
        return F.pixel_shuffle(self.head(e), 2)
