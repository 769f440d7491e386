"""CAM extraction: the product's hot path (docs/method.md § CAM extraction).

Per batch of test images: VAE-encode once (posterior sample with a per-image generator) or read the
latents from the dataset's latent cache (genpromp.cams.latents: encoded once for every variant and run),
one noise tensor per image (derived from (seed, image id), so results do not depend on batch size, sharding
or order), then one UNet pass for all (timestep × prompt) pairs — the top-1 and ground-truth prompts,
deduplicated — with capturing processors on the cross-attention layers that feed the CAM groups and an early
exit after the last of them. Group maps are averaged over timesteps, heads and layers, resized bicubically to
``cam_size``, averaged over groups and divided by their maximum. Class text embeddings come from the run's
class embeddings (computed once per token source, `genpromp embeddings`). Output: one CAM cache shard (docs/FORMATS.md).

Precision (``test.inference_precision``, docs/method.md § Inference precision): the VAE and UNet run in
float16 or float32 (``auto`` = float16 on an accelerator as the original, float32 on the CPU); the text embeddings
are always float32 and cast to the UNet's dtype, as in the original.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..data.images import read_rgb
from ..data.scores import read_top5
from ..errors import ConfigError, GenprompError, InputError
from ..io import resolve_inside
from ..layout import Variant, roles_for_mode
from .cache import write_cam_shard
from .capture import capture_cross_attention, combine_group_maps, groups_from_config, run_unet_capture
from .embeddings import combine_embeddings, read_embeddings

__all__ = [
    "PRECISIONS", "CamSettings", "ImageRecord", "settings_from_config",
    "resolve_precision", "choose_device", "place_module",
    "image_generator", "load_test_image", "TestImages", "iter_batches", "encode_latents_and_noise", "image_noise",
    "plan_prompts", "compute_pair_cams", "extract_cams", "shard_records", "read_top5", "extract_shard",
    "register_cli",
]

log = logging.getLogger(__name__)

# Values of test.inference_precision.
PRECISIONS = ("auto", "fp32", "fp16")


@dataclass(frozen=True)
class CamSettings:
    """Everything that changes the maps, plus how to compute them.

    resolution: test image side (px); timesteps: tuple of int; cam_size: stored map side; groups: tuple of
    CamGroup; token_index: class-word position; mode: gtk | top1 | top5; ratio: w; seed: global seed;
    batch_size: images per batch; max_pairs: (image, class) prompts per UNet call (× timesteps);
    precision: VAE/UNet precision, one of PRECISIONS (see :func:`resolve_precision`); num_workers: loader
    processes (0 = thread); early_exit: stop the UNet after the last needed layer.
    """

    resolution: int
    timesteps: tuple
    cam_size: int
    groups: tuple
    token_index: int
    mode: str = "top1"
    ratio: float = 0.6
    seed: int = 0
    batch_size: int = 8
    max_pairs: int = 16
    precision: str = "auto"
    num_workers: int = 0
    early_exit: bool = True


@dataclass(frozen=True)
class ImageRecord:
    """One test image: id, absolute path, 0-based label, classifier top-5 ids (or None for gtk)."""

    image_id: str
    path: str
    label: int
    top5: tuple | None = None


def settings_from_config(config, mode, ratio, timesteps, token_index):
    """CamSettings from a validated config dict (``test`` and ``compute`` sections)."""
    test = config["test"]
    return CamSettings(
        resolution=int(test["resolution"]), timesteps=tuple(int(t) for t in timesteps),
        cam_size=int(test["cam_size"]), groups=groups_from_config(test["cam_groups"]), token_index=int(token_index),
        mode=mode, ratio=float(ratio), seed=int(config["seed"]), batch_size=int(test["batch_size"]),
        max_pairs=2 * int(test["batch_size"]), precision=str(test["inference_precision"]),
        num_workers=int(config["compute"]["num_workers"]),
    )


def resolve_precision(precision, device):
    """The VAE/UNet dtype for ``test.inference_precision`` on ``device``.

    auto: float16 on an accelerator (what the original ran on its GPUs), float32 on the CPU; fp32: float32;
    fp16: float16 on an accelerator. fp16 on the CPU raises ConfigError instead of silently running
    something else: the run's cache key says fp16, so its maps must be fp16 maps (and fp16 on the CPU is
    many times slower than fp32).
    """
    device = torch.device(device)
    if precision == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        if device.type == "cpu":
            raise ConfigError("test.inference_precision is fp16 but this job runs on the CPU (no accelerator "
                              "found); use auto (float16 on an accelerator, float32 on the CPU) or fp32, or run the job "
                              "on a GPU")
        return torch.float16
    raise ConfigError(f"test.inference_precision is {precision!r}; use one of {', '.join(PRECISIONS)}")


def choose_device(precision="auto"):
    """(device, dtype): the machine's accelerator when one is available, else the CPU, and the VAE/UNet
    dtype that ``precision`` (a value of test.inference_precision) gives there."""
    if torch.accelerator.is_available():
        device = torch.accelerator.current_accelerator()
    else:
        device = torch.device("cpu")
    return device, resolve_precision(precision, device)


def place_module(module, device, dtype):
    """Move a model to ``device`` and cast to ``dtype`` only when needed (diffusers warns on every cast)."""
    param = next(module.parameters())
    if param.device != device:
        module = module.to(device)
    if param.dtype != dtype:
        module = module.to(dtype)
    return module


def image_generator(seed, image_id):
    """A CPU torch.Generator seeded from sha256(seed, image_id): the image's private random stream."""
    digest = hashlib.sha256(f"{int(seed)}\x00{image_id}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def load_test_image(path, resolution):
    """Decode an image, resize bicubically to ``resolution`` square (no crop) → float32 [3, R, R] in [-1, 1]."""
    im = Image.fromarray(read_rgb(path)).resize((resolution, resolution), Image.BICUBIC)
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class TestImages(torch.utils.data.Dataset):
    """Dataset over ImageRecords → (position, pixels float32 [3, R, R])."""

    def __init__(self, records, resolution):
        self.records, self.resolution = list(records), int(resolution)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return i, load_test_image(self.records[i].path, self.resolution)


def _prefetch(iterable, depth=2):
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead (decode overlaps compute)."""
    q, done = queue.Queue(maxsize=depth), object()

    def work():
        try:
            for item in iterable:
                q.put(item)
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    threading.Thread(target=work, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def iter_batches(records, resolution, batch_size, num_workers=0):
    """Yield (positions int64 [B], pixels float32 [B, 3, R, R]) in record order, decoded ahead of use."""
    loader = torch.utils.data.DataLoader(TestImages(records, resolution), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, persistent_workers=False)
    return iter(loader) if num_workers > 0 else _prefetch(loader)


@torch.no_grad()
def encode_latents_and_noise(vae, pixels, image_ids, seed):
    """Latents = posterior sample × scaling factor [B, 4, h, w] in the VAE's dtype, and the add_noise
    noise, float32 [B, 4, h, w].

    As in the original, the sample ``mean + std · ε`` and its scaling are computed in the VAE's dtype
    (float16 in fp16 inference) while the noise stays float32. Each image's posterior ε and noise are
    drawn (in that order, float32) from :func:`image_generator`, on CPU, so they do not depend on the
    device, the batch or its order.
    """
    dist = vae.encode(pixels).latent_dist
    eps, noise = _image_draws(seed, image_ids, tuple(dist.mean.shape[1:]))
    eps = eps.to(dist.mean.device, dist.mean.dtype)
    latents = (dist.mean + dist.std * eps) * vae.config.scaling_factor
    return latents, noise.to(latents.device)


def _image_draws(seed, image_ids, shape):
    """Posterior ε and add_noise noise of each image, float32 [B, *shape] each, in the order drawn."""
    eps, noise = [], []
    for iid in image_ids:
        g = image_generator(seed, iid)
        eps.append(torch.randn(shape, generator=g))
        noise.append(torch.randn(shape, generator=g))
    return torch.stack(eps), torch.stack(noise)


def image_noise(seed, image_ids, shape):
    """The add_noise noise of :func:`encode_latents_and_noise` without the VAE: float32 [B, *shape] on the CPU.

    Regenerated from each image's generator (the posterior ε is drawn first and dropped), so CAMs from cached
    latents use the very noise of the direct path.
    """
    if not image_ids:
        return torch.zeros((0, *shape))
    return _image_draws(seed, image_ids, tuple(shape))[1]


def plan_prompts(mode, labels, top5=None):
    """Slots and deduplicated (image, class) prompts of a batch.

    labels: int [B]; top5: int [B, 5] (not needed for gtk). Returns (slot_classes int64 [B, K],
    pairs int64 [P, 2] of (image position, class id), slot_pair int64 [B, K] = pair index of each slot).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if mode == "gtk":
        slots = labels[:, None]
    else:
        if top5 is None:
            raise GenprompError(f"mode {mode} needs classifier top-5 ids")
        top5 = np.asarray(top5, dtype=np.int64)
        slots = np.concatenate([top5[:, :1] if mode == "top1" else top5[:, :5], labels[:, None]], axis=1)
    pair_of, pairs = {}, []
    slot_pair = np.empty_like(slots)
    for b in range(slots.shape[0]):
        for k in range(slots.shape[1]):
            key = (b, int(slots[b, k]))
            if key not in pair_of:
                pair_of[key] = len(pairs)
                pairs.append(key)
            slot_pair[b, k] = pair_of[key]
    return slots, np.asarray(pairs, dtype=np.int64).reshape(-1, 2), slot_pair


@torch.no_grad()
def compute_pair_cams(unet, scheduler, latents, noise, cond, pair_image, settings, dtype=torch.float32):
    """CAMs of P prompts: float32 [P, S, S] (S = settings.cam_size), each max-normalised, clamped ≥ 0.

    latents: [B, 4, h, w] in the VAE's dtype; noise: float32 [B, 4, h, w]; cond: float32 [P, 77, D] (f_c
    per prompt); pair_image: int64 [P] (image position of each prompt); dtype: the UNet's dtype. All
    timesteps of a chunk of ≤ max_pairs prompts go through one UNet call of batch T × chunk. The noisy
    latents are formed as the original does (``add_noise`` with the scheduler's coefficients in the
    latents' dtype, float32 noise) and then cast to ``dtype``.
    """
    device = latents.device
    latent_hw = tuple(latents.shape[-2:])
    ts = torch.as_tensor(settings.timesteps, dtype=torch.long, device=device)
    n_t, out = len(ts), []
    with capture_cross_attention(unet, settings.token_index, settings.groups, latent_hw,
                                 early_exit=settings.early_exit) as store:
        for start in range(0, len(pair_image), settings.max_pairs):
            idx = torch.as_tensor(pair_image[start:start + settings.max_pairs], dtype=torch.long, device=device)
            p = len(idx)
            t_all = ts.repeat_interleave(p)
            x = scheduler.add_noise(latents[idx].repeat(n_t, 1, 1, 1), noise[idx].repeat(n_t, 1, 1, 1), t_all)
            c = cond[start:start + p].to(device, dtype).repeat(n_t, 1, 1)
            store.reset()
            run_unet_capture(unet, x.to(dtype), t_all, c)
            maps = {k: v.view(n_t, p, *v.shape[1:]).mean(dim=0) for k, v in store.group_maps().items()}
            out.append(combine_group_maps(maps, settings.cam_size).clamp_min(0))
    return torch.cat(out)


def _encoded_batches(vae, records, settings, device, dtype):
    """(records, latents, noise) per batch, encoding the images with ``vae``."""
    vae = place_module(vae, device, dtype)
    for positions, pixels in iter_batches(records, settings.resolution, settings.batch_size, settings.num_workers):
        batch = [records[int(i)] for i in positions]
        latents, noise = encode_latents_and_noise(vae, pixels.to(device, dtype), [r.image_id for r in batch],
                                                  settings.seed)
        yield batch, latents, noise


def _cached_batches(latents, records, settings, device, dtype):
    """(records, latents, noise) per batch from cached latents aligned with ``records`` (same batches as
    :func:`_encoded_batches`; the noise regenerated by :func:`image_noise`)."""
    if latents.shape[0] != len(records) or latents.dtype != dtype:
        raise GenprompError(f"cached latents {tuple(latents.shape)} {latents.dtype} do not fit {len(records)} "
                            f"images in {dtype}; read them with genpromp.cams.latents.read_latent_shard")
    for start in range(0, len(records), settings.batch_size):
        batch = records[start:start + settings.batch_size]
        lat = latents[start:start + settings.batch_size].to(device)
        yield batch, lat, image_noise(settings.seed, [r.image_id for r in batch], lat.shape[1:]).to(device)


def extract_cams(comps, emb, records, settings, device=None, dtype=None, progress=None, latents=None):
    """CAMs of ``records`` (list of ImageRecord) → (image_ids [N], class_ids int32 [N, K], cams float32 [N,K,S,S]).

    comps: SDComponents (vae, unet, scheduler used; the vae only without ``latents``); emb: ClassEmbeddings
    of the run. device / dtype default to :func:`choose_device` (``settings.precision``); pass both to run
    e.g. float16 on the CPU. latents: the records' cached latents, ``dtype`` [N, 4, h, w] in record order
    (a latent shard's, genpromp.cams.latents), or None to encode the images.
    """
    if device is None:
        device, dtype = choose_device(settings.precision)
    elif dtype is None:
        dtype = resolve_precision(settings.precision, device)
    unet = place_module(comps.unet, device, dtype)
    records = list(records)
    batches = (_encoded_batches(comps.vae, records, settings, device, dtype) if latents is None
               else _cached_batches(latents, records, settings, device, dtype))
    all_slots, all_cams = [], []
    for batch, latents_b, noise in batches:
        slots, pairs, slot_pair = plan_prompts(settings.mode, [r.label for r in batch],
                                               None if settings.mode == "gtk" else [r.top5 for r in batch])
        cond = combine_embeddings(emb, settings.ratio, emb.rows(pairs[:, 1]))
        cams = compute_pair_cams(unet, comps.scheduler, latents_b, noise, cond, pairs[:, 0], settings, dtype)
        all_slots.append(slots)
        all_cams.append(cams.cpu()[torch.from_numpy(slot_pair)].numpy())
        if progress:
            progress(len(batch))
    k = len(roles_for_mode(settings.mode))
    s = settings.cam_size
    ids = np.asarray([r.image_id for r in records], dtype=str)
    if not records:
        return ids, np.zeros((0, k), np.int32), np.zeros((0, k, s, s), np.float32)
    return ids, np.concatenate(all_slots).astype(np.int32), np.concatenate(all_cams)


def shard_records(index_path, dataset_root, shard, shard_size, top5=None):
    """ImageRecords of shard ``shard``: rows [shard·size, (shard+1)·size) of the test index, in order."""
    df = pd.read_parquet(index_path, columns=["image_id", "path", "label"])
    lo = int(shard) * int(shard_size)
    if lo >= len(df) and len(df):
        raise GenprompError(f"{index_path}: shard {shard} starts at row {lo} but the index has {len(df)} rows")
    part = df.iloc[lo:lo + int(shard_size)]
    records = []
    for n, (iid, path, label) in enumerate(zip(part["image_id"], part["path"], part["label"])):
        tp = None
        if top5 is not None:
            if iid not in top5:
                raise InputError(index_path, f"image {iid!r} has no classifier scores; import scores for every "
                                             "test image", lo + n)
            tp = top5[iid]
        records.append(ImageRecord(str(iid), str(resolve_inside(dataset_root, path, index_path, lo + n)),
                                   int(label), tp))
    return records


def extract_shard(config, variant, shard, index_path, image_root, embeddings_path, out_path, unet_path=None,
                  scores_path=None, latents_path=None):
    """Extract CAM cache shard ``shard`` of ``variant`` (a Variant or its name) and write it atomically.

    config: validated config dict (``pretrained``, ``seed``, ``test``, ``compute``); index_path: the test (or
    held-out) index; image_root: the folder its image paths are relative to; unet_path: UNet folder (None =
    the pretrained one); scores_path: classifier scores parquet (needed for top1/top5); latents_path: the
    split's latent shard ``shard`` (rule encode_latents; None = encode the images here). Returns the path.
    """
    from ..models.loading import load_components
    from ..prompts import token_index

    variant = Variant.parse(variant)
    if variant.needs_scores and scores_path is None:
        raise GenprompError(f"variant {variant}: mode {variant.mode} needs classifier scores "
                            "(config key datasets.<dataset>.classifier)")
    device, dtype = choose_device(config["test"]["inference_precision"])  # refuses fp16 on a CPU before loading
    comps = load_components(config["pretrained"], unet_path=unet_path)
    settings = settings_from_config(config, variant.mode, variant.ratio, variant.timesteps,
                                    token_index(comps.tokenizer))
    top5 = read_top5(scores_path) if variant.needs_scores else None
    records = shard_records(index_path, image_root, shard, config["test"]["shard_size"], top5)
    emb = read_embeddings(embeddings_path)
    latents = None
    if latents_path is not None:
        from .latents import read_latent_shard

        latents = read_latent_shard(latents_path, [r.image_id for r in records], dtype, settings.seed,
                                    settings.resolution).latents
    log.info("shard %s: test.inference_precision %s -> %s in %s on %s", shard, settings.precision,
             "UNet (latents cached)" if latents_path else "VAE and UNet", str(dtype).removeprefix("torch."), device)
    start = time.perf_counter()
    ids, class_ids, cams = extract_cams(comps, emb, records, settings, device, dtype, latents=latents)
    log.info("shard %s: %d images in %.1f s", shard, len(ids), time.perf_counter() - start)
    return write_cam_shard(out_path, ids, class_ids, cams)


def _run_cli(args):
    from ..config import load_config
    from ..data.indexing import image_root_for

    config = load_config(args.config)
    if args.dataset not in config["datasets"]:
        raise GenprompError(f"dataset {args.dataset!r} is not in {args.config} (have {sorted(config['datasets'])})")
    extract_shard(config, args.variant, args.shard, args.index, image_root_for(config["datasets"][args.dataset]),
                  args.embeddings, args.out, unet_path=args.unet, scores_path=args.scores, latents_path=args.latents)


def register_cli(sub):
    p = sub.add_parser("extract-cams", help="extract one shard of cross-attention CAMs into the CAM cache",
                       description="Compute GenPromp CAMs for test images [shard*shard_size, (shard+1)*shard_size) "
                                   "of a dataset and write shard-<k>.npz (docs/FORMATS.md § CAM cache).")
    p.add_argument("--config", default="config/config.yaml", help="workflow config YAML (validated)")
    p.add_argument("--dataset", required=True, help="dataset name (a key of `datasets` in the config)")
    p.add_argument("--variant", required=True, help="variant name <mode>_w<ratio>_t<t1>-<t2>, e.g. top1_w0.60_t0-99")
    p.add_argument("--shard", type=int, required=True, help="shard number k (0-based block of test.shard_size images)")
    p.add_argument("--index", required=True, help="test index parquet (results/<dataset>/index/test.parquet)")
    p.add_argument("--embeddings", required=True, help="class embeddings (results/<dataset>/embeddings/<tokens>.safetensors, `genpromp embeddings`)")
    p.add_argument("--unet", default=None, help="UNet folder in diffusers layout (default: <pretrained>/unet)")
    p.add_argument("--scores", default=None, help="classifier scores parquet (required for top1/top5)")
    p.add_argument("--latents", default=None,
                   help="latent shard k of the split (results/<dataset>/latents/test/shard-<k:05d>.safetensors, "
                        "rule encode_latents); default: encode the images with the VAE")
    p.add_argument("--out", required=True, help="output shard path .../shard-<k:05d>.npz")
    p.set_defaults(func=_run_cli)
