"""Rehearsal fixture: the real files' formats and sizes, with random content.

Before the official Stable Diffusion 1.4 weights and CUB_200_2011 arrive, the path they will take can
be walked with stand-ins that have exactly their layout and size:

* ``ckpts/pretrains/stable-diffusion-v1-4/`` — a diffusers folder with SD-1.4's architecture at full
  size (860M-parameter UNet, CLIP ViT-L/14 text encoder, the KL autoencoder) and *random* weights
  (``.safetensors``), the real CLIP BPE tokenizer, the PNDM scheduler config and ``model_index.json``
  as v1-4 ships them;
* ``data/CUB_200_2011/`` — the CUB layout with all 200 class lines but images for 3 classes only, its
  ``images/`` folder a symbolic link to a folder elsewhere (as when images live on another disk);
* ``ckpts/classifications/cub_efficientnetb7.json`` — classifier scores in the original's JSON format;
* ``ckpts/cub980/tokens/{id}.bin`` and ``ckpts/cub980/unet/`` — checkpoints in the formats the
  original released (torch pickles; the UNet as ``diffusion_pytorch_model.bin``);
* ``ckpts/hostile/`` — a token file and a UNet weight file whose unpickling would run code (it would
  create ``ckpts/hostile/UNPICKLED``): both must be refused without that file ever appearing.

The paths are those ``config/cub.yaml`` names, relative to ``--out``. Everything derives from the seed.
Run ``python -m genpromp.rehearsal --out <folder>`` (see ``--help``); README.md ("Using real data and
weights") shows the workflow commands that run on it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from .errors import GenprompError
from .io import atomic_dir, atomic_path

__all__ = [
    "SD14_UNET_CONFIG", "SD14_VAE_CONFIG", "SD14_TEXT_ENCODER_CONFIG", "SD14_SCHEDULER_CONFIG",
    "SD14_MODEL_INDEX", "KEPT_CLASSES", "HOSTILE_MARKER", "cub_class_names", "write_sd14_folder",
    "write_cub_fixture", "write_classifier_json", "write_released_tokens", "write_released_unet",
    "write_hostile_checkpoints", "build_rehearsal", "main",
]

log = logging.getLogger(__name__)

# stable-diffusion-v1-4's unet/config.json (architecture keys).
SD14_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
# vae/config.json.
SD14_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# text_encoder/config.json: CLIP ViT-L/14's text tower.
SD14_TEXT_ENCODER_CONFIG = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}
# scheduler/scheduler_config.json.
SD14_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.7.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
# model_index.json (feature_extractor/ and safety_checker/ are listed but not written).
SD14_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.2.2",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json")

KEPT_CLASSES = (0, 1, 2)        # 0-based ids of the classes that have images
TRAIN_PER_CLASS = 2
TEST_PER_CLASS = 1
# (width, height) of the images, cycled: CUB's photos are non-square, mostly 500 px on the long side.
IMAGE_SIZES = ((500, 333), (375, 500), (500, 375), (442, 500), (500, 281), (333, 500), (500, 400), (480, 500),
               (500, 347))
JPEG_QUALITY = 85
HOSTILE_MARKER = "UNPICKLED"
# The stand-in for the released finetuned UNet: the pretrained weights with every cross-attention key
# projection scaled by this factor, so runs with it give other maps than the pretrained UNet.
RELEASED_UNET_KEY_SCALE = 1.5

_REAL_CUB_NAMES = ("Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani",
                   "Crested_Auklet", "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet")
_ADJECTIVES = ("Red", "Blue", "Yellow", "Black", "White", "Gray", "Brown", "Green", "Spotted", "Striped",
               "Crested", "Ringed", "Banded", "Scarlet", "Golden", "Rusty", "Olive", "Pied", "Dusky", "Pale")
_FAMILIES = ("bellied_Warbler", "headed_Sparrow", "throated_Vireo", "winged_Tern", "breasted_Flycatcher",
             "capped_Wren", "tailed_Gull", "backed_Woodpecker", "crowned_Kingbird", "eyed_Grebe")


def cub_class_names(n=200):
    """``["001.Black_footed_Albatross", ...]``: CUB's first real names, then name-like combinations."""
    names = list(_REAL_CUB_NAMES)
    for family in _FAMILIES:
        for adjective in _ADJECTIVES:
            names.append(f"{adjective}_{family}")
    return [f"{i + 1:03d}.{name}" for i, name in enumerate(names[:n])]


def _write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")


def _tokenizer_source(tokenizer_dir):
    tokenizer_dir = Path(tokenizer_dir)
    missing = [f for f in TOKENIZER_FILES if not (tokenizer_dir / f).is_file()]
    if missing:
        raise GenprompError(f"{tokenizer_dir}: no CLIP tokenizer here (missing {', '.join(missing)}); build it "
                            "first with `genpromp assets` (needs the package index once)")
    return tokenizer_dir


