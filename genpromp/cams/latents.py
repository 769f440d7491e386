"""The VAE latent cache: each test (or held-out) image encoded once, read by every CAM variant and run.

The VAE is frozen in both training stages, so an image's latents (posterior sample × scaling factor) depend
only on the pretrained VAE, the image, ``test.resolution``, the seed, the VAE/UNet precision and the encoding
batch (``test.batch_size``; a convolution's arithmetic can depend on the batch it runs in). Mode, combine
ratio, timesteps and run do not enter. One latent shard holds the images of the CAM shard with the same
number, in index order, so a CAM job reads exactly one latent shard.

What is stored is what the UNet consumes: the latents in the UNet's dtype (``test.inference_precision``
resolved on the encoding machine: float16 on an accelerator under ``auto``, float32 on the CPU), so CAMs
from the cache equal CAMs computed from the images bit for bit on the same kind of device. The
``add_noise`` noise is not stored: it is the second draw of the image's private generator
(:func:`genpromp.cams.extract.image_generator`), regenerated on the CPU in microseconds, and twice the size
of float16 latents in float32. Format: docs/FORMATS.md § Latent cache.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GenprompError, InputError
from ..io import atomic_path
from .extract import choose_device, encode_latents_and_noise, iter_batches, place_module, shard_records

__all__ = ["LATENT_FORMAT", "LatentShard", "load_vae", "encode_records", "write_latent_shard",
           "read_latent_shard", "encode_shard"]

log = logging.getLogger(__name__)

LATENT_FORMAT = "genpromp-latents-1"
_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class LatentShard:
    """A latent shard read back: image ids (index order), latents [N, 4, h, w] in the stored dtype (CPU),
    the seed of the posterior samples and the image side they were encoded at."""

    image_ids: list
    latents: torch.Tensor
    seed: int
    resolution: int


def load_vae(pretrained):
    """The pretrained folder's VAE (``<pretrained>/vae``), in eval mode, offline."""
    from diffusers import AutoencoderKL

    folder = Path(pretrained) / "vae"
    if not (folder / "config.json").is_file():
        raise GenprompError(f"{folder}: no config.json; point `pretrained` at a diffusers Stable Diffusion folder")
    return AutoencoderKL.from_pretrained(folder, local_files_only=True).eval()


@torch.no_grad()
def encode_records(vae, records, resolution, batch_size, seed, device, dtype, num_workers=0):
    """Latents of ``records`` (ImageRecords) in record order: ``dtype`` [N, 4, h, w] on the CPU.

    Runs the CAM extraction's own encoding (:func:`genpromp.cams.extract.encode_latents_and_noise`) on the
    same batches (``batch_size`` consecutive records), so the latents are the ones extraction would compute.
    """
    records = list(records)
    vae = place_module(vae, device, dtype)
    out = []
    for positions, pixels in iter_batches(records, resolution, batch_size, num_workers):
        ids = [records[int(i)].image_id for i in positions]
        latents, _ = encode_latents_and_noise(vae, pixels.to(device, dtype), ids, seed)
        out.append(latents.cpu())
    if out:
        return torch.cat(out)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    side = int(resolution) // factor
    return torch.zeros((0, int(vae.config.latent_channels), side, side), dtype=dtype)


