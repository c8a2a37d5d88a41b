"""The DINOv3 vision backbone and the dino.txt text tower (the paper's UniADC(DINO) variant), offline only.

- ``dinov3_weights``: a local ``transformers`` folder of a ``DINOv3ViTModel`` (``config.json`` with
  ``model_type: dinov3_vit`` + weights), loaded with ``from_pretrained(path, local_files_only=True)``. The
  features are the patch tokens of four evenly spaced transformer layers (ViT-B/16: layers 2, 5, 8, 11, the
  official code's choice), each passed through the model's final LayerNorm (``norm=True`` there), class and
  register tokens dropped, all at the patch stride. The image normalisation comes from the folder's
  ``preprocessor_config.json`` (``image_mean`` / ``image_std``), ImageNet's when it has none.
- ``dinotxt_weights``: a local checkpoint file holding the dino.txt text tower (a ``torch.save`` state dict,
  possibly nested under ``model`` / ``state_dict`` and prefixed, next to the vision head, which is ignored).
  :class:`DinoTxtTextTower` follows the module layout of dinov3's text code: a causal transformer
  (``backbone``: token and position embeddings, pre-norm blocks of ``attention_norm`` / ``attention.qkv`` /
  ``attention.proj`` / ``ffn_norm`` / ``feed_forward.fc1,fc2`` with optional layer scales, ``ln_final``)
  and a ``head`` (more such blocks, ``ln_final``, ``linear_projection``); the text embedding is the
  end-of-text token's output. Sizes are read from the tensors' shapes, heads = width / 64. The category
  embedding is the second half of that embedding (the patch-aligned half, ``features[:, 1024:]`` in the
  official code). The layout could not be checked against the gated checkpoint here; a checkpoint that does
  not fit fails with one line naming the first missing and unexpected keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from schemas.config import DiscriminatorConfig
from uniadc.discriminator.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrozenBackbone,
    evenly_spaced_layers,
)

DINOV3_LAYOUT = "a transformers DINOv3ViTModel folder (config.json with model_type dinov3_vit + weights)"
DINOTXT_LAYOUT = "a dino.txt checkpoint file (torch state dict with the text tower's tensors)"
TEXT_ROOT = "backbone.token_embedding.weight"  # the key that locates the text tower inside a checkpoint
HEAD_WIDTH = 64


class DinoV3Backbone(FrozenBackbone):
    """Patch tokens of a ``transformers`` DINOv3 ViT at four evenly spaced layers, LayerNorm-ed."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__(mean, std)
        cfg = model.config
        if getattr(cfg, "model_type", None) != "dinov3_vit":
            raise ValueError(f"dinov3 backbone needs a DINOv3ViTModel, got {type(model).__name__}")
        self.model = model
        self.layers = evenly_spaced_layers(cfg.num_hidden_layers)
        self.prefix = 1 + int(cfg.num_register_tokens)
        self.patch = int(cfg.patch_size)
        self.channels = (int(cfg.hidden_size),) * len(self.layers)
        self.strides = (self.patch,) * len(self.layers)
        self.freeze()

    def features(self, x: Tensor) -> list[Tensor]:
        b, _, h, w = x.shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"dinov3 input {h}x{w} is not a multiple of the patch size {self.patch}")
        out = self.model(pixel_values=x, output_hidden_states=True)
        grid = (h // self.patch, w // self.patch)
        levels = []
        for layer in self.layers:
            tokens = self.model.norm(out.hidden_states[layer + 1])[:, self.prefix :]
            levels.append(tokens.transpose(1, 2).reshape(b, -1, *grid).contiguous())
        return levels


def check_dino_weights(config: DiscriminatorConfig) -> None:
    """Preflight for ``dinov3_weights`` / ``dinotxt_weights`` without loading them.

    Raises:
        WeightsError: one line naming the key, the path and what is wrong.
    """
    from uniadc.synthesis.runtime import WeightsError, check_json, check_weights_file, check_weights_folder

    if config.backbone == "dinov3":
        key = "discriminator.dinov3_weights"
        if config.dinov3_weights is None:
            raise WeightsError(f"{key} is not set (backbone dinov3); expected {DINOV3_LAYOUT}")
        folder = Path(config.dinov3_weights)
        if not folder.is_dir():
            raise WeightsError(f"{key}={config.dinov3_weights!r}: no such folder; expected {DINOV3_LAYOUT}")
        meta = check_json(folder / "config.json", key)
        if meta.get("model_type") != "dinov3_vit":
            raise WeightsError(
                f"{key}: {folder / 'config.json'}: model_type is {meta.get('model_type')!r}, not 'dinov3_vit'"
            )
        check_weights_folder(folder, key, DINOV3_LAYOUT)
    if config.resolved_text_encoder() == "dinotxt":
        key = "discriminator.dinotxt_weights"
        path = Path(str(config.dinotxt_weights))
        if not path.is_file():
            raise WeightsError(f"{key}={config.dinotxt_weights!r}: no such file; expected {DINOTXT_LAYOUT}")
        check_weights_file(path, key)


def load_dinov3(config: DiscriminatorConfig) -> DinoV3Backbone:
    """The frozen DINOv3 backbone from ``config.dinov3_weights`` (local files only)."""
    from transformers import DINOv3ViTModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor bar on every (cached) rebuild is noise in the logs
    if config.dinov3_weights is None:
        raise ValueError("discriminator.dinov3_weights is not set: the dinov3 backbone needs a local folder")
    folder = Path(config.dinov3_weights)
    model = DINOv3ViTModel.from_pretrained(str(folder), local_files_only=True).eval()
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        meta = json.loads(pre.read_text())
        mean = tuple(float(v) for v in meta.get("image_mean", mean))
        std = tuple(float(v) for v in meta.get("image_std", std))
    return DinoV3Backbone(model, mean, std)


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm causal block: x + ls1(attn(norm(x))), then x + ls2(ffn(norm(x)))."""

    def __init__(self, dim: int, heads: int, hidden: int, layer_scale: bool) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = _Attention(dim, heads)
        self.ffn_norm = nn.LayerNorm(dim)
        self.feed_forward = _FeedForward(dim, hidden)
        self.ls1 = _LayerScale(dim) if layer_scale else nn.Identity()
        self.ls2 = _LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attention(self.attention_norm(x)))
        return x + self.ls2(self.feed_forward(self.ffn_norm(x)))


class _TextBackbone(nn.Module):
    def __init__(self, vocab: int, context: int, dim: int, depth: int, hidden: int, ls: bool) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.positional_embedding = nn.Parameter(torch.zeros(context, dim))
        self.blocks = nn.ModuleList(_Block(dim, max(dim // HEAD_WIDTH, 1), hidden, ls) for _ in range(depth))
        self.ln_final = nn.LayerNorm(dim)


class _TextHead(nn.Module):
    def __init__(self, dim: int, depth: int, hidden: int, ls: bool, out_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Block(dim, max(dim // HEAD_WIDTH, 1), hidden, ls) for _ in range(depth))
        self.ln_final = nn.LayerNorm(dim)
        self.linear_projection = nn.Linear(dim, out_dim, bias=False)


class DinoTxtTextTower(nn.Module):
    """dino.txt's text tower: causal transformer + text head, pooled at the end-of-text token."""

    def __init__(
        self,
        vocab: int = 49408,
        context: int = 77,
        dim: int = 1280,
        depth: int = 24,
        head_depth: int = 1,
        hidden: int | None = None,
        layer_scale: bool = True,
        out_dim: int = 2048,
    ) -> None:
        super().__init__()
        hidden = hidden or 4 * dim
        self.backbone = _TextBackbone(vocab, context, dim, depth, hidden, layer_scale)
        self.head = _TextHead(dim, head_depth, hidden, layer_scale, out_dim)

    @property
    def context_length(self) -> int:
        return int(self.backbone.positional_embedding.shape[0])

    def forward(self, tokens: Tensor) -> Tensor:
        """(N, L) int64 tokens (end-of-text = the largest id of each row) -> (N, out_dim) embeddings."""
        n, length = tokens.shape
        x = self.backbone.token_embedding(tokens) + self.backbone.positional_embedding[:length]
        for block in self.backbone.blocks:
            x = block(x)
        x = self.backbone.ln_final(x)
        for block in self.head.blocks:
            x = block(x)
        x = self.head.ln_final(x)
        return self.head.linear_projection(x[torch.arange(n), tokens.argmax(dim=-1)])


def _text_state(raw: object, source: str) -> dict[str, Tensor]:
    """The text tower's tensors of a (possibly nested, possibly prefixed) checkpoint, prefix removed."""
    from uniadc.synthesis.runtime import WeightsError

    state = raw
    for wrapper in ("model", "state_dict", "text_model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict) and TEXT_ROOT not in state:
            state = state[wrapper]
    if not isinstance(state, dict):
        raise WeightsError(f"discriminator.dinotxt_weights: {source}: not a state dict")
    roots = [k for k in state if isinstance(k, str) and k.endswith(TEXT_ROOT)]
    if len(roots) != 1:
        raise WeightsError(
            f"discriminator.dinotxt_weights: {source}: {len(roots)} tensors named '*{TEXT_ROOT}' "
            f"(expected exactly one); expected {DINOTXT_LAYOUT}"
        )
    prefix = roots[0][: -len(TEXT_ROOT)]
    parts = (prefix + "backbone.", prefix + "head.")
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(parts)}


def _count_blocks(state: dict[str, Tensor], part: str) -> int:
    ids = {int(k.split(".")[2]) for k in state if k.startswith(f"{part}.blocks.")}
    return max(ids) + 1 if ids else 0


def load_dinotxt(path: str | Path) -> DinoTxtTextTower:
    """Build :class:`DinoTxtTextTower` with the sizes of the checkpoint at ``path`` and load it (strict)."""
    from uniadc.synthesis.runtime import WeightsError, check_state_dict

    source = str(path)
    try:
        raw = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of every kind: one line naming the file
        raise WeightsError(f"discriminator.dinotxt_weights: {source}: cannot load ({exc})") from exc
    state = _text_state(raw, source)
    vocab, dim = state[TEXT_ROOT].shape
    fc1 = state.get("backbone.blocks.0.feed_forward.fc1.weight")
    proj = state.get("head.linear_projection.weight")
    if fc1 is None or proj is None or "backbone.positional_embedding" not in state:
        raise WeightsError(
            f"discriminator.dinotxt_weights: {source}: missing the text tower's blocks, position embedding "
            f"or head projection; expected {DINOTXT_LAYOUT}"
        )
    tower = DinoTxtTextTower(
        vocab=int(vocab),
        context=int(state["backbone.positional_embedding"].shape[0]),
        dim=int(dim),
        depth=_count_blocks(state, "backbone"),
        head_depth=_count_blocks(state, "head"),
        hidden=int(fc1.shape[0]),
        layer_scale="backbone.blocks.0.ls1.gamma" in state,
        out_dim=int(proj.shape[0]),
    )
    check_state_dict(tower, state, source, "the dino.txt text tower layout")
    tower.load_state_dict(state, strict=True)
    return tower.eval()


def encode_dinotxt(category_texts: list[list[str]], path: str | Path) -> Tensor:
    """(K, D/2) category embeddings: the patch-aligned half of the dino.txt text embedding."""
    from open_clip.tokenizer import SimpleTokenizer

    from uniadc.discriminator.text import pool_prompts

    tower = load_dinotxt(path)
    tokenizer = SimpleTokenizer(context_length=tower.context_length)

    def encode(texts: list[str]) -> Tensor:
        out = tower(tokenizer(texts))
        return out[:, out.shape[1] // 2 :] if out.shape[1] % 2 == 0 else out

    with torch.no_grad():
        return pool_prompts(category_texts, encode)