def write_sd14_folder(out, tokenizer_dir, seed=0):
    """Write a full-size SD-1.4 diffusers folder with random weights; return (path, UNet state dict)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer_dir = _tokenizer_source(tokenizer_dir)
    out = Path(out)
    with atomic_dir(out) as tmp:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**{k: v for k, v in SD14_UNET_CONFIG.items() if not k.startswith("_")})
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        state = unet.state_dict()
        del unet
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**{k: v for k, v in SD14_VAE_CONFIG.items() if not k.startswith("_")})
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        del vae
        torch.manual_seed(seed + 2)
        text_config = CLIPTextConfig(**{k: v for k, v in SD14_TEXT_ENCODER_CONFIG.items()
                                        if k not in ("architectures", "model_type")})
        CLIPTextModel(text_config).save_pretrained(tmp / "text_encoder", safe_serialization=True)
        (tmp / "tokenizer").mkdir()
        for name in TOKENIZER_FILES:
            shutil.copyfile(tokenizer_dir / name, tmp / "tokenizer" / name)
        (tmp / "scheduler").mkdir()
        _write_json(tmp / "scheduler" / "scheduler_config.json", SD14_SCHEDULER_CONFIG)
        _write_json(tmp / "model_index.json", SD14_MODEL_INDEX)
    return out, state


def _bird_image(rng, width, height):
    """A textured background with one filled ellipse; returns (uint8 HxWx3, (x, y, w, h) box)."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.uniform(40, 200, size=3)
    img = base + 25 * np.sin(xx[..., None] / rng.uniform(7, 30) + rng.uniform(0, 6)) \
        + rng.normal(0, 6, size=(height, width, 3))
    bw, bh = rng.uniform(0.25, 0.6) * width, rng.uniform(0.25, 0.6) * height
    x0, y0 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
    cx, cy = x0 + bw / 2, y0 + bh / 2
    inside = ((xx - cx) / (bw / 2)) ** 2 + ((yy - cy) / (bh / 2)) ** 2 <= 1
    img[inside] = rng.uniform(0, 255, size=3)
    ys, xs = np.nonzero(inside)
    box = (float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min()))
    return np.clip(img, 0, 255).astype(np.uint8), box


def write_cub_fixture(root, images_dir, seed=0):
    """A CUB_200_2011 folder under ``root`` whose ``images`` is a symlink to ``images_dir``.

    200 class lines; images (2 train + 1 test) for the classes in KEPT_CLASSES only. Returns the
    list of ``(image_id, relative path, class id 0-based, is_train)`` rows written.
    """
    from PIL import Image

    root, images_dir = Path(root), Path(images_dir)
    names = cub_class_names()
    rng = np.random.default_rng(seed)
    rows, boxes = [], []
    images_dir.mkdir(parents=True, exist_ok=True)
    for c in KEPT_CLASSES:
        species = names[c].split(".", 1)[1]
        (images_dir / names[c]).mkdir(exist_ok=True)
        for k in range(TRAIN_PER_CLASS + TEST_PER_CLASS):
            image_id = len(rows) + 1
            width, height = IMAGE_SIZES[(image_id - 1) % len(IMAGE_SIZES)]
            pixels, box = _bird_image(rng, width, height)
            rel = f"{names[c]}/{species}_{1000 + 17 * image_id:04d}_{image_id}.jpg"
            with atomic_path(images_dir / rel) as tmp:
                Image.fromarray(pixels).save(tmp, format="JPEG", quality=JPEG_QUALITY)
            rows.append((image_id, rel, c, k < TRAIN_PER_CLASS))
            boxes.append(box)
    with atomic_dir(root) as tmp:
        (tmp / "classes.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
        (tmp / "images.txt").write_text("".join(f"{i} {rel}\n" for i, rel, _, _ in rows))
        (tmp / "image_class_labels.txt").write_text("".join(f"{i} {c + 1}\n" for i, _, c, _ in rows))
        (tmp / "train_test_split.txt").write_text("".join(f"{i} {int(t)}\n" for i, _, _, t in rows))
        (tmp / "bounding_boxes.txt").write_text("".join(f"{i} {x:.1f} {y:.1f} {w:.1f} {h:.1f}\n"
                                                        for (i, *_), (x, y, w, h) in zip(rows, boxes)))
        os.symlink(os.path.relpath(images_dir, root), tmp / "images", target_is_directory=True)
    return rows


def write_classifier_json(path, rows, n_classes=200, seed=0):
    """Scores for the test images in the original's JSON format. The top-1 class is the true class
    except for the last test image, whose top-1 is the next kept class (a wrong prediction, so the
    top-1 mode needs a second prompt there)."""
    rng = np.random.default_rng(seed + 7)
    test = [(rel, c) for _, rel, c, is_train in rows if not is_train]
    out = {}
    for k, (rel, c) in enumerate(test):
        scores = rng.uniform(-4.0, 2.0, size=n_classes)
        top = c if k < len(test) - 1 else KEPT_CLASSES[(KEPT_CLASSES.index(c) + 1) % len(KEPT_CLASSES)]
        scores[top] = 9.0
        out[rel] = {"pred_scores": [round(float(s), 6) for s in scores]}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(out))
    return Path(path)


