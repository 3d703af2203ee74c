"""Shape-only definitions of well-known networks, for cost estimates.

ResNet-18 and ResNet-50 (torchvision layouts, stride on the 3x3 convolution of each
bottleneck), MobileNetV2 (width 1.0) at 224 x 224, and one BERT-base encoder block
(hidden 768, 12 heads, feed-forward 3072) at a given sequence length. Batch
normalizations are assumed folded into the convolutions (as deployment does), so they are
not layers here. No weights: these graphs feed :func:`qsim.nn.estimate.estimate_network`.
"""

from __future__ import annotations

from qsim.nn.graph import Graph, Layer, TensorType
from qsim.nn.layers import (
    Add, Clip, Conv2d, Flatten, Gelu, GlobalAvgPool, LayerNorm, Linear, MatMul, MaxPool, Relu,
    Reshape, Softmax, Transpose,
)

__all__ = ["resnet18", "resnet50", "mobilenet_v2", "bert_base_encoder_block", "NETWORKS"]


class _Builder:
    """Appends layers with generated names and threads the current tensor through."""

    def __init__(self, name: str, inputs: dict[str, TensorType]) -> None:
        self.name = name
        self.inputs = inputs
        self.layers: list[Layer] = []
        self.count = 0

    def add(self, cls, inputs, label: str, **kwargs) -> str:
        self.count += 1
        name = f"{label}" if label else f"{cls.kind}{self.count}"
        out = f"{name}:out"
        self.layers.append(cls(name=name, inputs=tuple(inputs), outputs=(out,), **kwargs))
        return out

    def conv(self, x: str, label: str, cin: int, cout: int, k: int, stride: int = 1,
             groups: int = 1) -> str:
        pad = k // 2
        return self.add(Conv2d, [x], label, in_channels=cin, out_channels=cout, kernel=(k, k),
                        strides=(stride, stride), pads=(pad, pad, pad, pad), groups=groups)

    def graph(self, outputs: list[str]) -> Graph:
        return Graph(self.name, self.inputs, self.layers, outputs)


