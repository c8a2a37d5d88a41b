"""The multi-task discriminator (paper §3.4) as an ``nn.Module``.

frozen backbone -> multi-scale features -> fully convolutional fusion, high to low level (DPT-style
residual conv units, depthwise-separable for CPU speed) -> per-pixel embedding ``f`` (``fusion_dim``) at the
finest backbone level used. Category embeddings ``t_k`` = L2-normalised learnable projection of frozen text
embeddings (+ a learnable "other" embedding in open-set mode). Class logit ``z_k = s * cos(f, t_k)`` with a
learnable scale ``s``; class map ``sigmoid(z_k)``; anomaly map = mean of the class maps, carried as its logit
``log(mean sigmoid(z)) - log(mean sigmoid(-z))``. Both are computed on the feature grid and upsampled
bilinearly (as logits) to the image size, so on the grid ``sigmoid(anomaly_logit)`` is exactly the paper's
mean; between grid points it is the interpolated mean. No normal prompt.

With ``config.reference == "knn"`` (beyond the paper) the model also holds a
:class:`uniadc.reference.ReferenceScorer`: a nearest-neighbour bank of the support normals. Each feature level
gets one more channel, the distance of each location to its nearest normal patch at that level, so the class
embedding sees how a location differs from the normals; and the anomaly map is the reference's smoothed
distance map, calibrated on training data (``sigmoid((D - tau) / scale)``, 0.5 at the fitted tau). The
learned mean-of-class-maps anomaly map is then only a training signal.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from schemas.config import DiscriminatorConfig
from uniadc.discriminator import text as text_encoders
from uniadc.discriminator.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipBackbone,
    EffNetLite0Backbone,
    FrozenBackbone,
    TinyBackbone,
)
from uniadc.discriminator.clip import load_clip
from uniadc.discriminator.dinov3 import encode_dinotxt, load_dinov3
from uniadc.discriminator.intensity import apply_intensity
from uniadc.reference import ReferenceScorer
from uniadc.reference.scorer import OPTIONAL_BUFFERS

INIT_LOGIT_SCALE = 10.0  # s at initialisation; learnable (as log s)


@dataclass
class DiscriminatorOutput:
    """Forward result at the input image size.

    Attributes:
        class_logits: (B, K, H, W) float32 ``s * cos`` per category (K includes "other" in open-set mode).
        anomaly_logit: (B, H, W) float32; ``sigmoid`` of it is the mean of the K class maps (or, with a
            reference, the calibrated map the model decides with).
        reference_logit: (B, H, W) calibrated reference logit when the model has a reference, else None.
    """

    class_logits: Tensor
    anomaly_logit: Tensor
    reference_logit: Tensor | None = None


def anomaly_logit_from_class_logits(class_logits: Tensor) -> Tensor:
    """(B, K, h, w) -> (B, h, w): logit of ``mean_k sigmoid(z_k)``, computed stably in log space."""
    return torch.logsumexp(F.logsigmoid(class_logits), dim=1) - torch.logsumexp(
        F.logsigmoid(-class_logits), dim=1
    )


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 + BatchNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
            nn.Conv2d(dim, dim, 1, bias=False),
            nn.BatchNorm2d(dim),
        )


class ResidualConvUnit(nn.Module):
    """DPT residual conv unit: ``x + conv(relu(conv(relu(x))))`` with separable convs."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = SeparableConv(dim)
        self.conv2 = SeparableConv(dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionNetwork(nn.Module):
    """Fuses multi-scale features from the coarsest level to the finest (DPT FeatureFusionBlocks).

    ``path_L = RCU(lateral_L)``; ``path_l = RCU(up(path_{l+1}) + RCU(lateral_l))``; output
    ``Conv1x1(path_1)`` at the finest level's resolution. ``lateral_l`` = Conv1x1 + BN + ReLU of level l.
    """

    def __init__(self, channels: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU()) for c in channels
        )
        self.lateral_units = nn.ModuleList(ResidualConvUnit(dim) for _ in channels[:-1])
        self.fuse_units = nn.ModuleList(ResidualConvUnit(dim) for _ in channels)
        self.out = nn.Conv2d(dim, dim, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """list of (B, C_l, h_l, w_l), fine to coarse -> (B, dim, h_1, w_1), channels-last memory."""
        cl = torch.channels_last
        lat = [m(f.contiguous(memory_format=cl)) for m, f in zip(self.laterals, features, strict=True)]
        path = self.fuse_units[-1](lat[-1])
        for i in range(len(lat) - 2, -1, -1):
            if path.shape[-2:] != lat[i].shape[-2:]:
                path = F.interpolate(path, size=lat[i].shape[-2:], mode="bilinear", align_corners=False)
            path = self.fuse_units[i](path + self.lateral_units[i](lat[i]))
        return self.out(path)


class Discriminator(nn.Module):
    """Frozen backbone + fusion network + category embeddings; built by :func:`build_discriminator`.

    Attributes:
        config, category_texts, image_size, seed: what it was built from (saved with checkpoints).
        num_classes: K, the number of category maps (known categories, + 1 "other" in open-set mode).
    """

    def __init__(
        self,
        backbone: FrozenBackbone,
        text_features: Tensor,
        config: DiscriminatorConfig,
        category_texts: list[list[str]],
        image_size: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.config, self.category_texts, self.image_size, self.seed = (
            config,
            category_texts,
            image_size,
            seed,
        )
        self.backbone = backbone
        extra = 1 if config.reference == "knn" else 0  # one distance channel per level
        # channels-last: ~1.3x faster depthwise/pointwise convolutions on CPU (same numbers).
        self.fusion = FusionNetwork(tuple(c + extra for c in backbone.channels), config.fusion_dim).to(
            memory_format=torch.channels_last
        )
        self.register_buffer("text_features", text_features.float().clone())
        self.text_projection = nn.Linear(text_features.shape[1], config.fusion_dim)
        self.other_embedding = nn.Parameter(torch.randn(1, config.fusion_dim)) if config.open_set else None
        self.log_scale = nn.Parameter(torch.tensor(math.log(INIT_LOGIT_SCALE)))
        self.num_classes = text_features.shape[0] + int(config.open_set)
        self.reference: ReferenceScorer | None = None  # set by training (knn) or by restoring a checkpoint

    def class_embeddings(self) -> Tensor:
        """(K, fusion_dim) L2-normalised category embeddings (the "other" one last in open-set mode)."""
        emb = self.text_projection(self.text_features)
        if self.other_embedding is not None:
            emb = torch.cat([emb, self.other_embedding], dim=0)
        return F.normalize(emb, dim=-1)

    @torch.no_grad()
    def extract_features(self, images: Tensor) -> list[Tensor]:
        """Frozen backbone features of (B, 3, H, W) normalised images (no gradient)."""
        return self.backbone(images)

    def _reference(self) -> ReferenceScorer:
        if self.reference is None:
            raise ValueError(
                "reference='knn' but the model has no reference bank (train it or load a checkpoint)"
            )
        return self.reference

    def reference_distances(self, features: list[Tensor]) -> list[Tensor] | None:
        """Per-level distances of ``features`` to the full bank (None without a reference)."""
        if self.config.reference != "knn":
            return None
        return self._reference().distances(features)

    def grid_logits(self, features: list[Tensor], distances: list[Tensor] | None = None) -> Tensor:
        """(B, K, h, w) class logits ``s * cos(f, t_k)`` on the feature grid.

        With a reference, ``distances`` are the per-level distance channels (default: to the full bank;
        training passes leave-one-out distances).
        """
        if self.config.reference == "knn":
            if distances is None:
                distances = self.reference_distances(features)
            features = [
                torch.cat([f, d[:, None].to(f.dtype)], 1) for f, d in zip(features, distances, strict=True)
            ]
        emb = F.normalize(self.fusion(features), dim=1)
        return torch.einsum("bdhw,kd->bkhw", emb, self.class_embeddings()) * self.log_scale.exp()

    def head(self, features: list[Tensor], size: tuple[int, int]) -> DiscriminatorOutput:
        """Trainable part: features -> class logits and anomaly logit, upsampled to ``size`` (H, W)."""
        distances = self.reference_distances(features)
        logits = self.grid_logits(features, distances)
        reference_logit = None
        if distances is not None:
            reference = self._reference()
            reference_logit = reference.logit(reference.distance_map(distances, size))
        if reference_logit is not None and not self._reference().uses_learned:
            anomaly_logit = reference_logit
        else:
            anomaly = anomaly_logit_from_class_logits(logits)[:, None]
            anomaly_logit = F.interpolate(anomaly, size=size, mode="bilinear", align_corners=False)[:, 0]
            if distances is not None:  # the learned map was chosen: shift it to its calibrated threshold
                anomaly_logit = anomaly_logit - self._reference().learned_tau_logit
        return DiscriminatorOutput(
            class_logits=F.interpolate(logits, size=size, mode="bilinear", align_corners=False),
            anomaly_logit=anomaly_logit,
            reference_logit=reference_logit,
        )

    def forward(self, images: Tensor) -> DiscriminatorOutput:
        """(B, 3, H, W) float32 normalised images (see :func:`preprocess`) -> outputs at (H, W)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        return self.head(self.extract_features(images), tuple(images.shape[-2:]))

    @property
    def edge_image_score(self) -> bool:
        """Images are scored by the reference's edge-aware score (``image_score: edge`` with the reference
        map deciding and the score fitted), not by the map's maximum."""
        ref = self.reference
        return (
            ref is not None
            and ref.has_edge_score
            and not ref.uses_learned
            and self.config.image_score == "edge"
        )

    def head_state_dict(self) -> dict[str, Tensor]:
        """Everything but the frozen backbone (which the build recreates): what a checkpoint stores."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def backbone_fingerprint(self) -> str:
        """SHA-256 over the backbone's state (names, shapes, bytes): detects a different backbone at load."""
        h = hashlib.sha256()
        for name, value in sorted(self.backbone.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(value.shape)).encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def build_discriminator(
    config: DiscriminatorConfig, category_texts: list[list[str]], image_size: int, seed: int
) -> Discriminator:
    """Build the discriminator; text embeddings are computed here once by the frozen text encoder.

    Args:
        config: discriminator config (backbone, text_encoder, fusion_dim, open_set, clip_*).
        category_texts: ``category_texts[i]`` = descriptions of category ``i + 1``.
        image_size: square input side the model is trained and run at.
        seed: seeds every random initialisation (fusion, projection, "other" embedding, tiny backbones).

    Returns:
        A Discriminator in eval mode.
    """
    text_encoders.validate_category_texts(category_texts)
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32, got {image_size!r}")
    generator = torch.Generator().manual_seed(seed)
    bundle = None
    text_encoder = config.resolved_text_encoder()
    if text_encoder != config.text_encoder:
        logging.getLogger(__name__).warning(
            "discriminator.text_encoder %s has no weights (dinotxt_weights unset): using text_fallback %s",
            config.text_encoder,
            text_encoder,
        )
    if config.backbone == "clip" or text_encoder == "clip":
        bundle = load_clip(config, image_size, generator)
    if config.backbone == "effnet-lite0":
        backbone: FrozenBackbone = EffNetLite0Backbone()
    elif config.backbone == "clip":
        backbone = ClipBackbone(bundle.model.visual, bundle.mean, bundle.std)
    elif config.backbone == "dinov3":
        backbone = load_dinov3(config)
    elif config.backbone == "tiny":
        backbone = TinyBackbone(generator)
    else:
        raise ValueError(
            f"config.backbone must be effnet-lite0, clip, dinov3 or tiny, got {config.backbone!r}"
        )
    if text_encoder == "minilm":
        text_features = text_encoders.encode_minilm(category_texts)
    elif text_encoder == "clip":
        text_features = text_encoders.encode_clip(category_texts, bundle)
    elif text_encoder == "dinotxt":
        text_features = encode_dinotxt(category_texts, str(config.dinotxt_weights))
    elif text_encoder == "tiny":
        text_features = text_encoders.encode_tiny(category_texts)
    else:
        raise ValueError(
            f"config.text_encoder must be minilm, clip, dinotxt or tiny, got {config.text_encoder!r}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Discriminator(
            backbone, text_features, config, [list(t) for t in category_texts], image_size, seed
        )
    return model.eval()


def restore_discriminator(
    state: dict[str, Tensor],
    config: DiscriminatorConfig,
    category_texts: list[list[str]],
    image_size: int,
    seed: int,
    backbone_sha256: str | None = None,
) -> Discriminator:
    """Rebuild a discriminator and load a :meth:`Discriminator.head_state_dict` into it.

    Raises:
        ValueError: the state does not fit the rebuilt model, or the rebuilt backbone's fingerprint differs
            from ``backbone_sha256`` (e.g. other backbone weights than at training time).
    """
    model = build_discriminator(config, category_texts, image_size, seed)
    if any(k.startswith("reference.") for k in state):
        model.reference = ReferenceScorer.empty_like_state(state)
    if backbone_sha256 is not None and model.backbone_fingerprint() != backbone_sha256:
        raise ValueError(
            f"backbone_sha256={backbone_sha256[:12]}... does not match the rebuilt "
            f"{config.backbone!r} backbone ({model.backbone_fingerprint()[:12]}...)"
        )
    expected = set(model.head_state_dict())
    if model.reference is not None:  # buffers newer than the checkpoint keep their unset values
        unset = {f"reference.{n}" for n in OPTIONAL_BUFFERS} - set(state)
        state = {**{k: v for k, v in model.head_state_dict().items() if k in unset}, **state}
    if set(state) != expected:
        raise ValueError(
            f"state keys differ from the model: missing {sorted(expected - set(state))}, "
            f"unexpected {sorted(set(state) - expected)}"
        )
    model.load_state_dict(state, strict=False)
    return model.eval()


def preprocess(images: np.ndarray, image_size: int, intensity: str = "raw") -> Tensor:
    """Resize (bilinear, antialiased, to a square), apply ``intensity`` (``raw`` | ``standardize``:
    ``uniadc.discriminator.intensity``) and ImageNet-normalise; backbones adapt internally.

    Args:
        images: (N, H, W, 3) uint8 RGB.
        image_size: output side S.
        intensity: ``raw`` or ``standardize`` (the model's ``config.intensity``).

    Returns:
        (N, 3, S, S) float32.
    """
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[-1] != 3
    ):
        raise ValueError(
            f"images must be an (N, H, W, 3) uint8 array, got "
            f"{getattr(images, 'shape', None)} {getattr(images, 'dtype', type(images).__name__)}"
        )
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    x = apply_intensity(x, intensity)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def model_input(model: Discriminator, images: np.ndarray) -> Tensor:
    """:func:`preprocess` with the model's own size and ``config.intensity``: what its backbone was trained on."""
    return preprocess(images, model.image_size, model.config.intensity)


def image_features(model: Discriminator, images: np.ndarray, batch_size: int = 16) -> list[Tensor]:
    """Frozen backbone features of uint8 images at ``model.image_size``, computed in batches.

    The backbone is frozen and seed-independent, so these can be computed once and reused: by training
    (cached training set) and by ``predict(..., features=...)`` across models that share the backbone.

    Args:
        model: the discriminator whose backbone to run.
        images: (N, H, W, 3) uint8 RGB.
        batch_size: images per backbone pass.

    Returns:
        One (N, C_l, h_l, w_l) float32 tensor per level, fine to coarse (about 360 KB per image for
        effnet-lite0 at 256).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    preprocess(images[:0], model.image_size)
    chunks = [
        model.extract_features(model_input(model, images[i : i + batch_size]))
        for i in range(0, images.shape[0], batch_size)
    ]
    if not chunks:
        raise ValueError("images must hold at least one image, got 0")
    return [torch.cat(level) for level in zip(*chunks, strict=True)]
