"""PxAP: wsolevaluation's pixel-level average precision (Choe et al. CVPR'20, its ``MaskEvaluator``).

Per image (all arithmetic as the reference does it):

* Score map: the CAM as float64, resized bicubically (cv2) to the evaluation frame F × F
  (``evaluation.wsol_frame``), min-max normalised in float64; a constant map or one with a NaN
  becomes all zeros (:func:`~.wsol.wsol_scoremap`, the map MaxBoxAcc quantises).
* Ground truth: every mask file of the image is read as 8-bit grey (cv2), resized to F × F with
  nearest-neighbour interpolation and binarised with ``value > 0.5`` (so any non-zero grey level is
  foreground); the image's masks are OR-ed. Its ignore mask (optional here, see
  :func:`read_mask_listing`) is read the same way; ignore pixels that are not foreground are dropped.
  Foreground pixels are positives, the remaining pixels negatives (:func:`load_gt_mask`).
* The positive and the negative scores are counted into the bins ``[τ_0, τ_1), …, [τ_{T−1}, 1),
  [1, 2), [2, 3]`` (τ the wsolevaluation threshold list, ``numpy.histogram``).

Over the test set (:class:`PxapAccumulator`): the two histograms are summed; TP and FP are the
cumulative sums from the highest bin down, precision = TP / (TP + FP), recall = TP / #positives,
and PxAP = 100 · Σ_i precision[i+1] · (recall[i+1] − recall[i]) over the entries with TP + FP > 0.
The histograms are integer counts, so the states of disjoint image sets add up exactly and a
sharded evaluation equals a single pass.

Mask listings use the wsolevaluation metadata layout (OpenImages' ``localization.txt``): one line
``image_path,mask_path,ignore_path`` per mask, see :func:`read_mask_listing`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import GenprompError, InputError
from ..io import resolve_inside
from .wsol import wsol_scoremap

__all__ = [
    "MaskSource", "MaskEntry", "read_mask_listing", "mask_source_from_config", "load_mask_file",
    "load_gt_mask", "pxap_bin_edges", "image_histograms", "PxapAccumulator",
    "merge_pxap_states", "summary_from_pxap_state",
]

# A mask's aspect ratio must match its image's within this many pixels (at the image's size).
ASPECT_TOLERANCE_PX = 1.0


@dataclass(frozen=True)
class MaskSource:
    """Where the masks of a dataset are: the listing file and the folder its paths are relative to
    (default: the listing's folder)."""

    listing: Path
    root: Path | None = None

    @property
    def mask_root(self):
        return Path(self.root) if self.root is not None else Path(self.listing).parent


@dataclass(frozen=True)
class MaskEntry:
    """The masks of one image: absolute mask files, the ignore file (or None) and the listing lines."""

    image_id: str
    masks: tuple
    ignore: Path | None
    listing: Path
    lines: tuple


def mask_source_from_config(masks):
    """A :class:`MaskSource` from a dataset's ``masks`` config entry (dict or None → None)."""
    if not masks:
        return None
    return MaskSource(Path(masks["listing"]), Path(masks["root"]) if masks.get("root") else None)


def read_mask_listing(source):
    """Read a mask listing; return ``{image_id: MaskEntry}``.

    Each non-blank line is ``image_path,mask_path,ignore_path`` (three comma-separated fields).
    One line per mask: an image with several masks has several lines, and its masks are OR-ed.
    The ignore path is given on the image's first line; later lines of the image leave it empty
    (as in wsolevaluation). An empty ignore path on the first line means "no ignore region" (the
    reference always lists one). ``image_path`` is the image path as the dataset lists it (CUB:
    relative to ``images/``, ImageNet: to ``val/``, wsol layout: as in ``image_ids.txt``); the
    image's id is that path without its extension, as in the index. Mask and ignore paths are
    relative to ``source.mask_root`` and must not leave it.
    """
    listing = Path(source.listing)
    if not listing.is_file():
        raise InputError(listing, "mask listing not found; check the dataset's masks.listing key")
    try:
        text = listing.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(listing, f"cannot read the mask listing ({exc})") from None
    root = source.mask_root
    masks, ignore, lines, image_path = {}, {}, {}, {}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        fields = [f.strip() for f in raw.split(",")]
        if len(fields) != 3:
            raise InputError(listing, f"expected image_path,mask_path,ignore_path (3 comma-separated fields), "
                                      f"got {len(fields)}", number)
        image, mask, ign = fields
        if not image or not mask:
            raise InputError(listing, "the image path and the mask path must not be empty", number)
        iid = os.path.splitext(image)[0]
        if iid in image_path and image_path[iid] != image:
            raise InputError(listing, f"images {image_path[iid]!r} and {image!r} have the same id {iid!r}", number)
        full = resolve_inside(root, mask, listing, number)
        if iid not in masks:
            image_path[iid] = image
            masks[iid], lines[iid] = [full], [number]
            ignore[iid] = resolve_inside(root, ign, listing, number) if ign else None
        else:
            if ign:
                raise InputError(listing, f"image {image!r} already has its ignore mask on line {lines[iid][0]}; "
                                          "only an image's first line may name one", number)
            masks[iid].append(full)
            lines[iid].append(number)
    if not masks:
        raise InputError(listing, "the mask listing is empty")
    return {iid: MaskEntry(iid, tuple(masks[iid]), ignore[iid], listing, tuple(lines[iid])) for iid in masks}


def load_mask_file(path, frame, listing, line, image_size=None):
    """One mask file as bool [frame, frame]: 8-bit grey (cv2), nearest-neighbour resize, > 0.5.

    image_size: (width, height) of the image; the mask must have its aspect ratio (within
    ``ASPECT_TOLERANCE_PX``), else it belongs to another image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(listing, f"mask file {path} not found", line)
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if grey is None or grey.size == 0:
        raise InputError(listing, f"mask file {path} is not a readable image (expected a PNG)", line)
    if image_size is not None:
        w, h = (float(v) for v in image_size)
        mh, mw = grey.shape
        if abs(mh * w / mw - h) > ASPECT_TOLERANCE_PX or abs(mw * h / mh - w) > ASPECT_TOLERANCE_PX:
            raise InputError(listing, f"mask file {path} is {mw}x{mh} but its image is {int(w)}x{int(h)}: "
                                      "the aspect ratios differ, so it is not this image's mask", line)
    resized = cv2.resize(np.float32(grey), (int(frame), int(frame)), interpolation=cv2.INTER_NEAREST)
    return resized > 0.5


def load_gt_mask(entry, frame, image_size=None):
    """Ground truth of one image at the frame: (positive bool [F, F], negative bool [F, F]).

    Positives: the union of the image's masks. Negatives: the other pixels outside the ignore mask.
    """
    fg = np.zeros((int(frame), int(frame)), dtype=bool)
    for path, line in zip(entry.masks, entry.lines):
        fg |= load_mask_file(path, frame, entry.listing, line, image_size)
    if entry.ignore is None:
        return fg, ~fg
    ignored = load_mask_file(entry.ignore, frame, entry.listing, entry.lines[0], image_size)
    return fg, ~fg & ~ignored


def pxap_bin_edges(thresholds):
    """Histogram edges float64 [T + 3]: the thresholds, then 1, 2, 3.

    The thresholds must increase strictly and lie in [0, 1) (wsolevaluation's ``arange(0, 1, step)``).
    """
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thr.size == 0 or thr[0] < 0 or thr[-1] >= 1 or np.any(np.diff(thr) <= 0):
        raise GenprompError(f"PxAP needs increasing thresholds in [0, 1) (evaluation.sweep); got {thr.tolist()}")
    return np.append(thr, [1.0, 2.0, 3.0])


def image_histograms(scoremap, positive, negative, edges):
    """Counts of positive and negative pixel scores per bin: two int64 [T + 2]."""
    pos, _ = np.histogram(scoremap[positive], bins=edges)
    neg, _ = np.histogram(scoremap[negative], bins=edges)
    return pos.astype(np.int64), neg.astype(np.int64)


class PxapAccumulator:
    """Sum the per-bin positive / negative pixel counts over images; ``compute()`` gives PxAP.

    >>> acc = PxapAccumulator(thresholds, frame=224)
    >>> acc.accumulate(cam, entry, (width, height)); summary = acc.compute()

    ``state()`` is JSON-serialisable (integer counts); states of disjoint image sets merge exactly
    with :func:`merge_pxap_states`.
    """

    def __init__(self, thresholds, frame):
        self.thresholds = [float(t) for t in thresholds]
        self.frame = int(frame)
        self.edges = pxap_bin_edges(self.thresholds)
        self.positive = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.negative = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.n_images = 0

    def add_scoremap(self, scoremap, positive, negative):
        """Count one prepared score map (float [F, F] in [0, 1]) against its ground truth."""
        pos, neg = image_histograms(scoremap, positive, negative, self.edges)
        self.positive += pos
        self.negative += neg
        self.n_images += 1

    def accumulate(self, cam, entry, image_size=None):
        """Prepare ``cam`` (:func:`~.wsol.wsol_scoremap`), read its masks (:func:`load_gt_mask`) and count it."""
        positive, negative = load_gt_mask(entry, self.frame, image_size)
        self.add_scoremap(wsol_scoremap(cam, self.frame), positive, negative)

    def state(self):
        """``{"frame", "thresholds", "n_images", "positive", "negative"}`` with integer count lists."""
        return {"frame": self.frame, "thresholds": list(self.thresholds), "n_images": int(self.n_images),
                "positive": [int(v) for v in self.positive], "negative": [int(v) for v in self.negative]}

    def compute(self, source=None):
        """The PxAP summary dict (see :func:`summary_from_pxap_state`)."""
        return summary_from_pxap_state(self.state(), source)


def merge_pxap_states(states):
    """Sum PxAP states of disjoint image sets; they must share frame and thresholds (else ValueError)."""
    states = list(states)
    if not states:
        raise ValueError("no PxAP state to merge")
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in states[0].items()}
    for s in states[1:]:
        if s["frame"] != out["frame"] or s["thresholds"] != out["thresholds"]:
            raise ValueError("PxAP states were computed with different frames or threshold lists")
        out["n_images"] += s["n_images"]
        out["positive"] = [a + b for a, b in zip(out["positive"], s["positive"])]
        out["negative"] = [a + b for a, b in zip(out["negative"], s["negative"])]
    return out


def summary_from_pxap_state(state, source=None):
    """PxAP and the pixel precision–recall curve of a state.

    Returns ``{"pxap", "frame", "n_images", "positive_pixels", "negative_pixels", "thresholds",
    "precision", "recall"}``: PxAP in percent; the curve at "score ≥ threshold" for the thresholds
    τ_0 … τ_{T−1} and 1.0 (ascending), precision None where no pixel scores that high. Raises
    InputError (naming ``source``, e.g. the mask listing) when the masks hold no positive pixel or
    every pixel is ignored.
    """
    pos_hist = np.asarray(state["positive"], dtype=np.float64)
    neg_hist = np.asarray(state["negative"], dtype=np.float64)
    tp = pos_hist[::-1].cumsum()  # entry j: pixels scoring ≥ the j-th edge from the top
    fn = pos_hist.sum() - tp
    fp = neg_hist[::-1].cumsum()
    where = source if source is not None else "<masks>"
    if ((tp + fn) <= 0).all():
        raise InputError(where, "the ground-truth masks of the evaluated images have no foreground pixel; "
                                "PxAP is undefined (check the masks or drop the dataset's masks key)")
    if ((tp + fp) <= 0).all():
        raise InputError(where, "every pixel of the evaluated images is ignored; PxAP is undefined")
    nonzero = (tp + fp) != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    auc = (precision[1:] * np.diff(recall))[nonzero[1:]].sum()
    auc *= 100
    # entries 1 … T+1 are "score ≥ 1.0", "≥ τ_{T−1}", …, "≥ τ_0"; report them in ascending order
    prec = precision[1:][::-1]
    rec = recall[1:][::-1]
    return {
        "pxap": float(auc),
        "frame": int(state["frame"]),
        "n_images": int(state["n_images"]),
        "positive_pixels": int(pos_hist.sum()),
        "negative_pixels": int(neg_hist.sum()),
        "thresholds": [float(t) for t in state["thresholds"]] + [1.0],
        "precision": [None if np.isnan(p) else float(p) for p in prec],
        "recall": [float(r) for r in rec],
    }
