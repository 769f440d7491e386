"""The discriminative CAM baseline: class activation maps of a small CNN (Zhou et al. 2016, "Learning Deep
Features for Discriminative Localization").

The network (``CamNet``) is a stack of 3x3 convolutions with batch norm and ReLU and 2x2 max pooling between them, then
global average pooling and one linear layer: ``logits_c = sum_k w_{c,k} mean_{x,y} f_k(x, y)``. It starts
from random weights (seeded) and is trained with cross-entropy on the **train split's class labels only**
(``train_cam_baseline``; no boxes, no masks), on images resized to a ``resolution`` square (bicubic, no
crop: the frame of GenPromp's test images), with random horizontal flips and shifts.

The class activation map of class ``c`` is ``CAM_c(x, y) = sum_k w_{c,k} f_k(x, y)`` on the last feature
map (``resolution / 2^(levels-1)`` cells a side), upsampled bilinearly to ``test.cam_size`` and min-max
normalised per map to [0, 1] (non-negative, as the CAM cache requires; the evaluation normalises again).
``extract_cam_shard`` writes these maps as a CAM cache shard with the slots of the variant's mode (gtk:
the ground-truth class; top1 / top5: the classifier's classes, then the ground truth), so the evaluation
scores them exactly as it scores GenPromp's. A variant's combine ratio and timesteps do not apply to this
baseline: every variant of a CAM run stores the same maps.

``train_cam_baseline`` also writes the test split's class probabilities in the classifier JSON format
(``{image_id: {"pred_scores": [C floats]}}``), so a config can name them as a dataset's classifier.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..cams.cache import write_cam_shard
from ..cams.extract import load_test_image, plan_prompts, shard_records
from ..data.scores import read_top5
from ..config import schema_default
from ..errors import GenprompError, InputError
from ..io import atomic_path, resolve_inside
from ..layout import Variant

__all__ = [
    "CamNet",
    "CamNetSettings",
    "class_activation_maps",
    "extract_cam_shard",
    "load_cam_net",
    "load_pixels",
    "save_cam_net",
    "settings_from_config",
    "train_cam_baseline",
    "train_cam_net",
]

log = logging.getLogger(__name__)


def _schema(key, cast=None):
    """A field whose default is the config schema's default of ``cam_baseline.<key>``."""
    return field(default_factory=lambda: (cast or (lambda v: v))(schema_default(f"cam_baseline.{key}")))


@dataclass(frozen=True)
class CamNetSettings:
    """``cam_baseline`` config block: input side, widths per level, training schedule and augmentation
    (defaults: the config schema's); ``threads``: torch CPU threads."""

    resolution: int = _schema("resolution")
    channels: tuple = _schema("channels", tuple)
    epochs: int = _schema("epochs")
    batch_size: int = _schema("batch_size")
    learning_rate: float = _schema("learning_rate")
    weight_decay: float = _schema("weight_decay")
    shift: int = _schema("shift")
    threads: int = 2


def settings_from_config(config, threads=2):
    """CamNetSettings from a validated config's ``cam_baseline`` block (``threads``: torch CPU threads)."""
    c = config["cam_baseline"]
    return CamNetSettings(resolution=int(c["resolution"]), channels=tuple(int(v) for v in c["channels"]),
                          epochs=int(c["epochs"]), batch_size=int(c["batch_size"]),
                          learning_rate=float(c["learning_rate"]), weight_decay=float(c["weight_decay"]),
                          shift=int(c["shift"]), threads=int(threads))


class CamNet(torch.nn.Module):
    """Convolutions (3x3, batch norm, ReLU; 2x2 max pooling between levels) -> global average pooling -> linear."""

    def __init__(self, n_classes, channels):
        super().__init__()
        layers, c_in = [], 3
        for level, c_out in enumerate(channels):
            if level:
                layers.append(torch.nn.MaxPool2d(2))
            layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c_out),
                       torch.nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Linear(c_in, int(n_classes))

    def forward(self, x):
        """(logits [B, C], last feature map [B, K, h, w])."""
        f = self.features(x)
        return self.fc(f.mean(dim=(2, 3))), f


