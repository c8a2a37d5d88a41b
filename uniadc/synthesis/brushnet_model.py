"""BrushNet (Ju et al., ECCV 2024) as a diffusers model on stock diffusers parts.

BrushNet is a copy of the SD1.5 UNet with every attention layer removed. It reads the noisy latent, the VAE
latent of the masked image and the mask (1 = keep, 0 = hole) at latent size, and returns 28 residuals
(12 down, 1 mid, 15 up) through zero-initialised 1x1 convs. :class:`UNetResidualInjector` adds them to a stock
``UNet2DConditionModel`` right after the layer each one belongs to. The parameter names and the config
match the published ``segmentation_mask_brushnet_ckpt`` / ``random_mask_brushnet_ckpt`` folders, so
:meth:`BrushNetModel.from_checkpoint` loads them strictly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import DownBlock2D, UNetMidBlock2D, UpBlock2D
from torch import nn

from uniadc.synthesis.runtime import WeightsError, check_state_dict

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
BRUSHNET_LAYOUT = f"a BrushNet folder with config.json and {WEIGHTS_NAME}"


@dataclass
class BrushNetOutput:
    """The 28 residuals (SD1.5 sizes): 12 down, 1 mid, 15 up; each (B, C, h, w) in the model dtype."""

    down_block_res_samples: list[torch.Tensor]
    mid_block_res_sample: torch.Tensor
    up_block_res_samples: list[torch.Tensor]


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class BrushNetModel(ModelMixin, ConfigMixin):
    """The BrushNet branch. Constructor arguments are the published ``config.json`` fields.

    Fields about attention, cross-attention, class/addition embeddings and the conditioning embedding are
    accepted for config compatibility; the published model builds no layer from them, and values that
    would need such layers are rejected.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 5,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("DownBlock2D",) * 4,
        mid_block_type: str = "MidBlock2D",
        up_block_types: tuple[str, ...] = ("UpBlock2D",) * 4,
        only_cross_attention: bool = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        transformer_layers_per_block: int = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        brushnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ) -> None:
        super().__init__()
        n = len(block_out_channels)
        if list(down_block_types) != ["DownBlock2D"] * n:
            raise ValueError(f"down_block_types must be {n} x DownBlock2D, got {list(down_block_types)}")
        if list(up_block_types) != ["UpBlock2D"] * n:
            raise ValueError(f"up_block_types must be {n} x UpBlock2D, got {list(up_block_types)}")
        if mid_block_type != "MidBlock2D":
            raise ValueError(f"mid_block_type must be 'MidBlock2D' (two resnets), got {mid_block_type!r}")
        if brushnet_conditioning_channel_order not in ("rgb", "bgr"):
            raise ValueError(
                f"brushnet_conditioning_channel_order must be rgb/bgr, "
                f"got {brushnet_conditioning_channel_order!r}"
            )
        if resnet_time_scale_shift != "default":
            raise ValueError(f"resnet_time_scale_shift must be 'default', got {resnet_time_scale_shift!r}")
        for key, value in (
            ("class_embed_type", class_embed_type),
            ("addition_embed_type", addition_embed_type),
            ("encoder_hid_dim", encoder_hid_dim),
            ("num_class_embeds", num_class_embeds),
        ):
            if value is not None:
                raise ValueError(f"{key} must be null for BrushNet, got {value!r}")

        time_dim = block_out_channels[0] * 4
        self.conv_in_condition = nn.Conv2d(
            in_channels + conditioning_channels, block_out_channels[0], 3, padding=1
        )
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_dim, act_fn=act_fn)

        common = dict(
            temb_channels=time_dim, resnet_eps=norm_eps, resnet_act_fn=act_fn, resnet_groups=norm_num_groups
        )
        self.down_blocks = nn.ModuleList()
        down_convs = [_zero_conv(block_out_channels[0])]
        out_ch = block_out_channels[0]
        for i, ch in enumerate(block_out_channels):
            final = i == n - 1
            self.down_blocks.append(
                DownBlock2D(
                    in_channels=out_ch,
                    out_channels=ch,
                    num_layers=layers_per_block,
                    add_downsample=not final,
                    downsample_padding=downsample_padding,
                    **common,
                )
            )
            out_ch = ch
            down_convs += [_zero_conv(ch) for _ in range(layers_per_block + (0 if final else 1))]
        self.brushnet_down_blocks = nn.ModuleList(down_convs)

        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1],
            num_layers=1,
            add_attention=False,
            output_scale_factor=mid_block_scale_factor,
            **common,
        )
        self.brushnet_mid_block = _zero_conv(block_out_channels[-1])

        self.up_blocks = nn.ModuleList()
        up_convs = []
        rev = list(reversed(block_out_channels))
        out_ch = rev[0]
        for i, ch in enumerate(rev):
            final = i == n - 1
            prev, out_ch, in_ch = out_ch, ch, rev[min(i + 1, n - 1)]
            self.up_blocks.append(
                UpBlock2D(
                    in_channels=in_ch,
                    prev_output_channel=prev,
                    out_channels=ch,
                    num_layers=layers_per_block + 1,
                    add_upsample=not final,
                    resolution_idx=i,
                    **common,
                )
            )
            up_convs += [_zero_conv(ch) for _ in range(layers_per_block + 1 + (0 if final else 1))]
        self.brushnet_up_blocks = nn.ModuleList(up_convs)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        brushnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        guess_mode: bool = False,
    ) -> BrushNetOutput:
        """Residuals for the UNet.

        Args:
            sample: (B, 4, h, w) the noisy latent, exactly as the UNet sees it.
            timestep: scalar or (B,) diffusion timesteps.
            brushnet_cond: (B, 5, h, w) masked-image latent (4 channels) then the mask (1 = keep, 0 = hole).
            conditioning_scale: multiplies every residual.
            guess_mode: scale the 28 residuals by logspace(-1, 0, 28) x conditioning_scale instead.

        Returns:
            :class:`BrushNetOutput` in ``sample``'s dtype.
        """
        if brushnet_cond.shape[1] != self.config.conditioning_channels:
            raise ValueError(
                f"brushnet_cond must have {self.config.conditioning_channels} channels, "
                f"got {tuple(brushnet_cond.shape)}"
            )
        if self.config.brushnet_conditioning_channel_order == "bgr":
            brushnet_cond = torch.flip(brushnet_cond, dims=[1])
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(1).expand(sample.shape[0]) if t.ndim == 0 else t.expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(t).to(dtype=sample.dtype))

        h = self.conv_in_condition(torch.cat([sample, brushnet_cond], dim=1))
        skips: tuple[torch.Tensor, ...] = (h,)
        for block in self.down_blocks:
            h, states = block(h, emb)
            skips += states
        down = list(skips)
        h = self.mid_block(h, emb)
        mid = h
        up: list[torch.Tensor] = []
        for block in self.up_blocks:
            n_res = len(block.resnets)
            block_skips, skips = skips[-n_res:], skips[:-n_res]
            for resnet, skip in zip(block.resnets, reversed(block_skips), strict=True):
                h = resnet(torch.cat([h, skip], dim=1), emb)
                up.append(h)
            if block.upsamplers is not None:
                h = block.upsamplers[0](h, skips[-1].shape[2:])
                up.append(h)

        down = [conv(x) for conv, x in zip(self.brushnet_down_blocks, down, strict=True)]
        mid = self.brushnet_mid_block(mid)
        up = [conv(x) for conv, x in zip(self.brushnet_up_blocks, up, strict=True)]
        if guess_mode and not self.config.global_pool_conditions:
            scales = torch.logspace(-1, 0, len(down) + 1 + len(up), device=sample.device) * conditioning_scale
            down = [x * s for x, s in zip(down, scales[: len(down)], strict=True)]
            mid = mid * scales[len(down)]
            up = [x * s for x, s in zip(up, scales[len(down) + 1 :], strict=True)]
        else:
            down = [x * conditioning_scale for x in down]
            mid = mid * conditioning_scale
            up = [x * conditioning_scale for x in up]
        if self.config.global_pool_conditions:
            down = [x.mean(dim=(2, 3), keepdim=True) for x in down]
            mid = mid.mean(dim=(2, 3), keepdim=True)
            up = [x.mean(dim=(2, 3), keepdim=True) for x in up]
        return BrushNetOutput(down, mid, up)

    @classmethod
    def from_unet(cls, unet: nn.Module) -> BrushNetModel:
        """The training initialisation: UNet resnet weights copied, conv_in doubled, zero residual convs.

        Args:
            unet: a ``UNet2DConditionModel`` with 4 input channels.
        """
        c = unet.config
        with torch.device(unet.device):  # initialise in place (SD1.5 size: 619M parameters)
            model = cls(
                in_channels=c.in_channels,
                block_out_channels=tuple(c.block_out_channels),
                layers_per_block=c.layers_per_block,
                norm_num_groups=c.norm_num_groups,
                norm_eps=c.norm_eps,
                act_fn=c.act_fn,
                flip_sin_to_cos=c.flip_sin_to_cos,
                freq_shift=c.freq_shift,
                downsample_padding=c.downsample_padding,
                mid_block_scale_factor=c.mid_block_scale_factor,
                cross_attention_dim=c.cross_attention_dim,
                attention_head_dim=c.attention_head_dim,
                down_block_types=("DownBlock2D",) * len(c.block_out_channels),
                up_block_types=("UpBlock2D",) * len(c.block_out_channels),
            )
        model = model if model.dtype == unet.dtype else model.to(dtype=unet.dtype)
        with torch.no_grad():
            w = unet.conv_in.weight
            model.conv_in_condition.weight.zero_()
            model.conv_in_condition.weight[:, : w.shape[1]] = w
            model.conv_in_condition.weight[:, w.shape[1] : 2 * w.shape[1]] = w
            model.conv_in_condition.bias.copy_(unet.conv_in.bias)
        model.time_embedding.load_state_dict(unet.time_embedding.state_dict())
        for name in ("down_blocks", "mid_block", "up_blocks"):
            getattr(model, name).load_state_dict(getattr(unet, name).state_dict(), strict=False)
        return model

    @classmethod
    def from_checkpoint(
        cls, folder: str | Path, torch_dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> BrushNetModel:
        """Load ``config.json`` + ``diffusion_pytorch_model.safetensors`` with a strict key and shape check.

        Raises:
            WeightsError: a file is missing, or the state dict does not match the config's layout.
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in ("config.json", WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise WeightsError(f"{folder}: missing {name}; expected {BRUSHNET_LAYOUT}")
        config = cls.load_config(str(folder), local_files_only=True)
        with torch.device("meta"):
            model = cls.from_config(config)
        state = load_file(str(folder / WEIGHTS_NAME), device=str(device))
        check_state_dict(model, state, str(folder / WEIGHTS_NAME), "the BrushNet config")
        model.load_state_dict(state, strict=True, assign=True)
        model = model.to(device)
        return (model if model.dtype == torch_dtype else model.to(dtype=torch_dtype)).eval()


class UNetResidualInjector:
    """Adds BrushNet residuals to a stock ``UNet2DConditionModel`` where the BrushNet fork adds them.

    Forward hooks add each residual right after its layer (after the resnet, or after the resnet+attention
    pair in cross-attention blocks; on the output of each down/upsampler; on the mid block's output); a
    pre-hook adds the first residual to the input of ``down_blocks[0]`` only, so the UNet's stored conv_in
    skip stays unchanged. The hooks are idle until :meth:`set` is called and after :meth:`clear`.

    A residual batch smaller than the UNet batch is tiled (BrushNet does not read the text, so the
    unconditional and conditional halves of classifier-free guidance share one BrushNet pass).
    """

    def __init__(self, unet: nn.Module) -> None:
        self._down: list[torch.Tensor] | None = None
        self._mid: torch.Tensor | None = None
        self._up: list[torch.Tensor] | None = None
        self.handles = []
        down_layers: list[nn.Module] = []
        for block in unet.down_blocks:
            layers = getattr(block, "attentions", None) or block.resnets
            down_layers += list(layers)
            if block.downsamplers is not None:
                down_layers.append(block.downsamplers[0])
        up_layers: list[nn.Module] = []
        for block in unet.up_blocks:
            layers = getattr(block, "attentions", None) or block.resnets
            up_layers += list(layers)
            if block.upsamplers is not None:
                up_layers.append(block.upsamplers[0])
        self.n_down, self.n_up = 1 + len(down_layers), len(up_layers)
        self.handles.append(unet.down_blocks[0].register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        for i, layer in enumerate(down_layers):
            self.handles.append(layer.register_forward_hook(self._hook("down", i + 1)))
        self.handles.append(unet.mid_block.register_forward_hook(self._hook("mid", 0)))
        for i, layer in enumerate(up_layers):
            self.handles.append(layer.register_forward_hook(self._hook("up", i)))

    def set(self, out: BrushNetOutput) -> None:
        """Feed the residuals of the next UNet call."""
        if len(out.down_block_res_samples) != self.n_down or len(out.up_block_res_samples) != self.n_up:
            raise ValueError(
                f"BrushNet gives {len(out.down_block_res_samples)} down / "
                f"{len(out.up_block_res_samples)} up residuals, the UNet takes {self.n_down} / {self.n_up}"
            )
        self._down, self._mid, self._up = (
            out.down_block_res_samples,
            out.mid_block_res_sample,
            out.up_block_res_samples,
        )

    def clear(self) -> None:
        self._down = self._mid = self._up = None

    def remove(self) -> None:
        """Detach every hook from the UNet."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @staticmethod
    def _add(h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if r.shape[0] != h.shape[0]:
            r = r.repeat(h.shape[0] // r.shape[0], 1, 1, 1)
        return h + r.to(h.dtype)

    def _pre_hook(self, module, args, kwargs):
        if self._down is None:
            return None
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": self._add(kwargs["hidden_states"], self._down[0])}
        else:
            args = (self._add(args[0], self._down[0]), *args[1:])
        return args, kwargs

    def _hook(self, kind: str, index: int):
        def hook(module, args, output):
            if self._down is None:
                return None
            r = self._mid if kind == "mid" else (self._down if kind == "down" else self._up)[index]
            if isinstance(output, tuple):
                return (self._add(output[0], r), *output[1:])
            if hasattr(output, "sample"):
                output.sample = self._add(output.sample, r)
                return output
            return self._add(output, r)

        return hook