def write_released_tokens(folder, classes=KEPT_CLASSES, dim=768, prefix="cub", seed=0, vocab_size=49408):
    """The original's ``tokens/{token_id}.bin`` files (``{"<cub-i>": tensor[dim]}``) for ``classes``."""
    import torch

    gen = torch.Generator().manual_seed(seed + 11)
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        for c in classes:
            torch.save({f"<{prefix}-{c}>": 0.02 * torch.randn(dim, generator=gen)}, tmp / f"{vocab_size + c}.bin")
    return folder


def write_released_unet(folder, state):
    """A finetuned ``unet/`` as the original released it: config.json + ``diffusion_pytorch_model.bin``
    (``torch.save`` of the state dict). Weights: ``state`` with the cross-attention key projections
    scaled by RELEASED_UNET_KEY_SCALE."""
    import torch

    folder = Path(folder)
    released = {k: (v * RELEASED_UNET_KEY_SCALE if ".attn2.to_k." in k else v) for k, v in state.items()}
    with atomic_dir(folder) as tmp:
        _write_json(tmp / "config.json", SD14_UNET_CONFIG)
        torch.save(released, tmp / "diffusion_pytorch_model.bin")
    return folder


class _RunsCodeWhenUnpickled:
    """Unpickling this object calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_hostile_checkpoints(folder):
    """``tokens/0.bin`` and ``unet/diffusion_pytorch_model.bin`` (+ config.json) whose unpickling would
    create ``folder/UNPICKLED``. Returns the marker path (which must never exist)."""
    import torch

    folder = Path(folder).absolute()
    marker = folder / HOSTILE_MARKER  # absolute: the code would run in whatever directory loads the file
    with atomic_dir(folder) as tmp:
        (tmp / "tokens").mkdir()
        torch.save({"<cub-0>": _RunsCodeWhenUnpickled(marker)}, tmp / "tokens" / "0.bin")
        (tmp / "unet").mkdir()
        _write_json(tmp / "unet" / "config.json", SD14_UNET_CONFIG)
        torch.save({"conv_in.weight": _RunsCodeWhenUnpickled(marker)}, tmp / "unet" / "diffusion_pytorch_model.bin")
    return marker


def build_rehearsal(out, tokenizer_dir, seed=0, images_dir=None, with_model=True):
    """Write the whole fixture under ``out`` (paths as in config/cub.yaml); return a dict of its paths.

    ``images_dir``: where the CUB images really live (default ``<out>/other_disk/CUB_images``; the
    dataset's ``images`` is a symlink to it). ``with_model=False`` skips the SD folder and the
    released UNet (seconds instead of minutes)."""
    out = Path(out)
    paths = {
        "pretrained": out / "ckpts/pretrains/stable-diffusion-v1-4",
        "cub": out / "data/CUB_200_2011",
        "images": Path(images_dir) if images_dir else out / "other_disk/CUB_images",
        "classifier": out / "ckpts/classifications/cub_efficientnetb7.json",
        "tokens": out / "ckpts/cub980/tokens",
        "unet": out / "ckpts/cub980/unet",
        "hostile": out / "ckpts/hostile",
    }
    rows = write_cub_fixture(paths["cub"], paths["images"], seed)
    write_classifier_json(paths["classifier"], rows, seed=seed)
    write_released_tokens(paths["tokens"], seed=seed)
    paths["hostile_marker"] = write_hostile_checkpoints(paths["hostile"])
    if with_model:
        log.info("writing the full-size SD-1.4 folder (random weights, ~5.2 GB)")
        _, state = write_sd14_folder(paths["pretrained"], tokenizer_dir, seed)
        log.info("writing the released-format unet/ (diffusion_pytorch_model.bin, ~3.4 GB)")
        write_released_unet(paths["unet"], state)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m genpromp.rehearsal",
        description="Write the rehearsal fixture: a full-size SD-1.4 folder with random weights, a "
                    "CUB_200_2011-layout dataset (3 classes with images, images/ symlinked), classifier JSON, "
                    "released-format tokens/ and unet/ (.bin), and two pickles that must be refused. Paths "
                    "under OUT are those config/cub.yaml names (data/…, ckpts/…). Needs ~12 GB of disk.")
    parser.add_argument("--out", default=".", help="folder to write data/ and ckpts/ into (default: %(default)s)")
    parser.add_argument("--tokenizer", default="resources/assets/clip_tokenizer",
                        help="CLIP tokenizer folder to copy (build with `genpromp assets`; default: %(default)s)")
    parser.add_argument("--images-dir", default=None,
                        help="where the images really go; data/CUB_200_2011/images links there "
                             "(default: OUT/other_disk/CUB_images)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: %(default)s)")
    parser.add_argument("--no-model", action="store_true", help="skip the SD-1.4 folder and the released UNet")
    args = parser.parse_args(argv)
    from .logs import setup_logging

    setup_logging()
    try:
        paths = build_rehearsal(args.out, args.tokenizer, args.seed, args.images_dir, not args.no_model)
    except GenprompError as exc:
        print(f"python -m genpromp.rehearsal: error: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