def class_activation_maps(model, features, class_ids):
    """Raw CAMs ``sum_k w_{c,k} f_k`` float32 [B, S, h, w] of ``class_ids`` (int [B, S]) from ``features``
    [B, K, h, w] (the classifier bias is constant over the map and left out)."""
    w = model.fc.weight[torch.as_tensor(class_ids, dtype=torch.long)]  # [B, S, K]
    return torch.einsum("bsk,bkhw->bshw", w, features)


def load_pixels(image_root, paths, resolution, source=None):
    """float32 [N, 3, R, R] in [-1, 1]: each image resized bicubically to ``resolution`` square (no crop)."""
    if not len(paths):
        return torch.zeros((0, 3, resolution, resolution))
    return torch.stack([load_test_image(resolve_inside(image_root, p, source, n + 1), resolution)
                        for n, p in enumerate(paths)])


def _augment(x, gen, shift):
    """Random horizontal flip and a random shift of up to ``shift`` px (edge padding) per image."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if shift <= 0:
        return x
    r = x.shape[-1]
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    offs = torch.randint(0, 2 * shift + 1, (len(x), 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy:dy + r, dx:dx + r] for i, (dy, dx) in enumerate(offs)])


def train_cam_net(pixels, labels, n_classes, settings, seed=0):
    """Train a CamNet on ``pixels`` [N, 3, R, R] with ``labels`` int [N]; AdamW with cosine decay.
    Returns (model in eval mode, per-epoch mean losses)."""
    torch.manual_seed(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    model = CamNet(n_classes, settings.channels)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    labels = labels.long() if isinstance(labels, torch.Tensor) else torch.from_numpy(np.array(labels, np.int64))
    n, bs = len(labels), settings.batch_size
    total, step, losses = settings.epochs * math.ceil(n / bs), 0, []
    model.train()
    for _ in range(settings.epochs):
        perm, epoch_loss = torch.randperm(n, generator=gen), []
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            for group in opt.param_groups:
                group["lr"] = settings.learning_rate * 0.5 * (1 + math.cos(math.pi * step / total))
            logits, _ = model(_augment(pixels[idx], gen, settings.shift))
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            epoch_loss.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_loss)))
    return model.eval(), losses


def save_cam_net(model, settings, n_classes, path, extra=None):
    """Weights as safetensors, settings and class count in its metadata (written atomically)."""
    meta = {"settings": json.dumps(asdict(settings)), "n_classes": str(int(n_classes)),
            "extra": json.dumps(extra or {})}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    return Path(path)


def load_cam_net(path):
    """(CamNet in eval mode, CamNetSettings) from :func:`save_cam_net`'s file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "CAM baseline model not found; run the train_cam_baseline rule first")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if "settings" not in meta or "n_classes" not in meta:
            raise InputError(path, "not a CAM baseline model (metadata lacks settings / n_classes)")
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    raw = json.loads(meta["settings"])
    settings = CamNetSettings(**{**raw, "channels": tuple(raw["channels"])})
    model = CamNet(int(meta["n_classes"]), settings.channels)
    model.load_state_dict(state)
    return model.eval(), settings


@torch.no_grad()
def _predict(model, pixels, batch_size=64):
    return torch.cat([torch.softmax(model(pixels[s:s + batch_size])[0], 1)
                      for s in range(0, len(pixels), batch_size)]) if len(pixels) else torch.zeros((0, 1))


