"""A tiny model with Stable Diffusion 1.4's topology, saved in the diffusers folder layout.

Same block types and layout as SD-1.4 (4-level UNet, cross-attention in the first three down
blocks, the mid block and the last three up blocks; 8x VAE with 4 latent channels; CLIP text
encoder with the real 49408-id tokenizer), at a width a 2-core CPU trains in minutes. It is
loaded by exactly the code that loads ``stable-diffusion-v1-4`` (``genpromp.models.loading``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import GenprompError
from ..io import atomic_dir

__all__ = ["create_tiny_components", "save_components", "build_tiny_model", "pixels_to_unit", "SD14_SCHEDULER",
           "SD14_SCALING_FACTOR", "SD14_BLOCK_TYPES", "register_cli"]

# SD-1.4's noise schedule (docs/method.md § Models).
SD14_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear", clip_sample=False)
SD14_SCALING_FACTOR = 0.18215
# Initial VAE posterior log-variance (std ~ 0.02); see _init_posterior_logvar.
VAE_INIT_LOGVAR = -8.0
# SD-1.4's UNet block layout, which the tiny model keeps.
SD14_BLOCK_TYPES = dict(
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)


def pixels_to_unit(images_u8):
    """uint8 images [N, 3, H, W] → float32 in [-1, 1], the VAE's input range."""
    return images_u8.float().div(127.5).sub(1.0)


def _norm_groups(channels):
    """GroupNorm groups with >= 4 channels per group (SD: 128 or 320 channels in 32 groups).

    One channel per group would be an instance norm that erases each image's colour offsets at the
    full-resolution level, which stalls a narrow VAE at the mean image.
    """
    return max(1, min(32, min(channels) // 4))


def _heads_per_level(heads, levels):
    """Attention heads per UNet level: an int (same everywhere) or one value per level.

    (diffusers' ``attention_head_dim`` is, for SD-1.x UNets, the number of heads.) Fewer heads at the
    full-latent level make its self-attention (latent_h * latent_w queries) much cheaper on CPU.
    """
    if isinstance(heads, int):
        return heads
    heads = tuple(int(h) for h in heads)
    if len(heads) != levels:
        raise GenprompError(f"tiny model: {len(heads)} head counts given for {levels} UNet levels")
    return heads


def _unet_config(channels, cross_dim, sample_size, heads):
    return dict(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=tuple(channels),
        **SD14_BLOCK_TYPES,
        cross_attention_dim=cross_dim, attention_head_dim=_heads_per_level(heads, len(channels)), norm_num_groups=_norm_groups(channels),
    )


def create_tiny_components(tokenizer_dir, resolution=256, block_out_channels=(32, 64, 64, 64),
                           cross_attention_dim=64, text_hidden_size=64, text_layers=2, heads=4,
                           vae_channels=(16, 32, 64, 64), scaling_factor=SD14_SCALING_FACTOR, seed=0):
    """Randomly initialised tiny SD-topology components, in memory.

    Returns ``(tokenizer, text_encoder, vae, unet, scheduler)``. ``cross_attention_dim`` must equal
    ``text_hidden_size`` (the UNet attends to the text encoder's last hidden state, as in SD).
    Deterministic for a given ``seed``.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if cross_attention_dim != text_hidden_size:
        raise GenprompError(f"tiny model: cross_attention_dim ({cross_attention_dim}) must equal "
                            f"text_hidden_size ({text_hidden_size})")
    if resolution % 8:
        raise GenprompError(f"tiny model: resolution {resolution} must be a multiple of 8 (8x VAE)")
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_hidden_size, intermediate_size=4 * text_hidden_size,
        num_hidden_layers=text_layers, num_attention_heads=max(1, text_hidden_size // 16),
        max_position_embeddings=tokenizer.model_max_length, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=text_hidden_size,
    )
    text_encoder = CLIPTextModel(text_config)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=tuple(vae_channels),
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        norm_num_groups=_norm_groups(vae_channels), sample_size=resolution, scaling_factor=scaling_factor,
    )
    _init_posterior_logvar(vae, VAE_INIT_LOGVAR)
    unet = UNet2DConditionModel(**_unet_config(block_out_channels, cross_attention_dim,
                                               resolution // 8, heads))
    scheduler = DDPMScheduler(**SD14_SCHEDULER)
    return tokenizer, text_encoder, vae, unet, scheduler


@torch.no_grad()
def _init_posterior_logvar(vae, logvar):
    """Start the VAE posterior narrow: log-variance channels of ``quant_conv`` output ``logvar``.

    With the default init (log-variance ~0, std ~1) sampled latents are pure noise, the decoder learns
    to ignore them and a short pretraining never recovers (reconstructions stay the mean image).
    """
    conv = vae.quant_conv
    half = conv.out_channels // 2
    conv.weight[half:].zero_()
    conv.bias[half:].fill_(logvar)


def save_components(out_dir, tokenizer, text_encoder, vae, unet, scheduler):
    """Write the five components and ``model_index.json`` to ``out_dir`` in the diffusers pipeline layout
    (``StableDiffusionPipeline.from_pretrained`` loads it), atomically."""
    from ..models.pipeline import MODEL_INDEX_NAME, model_index

    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp / "tokenizer")
        text_encoder.save_pretrained(tmp / "text_encoder")
        vae.save_pretrained(tmp / "vae")
        unet.save_pretrained(tmp / "unet")
        scheduler.save_pretrained(tmp / "scheduler")
        (tmp / MODEL_INDEX_NAME).write_text(json.dumps(model_index(type(scheduler).__name__), indent=2) + "\n")
    return Path(out_dir)


def build_tiny_model(out_dir, tokenizer_dir, resolution=256, block_out_channels=(32, 64, 64, 64),
                     cross_attention_dim=64, text_hidden_size=64, text_layers=2, heads=4,
                     vae_channels=(16, 32, 64, 64), scaling_factor=SD14_SCALING_FACTOR, seed=0):
    """Write a randomly initialised SD-topology model folder to ``out_dir`` and return its path."""
    parts = create_tiny_components(tokenizer_dir, resolution, block_out_channels, cross_attention_dim,
                                   text_hidden_size, text_layers, heads, vae_channels, scaling_factor, seed)
    return save_components(out_dir, *parts)


def register_cli(sub):
    p = sub.add_parser("build-tiny", help="write a randomly initialised tiny SD-1.4-topology model folder")
    p.add_argument("--out", required=True, help="output folder (diffusers layout)")
    p.add_argument("--tokenizer", default="resources/assets/clip_tokenizer", help="CLIPTokenizer folder")
    p.add_argument("--resolution", type=int, default=256, help="image size the model is built for (latent = resolution / 8)")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    p.set_defaults(func=lambda a: build_tiny_model(a.out, a.tokenizer, resolution=a.resolution, seed=a.seed))