def _resnet(name: str, blocks: list[int], bottleneck: bool, image: int = 224) -> Graph:
    b = _Builder(name, {"image": TensorType((None, 3, image, image))})
    x = b.conv("image", "conv1", 3, 64, 7, stride=2)
    x = b.add(Relu, [x], "relu1")
    x = b.add(MaxPool, [x], "maxpool", kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
    cin = 64
    for stage, count in enumerate(blocks, start=1):
        width = 64 * 2 ** (stage - 1)
        cout = width * 4 if bottleneck else width
        for i in range(count):
            stride = 2 if stage > 1 and i == 0 else 1
            tag = f"layer{stage}.{i}"
            if bottleneck:
                y = b.add(Relu, [b.conv(x, f"{tag}.conv1", cin, width, 1)], f"{tag}.relu1")
                y = b.add(Relu, [b.conv(y, f"{tag}.conv2", width, width, 3, stride)], f"{tag}.relu2")
                y = b.conv(y, f"{tag}.conv3", width, cout, 1)
            else:
                y = b.add(Relu, [b.conv(x, f"{tag}.conv1", cin, cout, 3, stride)], f"{tag}.relu1")
                y = b.conv(y, f"{tag}.conv2", cout, cout, 3)
            shortcut = x
            if stride != 1 or cin != cout:
                shortcut = b.conv(x, f"{tag}.downsample", cin, cout, 1, stride)
            x = b.add(Relu, [b.add(Add, [y, shortcut], f"{tag}.add")], f"{tag}.relu")
            cin = cout
    x = b.add(GlobalAvgPool, [x], "avgpool")
    x = b.add(Flatten, [x], "flatten")
    x = b.add(Linear, [x], "fc", in_features=cin, out_features=1000)
    return b.graph([x])


def resnet18(image: int = 224) -> Graph:
    """ResNet-18: basic blocks [2, 2, 2, 2] (1.81 G MACs at 224 x 224)."""
    return _resnet("resnet18", [2, 2, 2, 2], bottleneck=False, image=image)


def resnet50(image: int = 224) -> Graph:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3] (4.09 G MACs at 224 x 224)."""
    return _resnet("resnet50", [3, 4, 6, 3], bottleneck=True, image=image)


def mobilenet_v2(image: int = 224) -> Graph:
    """MobileNetV2 (width 1.0): inverted residuals with depthwise 3 x 3 (0.30 G MACs)."""
    b = _Builder("mobilenet_v2", {"image": TensorType((None, 3, image, image))})
    x = b.add(Clip, [b.conv("image", "conv0", 3, 32, 3, stride=2)], "relu6_0", lo=0.0, hi=6.0)
    cin = 32
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    block = 0
    for t, c, n, s in settings:
        for i in range(n):
            block += 1
            stride = s if i == 0 else 1
            tag = f"block{block}"
            hidden = cin * t
            y = x
            if t != 1:
                y = b.add(Clip, [b.conv(y, f"{tag}.expand", cin, hidden, 1)], f"{tag}.relu6a", lo=0.0, hi=6.0)
            y = b.add(Clip, [b.conv(y, f"{tag}.depthwise", hidden, hidden, 3, stride, groups=hidden)],
                      f"{tag}.relu6b", lo=0.0, hi=6.0)
            y = b.conv(y, f"{tag}.project", hidden, c, 1)
            x = b.add(Add, [y, x], f"{tag}.add") if stride == 1 and cin == c else y
            cin = c
    x = b.add(Clip, [b.conv(x, "conv_last", cin, 1280, 1)], "relu6_last", lo=0.0, hi=6.0)
    x = b.add(GlobalAvgPool, [x], "avgpool")
    x = b.add(Flatten, [x], "flatten")
    x = b.add(Linear, [x], "classifier", in_features=1280, out_features=1000)
    return b.graph([x])


def bert_base_encoder_block(seq_len: int = 128, hidden: int = 768, heads: int = 12,
                            ffn: int = 3072) -> Graph:
    """One BERT-base encoder layer: attention (Q, K, V, scores, context, output) + FFN."""
    head = hidden // heads
    b = _Builder("bert_base_encoder_block", {"tokens": TensorType((None, seq_len, hidden))})
    q = b.add(Linear, ["tokens"], "query", in_features=hidden, out_features=hidden)
    k = b.add(Linear, ["tokens"], "key", in_features=hidden, out_features=hidden)
    v = b.add(Linear, ["tokens"], "value", in_features=hidden, out_features=hidden)
    per_head = (0, seq_len, heads, head)
    q = b.add(Transpose, [b.add(Reshape, [q], "query.split", shape=per_head)], "query.heads", perm=(0, 2, 1, 3))
    k = b.add(Transpose, [b.add(Reshape, [k], "key.split", shape=per_head)], "key.heads", perm=(0, 2, 3, 1))
    v = b.add(Transpose, [b.add(Reshape, [v], "value.split", shape=per_head)], "value.heads", perm=(0, 2, 1, 3))
    scores = b.add(Softmax, [b.add(MatMul, [q, k], "scores")], "softmax", axis=-1)
    context = b.add(MatMul, [scores, v], "context")
    context = b.add(Reshape, [b.add(Transpose, [context], "context.merge", perm=(0, 2, 1, 3))],
                    "context.join", shape=(0, seq_len, hidden))
    x = b.add(Linear, [context], "attention.output", in_features=hidden, out_features=hidden)
    x = b.add(LayerNorm, [b.add(Add, [x, "tokens"], "attention.residual")], "attention.norm")
    y = b.add(Gelu, [b.add(Linear, [x], "ffn.up", in_features=hidden, out_features=ffn)], "ffn.gelu")
    y = b.add(Linear, [y], "ffn.down", in_features=ffn, out_features=hidden)
    y = b.add(LayerNorm, [b.add(Add, [y, x], "ffn.residual")], "ffn.norm")
    return b.graph([y])


#: Shape-only networks by name.
NETWORKS = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "bert_base_block": bert_base_encoder_block,
}
