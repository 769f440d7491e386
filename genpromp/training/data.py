"""Training data for both stages: index tables, the original's augmentation, step schedules, RNG.

Augmentation (docs/method.md § Stage 1, the reference's ``init_train_pipelines``): resize to (R, R)
(bilinear, torchvision ``Resize``'s PIL default), random crop R, horizontal flip (p = 0.5),
ColorJitter(brightness, contrast, saturation, hue = 0.1) with the four operations in a random
order, quantisation back to uint8 (the reference works on PIL images), then ``x / 127.5 - 1``.
torchvision is not available, so the jitter is implemented here in torch with torchvision's
formulas (brightness: ``x·b``; contrast: blend with the mean of the grayscale image;
saturation: blend with the grayscale image; hue: rotate H in HSV); clamped to [0, 1].
The first operation (the resize) is deterministic, so the shard trainer caches its result.

Randomness is *derived*, never carried: every random draw comes from a ``torch.Generator``
seeded from ``(seed, stream, class id, counters…)`` (:func:`derive_generator`). A class's data
order, augmentation, templates, latent sample, noise and timesteps therefore depend only on the
seed, the class and the micro-step number — not on the shard layout, on which classes share a
batch, or on whether the job was killed and resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..errors import InputError
from ..io import resolve_inside

__all__ = [
    "ClassInfo", "TrainingTable", "StepSchedule", "MicroStep", "STREAM_PERM", "STREAM_SAMPLE",
    "STREAM_STEP", "derive_seed", "derive_generator", "load_training_table", "trained_class_ids", "read_image",
    "resize_image", "color_jitter", "augment_image", "latent_shape", "draw_step_noise",
    "make_pixel_batch", "make_sample",
]

# Independent random streams (second element of every derived seed).
STREAM_PERM = 1      # per-epoch shuffling of a class's images
STREAM_SAMPLE = 2    # per-sample augmentation and template
STREAM_STEP = 3      # per-micro-step latent sample, noise and timesteps
JITTER = 0.1         # the reference's ColorJitter(0.1, 0.1, 0.1, 0.1)

try:  # genpromp.data.images' strict decoder (InputError on corrupt files)
    from ..data.images import read_rgb as _read_rgb
except ImportError:  # pragma: no cover - PIL fallback when genpromp.data.images cannot be imported
    _read_rgb = None


@dataclass(frozen=True)
class ClassInfo:
    """One class of the class table: 0-based id, concept token ``<cub-3>``, meta word ``bird``."""

    class_id: int
    concept_token: str
    meta_token: str


@dataclass
class TrainingTable:
    """The classes to train (ordered by id) and, per class id, its training image paths (sorted by image id).

    ``all_classes``: every class of the class table, trained or not (concept tokens are registered
    for all of them, so a class's token id does not depend on ``keep_class``); defaults to ``classes``.
    """

    classes: list
    images: dict = field(default_factory=dict)
    all_classes: list = None

    def __post_init__(self):
        if self.all_classes is None:
            self.all_classes = list(self.classes)

    @property
    def class_ids(self):
        return [c.class_id for c in self.classes]

    def subset(self, class_ids):
        """The table restricted to ``class_ids`` (kept in class-table order; ``all_classes`` unchanged)."""
        keep = set(int(c) for c in class_ids)
        return TrainingTable([c for c in self.classes if c.class_id in keep],
                             {c: p for c, p in self.images.items() if c in keep}, self.all_classes)


def derive_seed(seed, *keys):
    """A 63-bit seed from integers ``(seed, *keys)`` via numpy's SeedSequence (stable across runs)."""
    state = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def derive_generator(seed, *keys):
    """A CPU ``torch.Generator`` seeded by :func:`derive_seed` (CPU so results match across devices)."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def _require_columns(df, columns, path):
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; regenerate the index (docs/FORMATS.md)")


def trained_class_ids(classes_parquet):
    """Ids (sorted) of the classes stages 1 and 2 train: the class table's kept classes (``keep_class``;
    a table without the ``kept`` column trains every class)."""
    from ..data.indexing import read_kept_class_ids

    return read_kept_class_ids(classes_parquet)


def load_training_table(train_parquet, classes_parquet, image_root, class_ids=None):
    """Read the index tables; return a :class:`TrainingTable` of the classes to train.

    Trained are the class table's kept classes (:func:`trained_class_ids`), or ``class_ids`` when
    given. ``image_root`` is the dataset root the ``path`` column is relative to. Labels missing
    from the class table, or a trained class without training images, raise InputError.
    """
    classes_df = pd.read_parquet(classes_parquet)
    _require_columns(classes_df, ["class_id", "meta_token", "concept_token"], classes_parquet)
    train_df = pd.read_parquet(train_parquet)
    _require_columns(train_df, ["image_id", "path", "label"], train_parquet)
    all_classes = [ClassInfo(int(r.class_id), str(r.concept_token), str(r.meta_token))
                   for r in classes_df.sort_values("class_id").itertuples()]
    known = {c.class_id for c in all_classes}
    unknown = sorted(set(int(x) for x in train_df["label"]) - known)
    if unknown:
        raise InputError(train_parquet, f"labels {unknown[:10]} are not in {classes_parquet}; "
                                        "rebuild both tables from the same dataset")
    wanted = set(int(x) for x in class_ids) if class_ids is not None else set(trained_class_ids(classes_parquet))
    classes = [c for c in all_classes if c.class_id in wanted]
    images = {}
    train_df = train_df.sort_values("image_id", kind="stable")
    for info in classes:
        rows = train_df[train_df["label"] == info.class_id]
        if rows.empty:
            raise InputError(train_parquet, f"class {info.class_id} ({info.concept_token}) has no training "
                                            "images; drop it with keep_class or add images")
        images[info.class_id] = [resolve_inside(image_root, p, source=train_parquet) for p in rows["path"]]
    return TrainingTable(classes, images, all_classes)


def read_image(path):
    """RGB uint8 [H, W, 3] (genpromp.data.images.read_rgb, the strict reader, when importable)."""
    if _read_rgb is not None:
        return _read_rgb(path)
    try:  # pragma: no cover
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as exc:  # pragma: no cover
        raise InputError(path, f"cannot decode image ({exc})") from None


def resize_image(rgb, size):
    """Resize uint8 [H, W, 3] to [size, size, 3] (PIL bilinear, as torchvision's Resize on PIL images)."""
    return np.asarray(Image.fromarray(rgb).resize((size, size), resample=Image.BILINEAR))


def _grayscale(x):
    """ITU-R 601 luma of float [3, H, W] -> [1, H, W] (torchvision's rgb_to_grayscale)."""
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)