def write_latent_shard(path, image_ids, latents, seed, resolution):
    """Write one latent shard atomically (safetensors: tensor ``latents``, ids and settings in the metadata)."""
    from safetensors.torch import save_file

    ids = [str(i) for i in image_ids]
    if latents.ndim != 4 or latents.shape[0] != len(ids):
        raise GenprompError(f"{path}: {len(ids)} image ids for latents of shape {tuple(latents.shape)}")
    dtype = str(latents.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise GenprompError(f"{path}: latents are {dtype}; store float16 or float32 (the UNet's dtype)")
    meta = {"format": LATENT_FORMAT, "image_ids": json.dumps(ids), "seed": str(int(seed)),
            "resolution": str(int(resolution)), "dtype": dtype}
    with atomic_path(path) as tmp:
        save_file({"latents": latents.detach().cpu().contiguous()}, str(tmp), metadata=meta)
    return Path(path)


def _open(path):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != LATENT_FORMAT or "latents" not in f.keys():
                raise InputError(path, f"not a latent shard (format {meta.get('format')!r}, expected "
                                       f"{LATENT_FORMAT!r}); rerun rule encode_latents to rewrite it")
            return meta, f.get_tensor("latents")
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # missing file, bad header, truncated data
        raise InputError(path, f"cannot read the latent shard ({exc}); rerun rule encode_latents") from exc


def _check_ids(path, stored, expected):
    if len(stored) != len(expected):
        raise InputError(path, f"holds {len(stored)} images but the CAM shard needs {len(expected)} (the index "
                               "or test.shard_size changed since it was written); rerun rule encode_latents")
    for n, (have, want) in enumerate(zip(stored, expected)):
        if have != want:
            raise InputError(path, f"image {n} is {have!r} but the index has {want!r} there; the latent shard "
                                   "belongs to another index or shard: rerun rule encode_latents")


def read_latent_shard(path, image_ids=None, dtype=None, seed=None, resolution=None):
    """Read and check one latent shard → :class:`LatentShard`.

    Each given expectation is checked and refused with an InputError naming the file: ``image_ids`` (the
    images of the CAM shard, in order), ``dtype`` (the UNet's dtype on this machine), ``seed`` and
    ``resolution`` (the run's ``seed`` and ``test.resolution``).
    """
    meta, latents = _open(path)
    try:
        stored_ids = json.loads(meta["image_ids"])
        stored_seed, stored_res = int(meta["seed"]), int(meta["resolution"])
    except (KeyError, ValueError) as exc:
        raise InputError(path, f"latent shard metadata is incomplete ({exc}); rerun rule encode_latents") from exc
    if latents.ndim != 4 or latents.shape[0] != len(stored_ids):
        raise InputError(path, f"{len(stored_ids)} image ids for latents of shape {tuple(latents.shape)}; "
                               "rerun rule encode_latents")
    if image_ids is not None:
        _check_ids(path, stored_ids, [str(i) for i in image_ids])
    if dtype is not None and latents.dtype != dtype:
        raise InputError(path, f"latents are {str(latents.dtype).removeprefix('torch.')} but this job runs the UNet "
                               f"in {str(dtype).removeprefix('torch.')} (test.inference_precision resolved on "
                               "another kind of device); rerun encode_latents on this kind of machine or set "
                               "test.inference_precision to fp32 or fp16")
    if seed is not None and stored_seed != int(seed):
        raise InputError(path, f"encoded with seed {stored_seed}, the config has seed {seed}; rerun encode_latents")
    if resolution is not None and stored_res != int(resolution):
        raise InputError(path, f"encoded at {stored_res} px, the config has test.resolution {resolution}; "
                               "rerun encode_latents")
    return LatentShard(stored_ids, latents, stored_seed, stored_res)


def encode_shard(config, shard, index_path, image_root, out_path):
    """Encode the images of CAM shard ``shard`` of ``index_path`` and write latent shard ``out_path``.

    config: ``pretrained``, ``seed`` and ``test`` with ``resolution``, ``batch_size``, ``shard_size`` and
    ``inference_precision`` (the workflow passes exactly these: ``genpromp.plan.latent_view``). Returns the path.
    """
    test = config["test"]
    device, dtype = choose_device(test["inference_precision"])  # refuses fp16 on a CPU before loading
    records = shard_records(index_path, image_root, shard, test["shard_size"])
    vae = load_vae(config["pretrained"])
    log.info("latent shard %s: %d images, VAE in %s on %s", shard, len(records), str(dtype).removeprefix("torch."),
             device)
    start = time.perf_counter()
    latents = encode_records(vae, records, test["resolution"], test["batch_size"], config["seed"], device, dtype)
    log.info("latent shard %s: encoded in %.1f s", shard, time.perf_counter() - start)
    return write_latent_shard(out_path, [r.image_id for r in records], latents, config["seed"], test["resolution"])
