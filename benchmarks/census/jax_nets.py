"""Flax (nnx) modules of the census, exported by jax2onnx (imported by collect_jax.py's export
script, in the JAX venv).  Channels-last throughout, as Flax is: jax2onnx wraps each convolution in
Transposes, and resizes NHWC maps."""

import flax.linen as linen
import jax
from flax import nnx


class DensePrediction(nnx.Module):
    """SAME and VALID strided convs, BatchNorm, a SAME max pool, a dilated conv with a residual,
    a depthwise conv and GELU, a transposed conv, and a bilinear resize of an NHWC map."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.c1 = nnx.Conv(3, 16, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs, use_running_average=True)
        self.c2 = nnx.Conv(16, 16, (3, 3), kernel_dilation=(2, 2), padding=((2, 2), (2, 2)), rngs=rngs)
        self.dw = nnx.Conv(16, 16, (5, 5), feature_group_count=16, padding="SAME", rngs=rngs)
        self.c3 = nnx.Conv(16, 32, (3, 3), strides=(2, 2), padding="VALID", rngs=rngs)
        self.up = nnx.ConvTranspose(32, 16, (4, 4), strides=(2, 2), padding="SAME", rngs=rngs)
        self.head = nnx.Conv(16, 4, (1, 1), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = nnx.relu(self.bn(self.c1(x)))
        a = linen.max_pool(a, window_shape=(3, 3), strides=(2, 2), padding="SAME")
        b = nnx.gelu(self.dw(nnx.relu(self.c2(a)) + a))
        u = self.up(nnx.relu(self.c3(b)))
        r = jax.image.resize(b, (b.shape[0], u.shape[1], u.shape[2], b.shape[3]), "bilinear", antialias=False)
        return self.head(u + r)


class Classifier(nnx.Module):
    """A conv, an average pool, a global mean and a linear head."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.c = nnx.Conv(1, 8, (5, 5), padding=((2, 2), (2, 2)), rngs=rngs)
        self.fc = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = linen.avg_pool(nnx.relu(self.c(x)), window_shape=(2, 2), strides=(2, 2))
        return self.fc(y.mean(axis=(1, 2)))


class BasicBlock(nnx.Module):
    """Two 3x3 convs (the first strided) and a 1x1 shortcut of the same stride."""

    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.shortcut = nnx.Conv(cin, cout, (1, 1), strides=(stride, stride), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.conv2(nnx.relu(self.conv1(x))) + self.shortcut(x))


class ResidualStack(nnx.Module):
    """A ResNet-style stem, a SAME max pool and two stages of basic blocks."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.stem = nnx.Conv(3, 16, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), rngs=rngs)
        self.stage1 = BasicBlock(16, 16, 1, rngs)
        self.stage2 = BasicBlock(16, 32, 2, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem(x))
        # (jax2onnx 0.17 drops explicit padding of a max pool: exported as VALID, 23x23 for 24x24)
        x = linen.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")
        return self.stage2(self.stage1(x))
