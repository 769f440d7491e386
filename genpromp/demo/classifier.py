"""The demo classifier: softmax regression on hand-made colour / texture / shape features.

Trained on the demo **train split only**; it never reads test labels (``train_demo_classifier``
reads only ``image_id`` and ``path`` of the test table). It writes the test split's scores in the
reference's JSON format ``{image_name: {"pred_scores": [C floats]}}`` with the reference's keys:
CUB: the ``images.txt`` path with its extension (``001.X/X_0001.jpg``); other layouts: the image id
(``n01440764/n01440764_10026``). Scores are softmax probabilities over the C classes (classes
without training images get 0).

Features of an image (downscaled so its longer side is ``FEATURE_SIDE``), computed on the
*object mask* = saturated, not-too-dark pixels (the demo backgrounds are low-saturation):
hue histogram (colour), value histogram and dark / light pixel shares inside the object's box
(texture), and rotation-invariant shape descriptors of the largest filled mask component (fill
ratio, aspect, |FFT| of its radial profile).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import ndimage

from .. import layout
from ..data.images import read_rgb
from .world import demo_scores_path
from ..errors import GenprompError
from ..io import atomic_path

__all__ = ["FEATURE_SIDE", "image_features", "fit_softmax", "predict_proba", "train_demo_classifier",
           "scores_key", "json_accuracy", "register_cli"]

log = logging.getLogger(__name__)

FEATURE_SIDE = 128
N_HUE, N_VAL, N_ANGLES, N_FFT = 24, 8, 32, 8


def _radial_fft(mask):
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    ang = np.arctan2(ys - cy, xs - cx)
    dist = np.hypot(ys - cy, xs - cx)
    bins = ((ang + np.pi) / (2 * np.pi) * N_ANGLES).astype(int) % N_ANGLES
    prof = np.zeros(N_ANGLES)
    np.maximum.at(prof, bins, dist)
    prof = prof / max(prof.max(), 1e-6)
    return np.abs(np.fft.rfft(prof))[1:N_FFT + 1] / N_ANGLES


def image_features(rgb):
    """Feature vector float64 [D] of a ``uint8 [H, W, 3]`` image."""
    img = Image.fromarray(rgb)
    scale = FEATURE_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.BILINEAR)
    hsv = np.asarray(img.convert("HSV"), np.float64) / 255.0
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    mask = (s > 0.45) & (v > 0.25)
    frac = mask.mean()
    shape = np.zeros(4 + N_FFT)
    texture = np.zeros(4)
    hue_hist, val_hist = np.zeros(N_HUE), np.zeros(N_VAL)
    if mask.sum() >= 4:
        filled = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))
        labels, n = ndimage.label(filled)
        sizes = ndimage.sum(filled, labels, range(1, n + 1))
        comp = labels == (int(np.argmax(sizes)) + 1)
        ys, xs = np.nonzero(comp)
        bh, bw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        area = comp.sum()
        perimeter = (comp & ~ndimage.binary_erosion(comp)).sum()
        shape[:4] = [area / (bh * bw), min(bh, bw) / max(bh, bw), perimeter ** 2 / (4 * np.pi * area),
                     area / max(filled.sum(), 1)]
        shape[4:] = _radial_fft(comp)
        obj = comp & mask
        hue_hist = np.histogram(h[obj], bins=N_HUE, range=(0, 1))[0] / max(obj.sum(), 1)
        val_hist = np.histogram(v[obj], bins=N_VAL, range=(0, 1))[0] / max(obj.sum(), 1)
        texture = np.array([
            (comp & (v < 0.45)).sum() / area,                       # dark texture parts
            (comp & (s < 0.45) & (v > 0.6)).sum() / area,            # light dots
            np.abs(np.diff(v, axis=1))[comp[:, 1:]].mean() if comp[:, 1:].any() else 0.0,
            np.abs(np.diff(v, axis=0))[comp[1:]].mean() if comp[1:].any() else 0.0,
        ])
    return np.concatenate([[frac], hue_hist, val_hist, texture, shape])


def fit_softmax(x, y, n_classes, epochs, seed=0, lr=0.05, weight_decay=1e-3, batch_size=32):
    """Train softmax regression on standardised features; returns (weights, bias, mean, std)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.long)
    gen = torch.Generator().manual_seed(int(seed))
    model = torch.nn.Linear(x.shape[1], n_classes)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(int(epochs)):
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = perm[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.weight.detach().numpy(), model.bias.detach().numpy(), mean, std


def predict_proba(params, x, present):
    """Softmax probabilities [N, C]; classes not in ``present`` (bool [C]) get probability 0."""
    w, b, mean, std = params
    logits = ((x - mean) / std) @ w.T + b
    logits[:, ~present] = -np.inf
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def scores_key(layout, image_id, path):
    """Key of an image in the reference's classifier JSON (CUB: images.txt path with extension)."""
    if layout == "cub":
        return path[len("images/"):] if path.startswith("images/") else path
    return image_id


def _features(root, paths):
    return np.stack([image_features(read_rgb(Path(root) / p)) for p in paths])


def train_demo_classifier(index_dir, image_root, layout, out_json, epochs=60, seed=0):
    """Train on the index's train split, write test scores as reference JSON; returns the path."""
    index_dir = Path(index_dir)
    train = pd.read_parquet(index_dir / "train.parquet", columns=["path", "label"])
    test = pd.read_parquet(index_dir / "test.parquet", columns=["image_id", "path"])  # no test labels
    n_classes = len(pd.read_parquet(index_dir / "classes.parquet", columns=["class_id"]))
    if train.empty:
        raise GenprompError(f"{index_dir}/train.parquet has no images to train the demo classifier on")
    x_train = _features(image_root, train["path"])
    y_train = train["label"].to_numpy()
    params = fit_softmax(x_train, y_train, n_classes, epochs, seed)
    present = np.zeros(n_classes, bool)
    present[np.unique(y_train)] = True
    train_acc = float((predict_proba(params, x_train, present).argmax(1) == y_train).mean())
    probs = predict_proba(params, _features(image_root, test["path"]), present)
    result = {scores_key(layout, i, p): {"pred_scores": [round(float(v), 6) for v in row]}
              for i, p, row in zip(test["image_id"], test["path"], probs)}
    with atomic_path(out_json) as tmp:
        Path(tmp).write_text(json.dumps(result))
    log.info("demo classifier: %d train images (train accuracy %.3f), scores for %d test images -> %s",
             len(train), train_acc, len(test), out_json)
    return Path(out_json)


def json_accuracy(scores_json, index_dir, layout):
    """Top-1 accuracy of a reference-format scores JSON on the index's test split (for reports)."""
    test = pd.read_parquet(Path(index_dir) / "test.parquet", columns=["image_id", "path", "label"])
    data = json.loads(Path(scores_json).read_text())
    pred = [int(np.argmax(data[scores_key(layout, i, p)]["pred_scores"])) for i, p in zip(test["image_id"], test["path"])]
    return float((np.array(pred) == test["label"].to_numpy()).mean())


def _cli(args):
    from ..config import load_config
    from ..data.indexing import image_root_for
    config = load_config(args.config)
    ds = config["datasets"][args.dataset]
    index_dir = args.index or layout.index_dir(args.dataset)
    out = args.out or demo_scores_path(config["demo"]["root"], args.dataset)
    train_demo_classifier(index_dir, image_root_for(ds), ds["layout"], out,
                          args.epochs or config["demo"]["classifier_epochs"], config["seed"])
    if args.report_accuracy:
        log.info("test top-1 accuracy: %.3f", json_accuracy(out, index_dir, ds["layout"]))


def register_cli(sub):
    p = sub.add_parser("train-classifier", help="train the demo classifier and write test scores (reference JSON)",
                       description="Train a softmax-regression classifier on colour/texture/shape features "
                                   "of the dataset's train split (never its test labels) and write the test "
                                   "split's scores as {image_name: {\"pred_scores\": [C floats]}}.")
    p.add_argument("dataset", help="dataset name: a key of `datasets:` in the config")
    p.add_argument("--config", default="config/config.yaml", help="workflow config YAML (default: %(default)s)")
    p.add_argument("--index", default=None, help="index folder (default: results/<dataset>/index)")
    p.add_argument("--out", default=None, help="output JSON (default: <demo.root>/classifications/<dataset>_democls.json)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: demo.classifier_epochs)")
    p.add_argument("--report-accuracy", action="store_true",
                   help="after writing, log the test top-1 accuracy (reads test labels, for reporting only)")
    p.set_defaults(func=_cli)