def _adjust_hue(x, shift):
    """Rotate the hue of float [3, H, W] in [0, 1] by ``shift`` (fraction of a turn)."""
    r, g, b = x[0], x[1], x[2]
    maxc, _ = x.max(0)
    minc, _ = x.min(0)
    v = maxc
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    h = (h + shift) % 1.0
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    rgb = [torch.stack(c) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    out = torch.zeros_like(x)
    for k in range(6):
        out = torch.where((i == k).unsqueeze(0), rgb[k], out)
    return out


def color_jitter(x, generator, strength=JITTER):
    """torchvision ColorJitter(strength ×4) on float [3, H, W] in [0, 1]; random order and factors.

    Draw order from ``generator``: permutation of the 4 ops, then brightness, contrast, saturation
    factors ~ U[1-s, 1+s] and the hue shift ~ U[-s, s].
    """
    order = torch.randperm(4, generator=generator).tolist()
    u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    factors = [1 - strength + 2 * strength * u[0], 1 - strength + 2 * strength * u[1],
               1 - strength + 2 * strength * u[2], -strength + 2 * strength * u[3]]
    for op in order:
        if op == 0:
            x = (x * factors[0]).clamp(0, 1)
        elif op == 1:
            mean = _grayscale(x).mean()
            x = (x * factors[1] + mean * (1 - factors[1])).clamp(0, 1)
        elif op == 2:
            x = (x * factors[2] + _grayscale(x) * (1 - factors[2])).clamp(0, 1)
        else:
            x = _adjust_hue(x, factors[3]).clamp(0, 1)
    return x


def augment_image(resized, crop, generator):
    """Random crop ``crop``, flip, ColorJitter, uint8 quantisation, scale to [-1, 1].

    ``resized``: uint8 [S, S, 3] (output of :func:`resize_image`). Returns float32 [3, crop, crop].
    """
    h, w = resized.shape[:2]
    if crop > h or crop > w:
        raise ValueError(f"crop {crop} larger than image {h}x{w}")
    top = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
    x = torch.from_numpy(np.array(resized[top:top + crop, left:left + crop])).permute(2, 0, 1)
    x = x.float() / 255.0
    if float(torch.rand(1, generator=generator)) < 0.5:
        x = x.flip(-1)
    x = color_jitter(x, generator)
    x = torch.round(x * 255.0)
    return x / 127.5 - 1.0


def latent_shape(vae, resolution):
    """[channels, h, w] of the VAE latents of a ``resolution``² image (downsampling from the config)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if resolution % factor:
        raise ValueError(f"resolution {resolution} is not a multiple of the VAE factor {factor}")
    return (vae.config.latent_channels, resolution // factor, resolution // factor)


def draw_step_noise(generator, batch, shape, num_train_timesteps):
    """(eps for the latent sample, diffusion noise, timesteps) for one micro-batch, in that order.

    eps, noise: float32 [batch, *shape]; timesteps: int64 [batch], uniform in [0, T).
    """
    eps = torch.randn((batch, *shape), generator=generator)
    noise = torch.randn((batch, *shape), generator=generator)
    timesteps = torch.randint(0, num_train_timesteps, (batch,), generator=generator)
    return eps, noise, timesteps


@dataclass(frozen=True)
class MicroStep:
    """One forward/backward of a schedule: epoch, batch number in the epoch, global micro index,
    the item positions (into the stream's item list) and whether the optimizer steps after it."""

    epoch: int
    batch: int
    index: int
    items: tuple
    sync: bool


@dataclass(frozen=True)
class StepSchedule:
    """The reference's loop over epochs × batches with gradient accumulation, made explicit.

    Batches are ``batch_size`` consecutive items of the epoch's permutation (last one smaller,
    ``drop_last=False``). The optimizer steps after every ``grad_accum``-th batch and after the
    last batch of an epoch (accelerate's end-of-dataloader sync). With ``epochs`` (stage 1) the
    loop is the reference's: after each micro-step, once ``step_budget`` optimizer steps are done
    (``max_steps``, else ``epochs × ceil(n_batches / grad_accum)``) it leaves the epoch — only the
    epoch: every remaining epoch still runs its first micro-step (and steps the optimizer if that
    one syncs). With ``epochs=None`` (stage 2) it runs exactly ``max_steps`` optimizer steps.
    ``total_steps`` counts the optimizer steps the loop makes.

    ``processes`` = P > 1 replays, in one process, the reference run data-parallel on P GPUs
    (accelerate's sharded loader with ``even_batches``): each micro-step is P consecutive batches,
    i.e. ``P × batch_size`` items; an epoch has ceil(n_batches / P) micro-steps, its last round of
    batches completed with the epoch's first items (order ``perm + perm[:pad]``, so every micro-step
    is full); and without ``max_steps`` the step budget is ``epochs × ceil(n_batches / grad_accum) // P``
    (the reference computes it from the unsharded loader and divides by P).
    """

    n_items: int
    batch_size: int
    grad_accum: int
    epochs: int | None
    max_steps: int | None
    seed: int
    keys: tuple  # stream keys, e.g. (class_id,) for stage 1
    processes: int = 1

    @property
    def n_batches(self):
        """Batches of one epoch in the unsharded loader (the reference's ``len(dataloader)``)."""
        return math.ceil(self.n_items / self.batch_size)

    @property
    def micro_per_epoch(self):
        """Micro-steps (forward/backward passes) per epoch: ceil(n_batches / processes)."""
        return math.ceil(self.n_batches / self.processes)

    @property
    def items_per_micro(self):
        return self.batch_size * self.processes

    @property
    def steps_per_epoch(self):
        return math.ceil(self.micro_per_epoch / self.grad_accum)

    @property
    def step_budget(self):
        """Optimizer steps after which the loop leaves an epoch (``max_steps`` or the epochs' steps // P)."""
        if self.max_steps or self.epochs is None:
            return int(self.max_steps)
        return self.epochs * math.ceil(self.n_batches / self.grad_accum) // self.processes

    @property
    def total_steps(self):
        """Optimizer steps the loop makes."""
        if self.epochs is None:
            return int(self.max_steps)
        return sum(int(sync) for _, _, sync in self._walk())

    def permutation(self, epoch):
        """Item order of ``epoch`` (derived from seed, keys, epoch)."""
        return torch.randperm(self.n_items, generator=derive_generator(self.seed, STREAM_PERM, *self.keys, epoch))

    def epoch_order(self, epoch):
        """Item positions of ``epoch`` in micro-step order: the permutation, and with ``processes`` > 1
        padded cyclically from its start to ``micro_per_epoch × items_per_micro`` items."""
        perm = self.permutation(epoch).tolist()
        if self.processes == 1:
            return perm
        pad = self.micro_per_epoch * self.items_per_micro - len(perm)
        return perm + [perm[j % len(perm)] for j in range(pad)]

    def _walk(self):
        """(epoch, micro-step in epoch, sync) of every micro-step of the loop."""
        budget, m = self.step_budget, self.micro_per_epoch
        steps = 0
        epoch = 0
        while self.epochs is None and steps < budget or self.epochs is not None and epoch < self.epochs:
            for b in range(m):
                sync = (b + 1) % self.grad_accum == 0 or b == m - 1
                yield epoch, b, sync
                steps += int(sync)
                if steps >= budget:
                    if self.epochs is None:
                        return
                    break
            epoch += 1

    def micro_steps(self, start=0):
        """Yield :class:`MicroStep` from global micro index ``start`` to the end of training."""
        order, order_epoch, size = None, None, self.items_per_micro
        for index, (epoch, b, sync) in enumerate(self._walk()):
            if index < start:
                continue
            if order_epoch != epoch:
                order, order_epoch = self.epoch_order(epoch), epoch
            yield MicroStep(epoch, b, index, tuple(order[b * size:(b + 1) * size]), sync)

    @property
    def n_micro_steps(self):
        return sum(1 for _ in self._walk())

    def micro_steps_light(self):
        """Like :meth:`micro_steps` without permutations (for counting): (epoch, batch, sync)."""
        return self._walk()


def make_sample(image, seed, keys, micro, slot, crop, n_templates):
    """Template id and augmented pixels float32 [3, crop, crop] of sample ``slot`` of micro-step ``micro``.

    Draws from its own generator ``(seed, STREAM_SAMPLE, *keys, micro, slot)``: the template index
    first, then the augmentation — so a sample does not depend on the other samples of its batch.
    """
    gen = derive_generator(seed, STREAM_SAMPLE, *keys, micro, slot)
    template = int(torch.randint(0, n_templates, (1,), generator=gen))
    return template, augment_image(image, crop, gen)


def make_pixel_batch(images, step, seed, keys, crop, n_templates):
    """Augmented pixels float32 [b, 3, crop, crop] and template ids int64 [b] of one micro-step.

    ``images``: list of uint8 [S, S, 3] arrays (already resized) indexed by item position.
    """
    samples = [make_sample(images[item], seed, keys, step.index, j, crop, n_templates)
               for j, item in enumerate(step.items)]
    return (torch.stack([s[1] for s in samples]),
            torch.tensor([s[0] for s in samples], dtype=torch.long))
