"""Load Stable Diffusion components from a diffusers-layout folder, offline.

The same code path loads the real ``stable-diffusion-v1-4`` folder and the tiny demo model. Every
``from_pretrained`` call passes ``local_files_only=True``, so nothing is downloaded and the process
environment (``HF_HUB_OFFLINE`` and friends) is left as the caller set it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import GenprompError, InputError

__all__ = ["SDComponents", "load_components", "load_unet", "REQUIRED_SUBFOLDERS"]

REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class SDComponents:
    tokenizer: object
    text_encoder: object
    vae: object
    unet: object
    scheduler: object

    @property
    def scaling_factor(self):
        return self.vae.config.scaling_factor


def _check_folder(path):
    path = Path(path)
    missing = [s for s in REQUIRED_SUBFOLDERS if not (path / s).is_dir()]
    if missing:
        raise GenprompError(f"{path}: not a diffusers Stable Diffusion folder (missing {', '.join(missing)}/); "
                            "point `pretrained` at a stable-diffusion-v1-4 folder or enable the demo")
    return path


def load_unet(path):
    """A UNet2DConditionModel from a ``unet/`` folder (ours or the original's finetuned one)."""
    from diffusers import UNet2DConditionModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise GenprompError(f"{path}: no config.json; expected a diffusers unet/ folder")
    try:
        return UNet2DConditionModel.from_pretrained(path, local_files_only=True)
    except OSError as exc:  # diffusers reports unreadable or refused weight files as OSError
        raise InputError(path, f"cannot load the UNet weights ({exc}). A diffusion_pytorch_model.bin must be a "
                               "plain tensor state dict (it is read with torch.load(weights_only=True), which "
                               "refuses pickles that run code); prefer diffusion_pytorch_model.safetensors") from exc


def load_components(path, unet_path=None):
    """Tokenizer, text encoder, VAE, UNet (optionally replaced from ``unet_path``) and DDPM scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    path = _check_folder(path)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(path / "vae", local_files_only=True)
    unet = load_unet(unet_path or path / "unet")
    # SD-1.4 ships a PNDM scheduler config; its beta schedule gives the same alphas_cumprod.
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    for module in (text_encoder, vae, unet):
        module.eval()
    return SDComponents(tokenizer, text_encoder, vae, unet, scheduler)