def train_cam_baseline(index_dir, image_root, out_model, out_scores, settings, seed=0):
    """Train on the index's train split (class labels only) and write the model and the test split's
    class probabilities (classifier JSON keyed by image id). Returns {"train_accuracy", "losses"}."""
    index_dir = Path(index_dir)
    torch.set_num_threads(max(1, settings.threads))
    train = pd.read_parquet(index_dir / "train.parquet", columns=["path", "label"])
    test = pd.read_parquet(index_dir / "test.parquet", columns=["image_id", "path"])  # no test labels
    n_classes = len(pd.read_parquet(index_dir / "classes.parquet", columns=["class_id"]))
    if train.empty:
        raise InputError(index_dir / "train.parquet", "no training images for the CAM baseline")
    t0 = time.perf_counter()
    x_train = load_pixels(image_root, train["path"].tolist(), settings.resolution, index_dir / "train.parquet")
    model, losses = train_cam_net(x_train, train["label"].to_numpy(), n_classes, settings, seed)
    train_acc = float((_predict(model, x_train).argmax(1).numpy() == train["label"].to_numpy()).mean())
    probs = _predict(model, load_pixels(image_root, test["path"].tolist(), settings.resolution,
                                        index_dir / "test.parquet")).numpy()
    save_cam_net(model, settings, n_classes, out_model, {"train_accuracy": train_acc, "losses": losses})
    result = {str(i): {"pred_scores": [round(float(v), 6) for v in row]} for i, row in zip(test["image_id"], probs)}
    with atomic_path(out_scores) as tmp:
        Path(tmp).write_text(json.dumps(result))
    log.info("CAM baseline: %d train images, %d epochs in %.1f s, final loss %.4f, train accuracy %.3f; "
             "scores for %d test images -> %s", len(train), settings.epochs, time.perf_counter() - t0,
             losses[-1] if losses else float("nan"), train_acc, len(test), out_scores)
    return {"train_accuracy": train_acc, "losses": losses}


@torch.no_grad()
def _shard_maps(model, pixels, slots, cam_size, batch_size=64):
    """float32 [N, S, cam_size, cam_size]: each slot's CAM upsampled bilinearly and min-max normalised."""
    out = []
    for s in range(0, len(pixels), batch_size):
        _, feats = model(pixels[s:s + batch_size])
        cams = class_activation_maps(model, feats, slots[s:s + batch_size])
        b, k = cams.shape[:2]
        cams = F.interpolate(cams.reshape(b * k, 1, *cams.shape[2:]), size=(cam_size, cam_size), mode="bilinear",
                             align_corners=False).reshape(b, k, cam_size, cam_size)
        lo = cams.amin(dim=(2, 3), keepdim=True)
        span = cams.amax(dim=(2, 3), keepdim=True) - lo
        out.append(torch.where(span > 0, (cams - lo) / span.clamp_min(1e-12), torch.zeros_like(cams)))
    return torch.cat(out).numpy() if out else np.zeros((0, slots.shape[1], cam_size, cam_size), np.float32)


def extract_cam_shard(model_path, variant, shard, index_path, image_root, out_path, shard_size, cam_size,
                      scores_path=None, threads=2):
    """Write CAM cache shard ``shard`` of ``variant`` (its mode picks the slots; ratio and timesteps do not
    apply) for the rows of ``index_path`` (test or held-out index). Returns the path."""
    variant = Variant.parse(variant)
    if variant.needs_scores and scores_path is None:
        raise GenprompError(f"variant {variant}: mode {variant.mode} needs classifier scores "
                            "(config key datasets.<dataset>.classifier)")
    torch.set_num_threads(max(1, int(threads)))
    model, settings = load_cam_net(model_path)
    top5 = read_top5(scores_path) if variant.needs_scores else None
    records = shard_records(index_path, image_root, shard, shard_size, top5)
    slots, _, _ = plan_prompts(variant.mode, [r.label for r in records],
                               None if top5 is None else [r.top5 for r in records])
    if slots.size and int(slots.max()) >= model.fc.out_features:
        raise InputError(index_path, f"class id {int(slots.max())} is outside the CAM baseline's "
                                     f"{model.fc.out_features} classes; retrain it on this dataset")
    pixels = torch.stack([load_test_image(r.path, settings.resolution) for r in records]) if records else \
        torch.zeros((0, 3, settings.resolution, settings.resolution))
    cams = _shard_maps(model, pixels, torch.as_tensor(slots), int(cam_size))
    log.info("CAM baseline shard %s (%s): %d images", shard, variant, len(records))
    return write_cam_shard(out_path, [r.image_id for r in records], slots.astype(np.int32), cams)
