"""File-level evaluation: a CAM cache + test index (+ classifier scores) → per-image parquet + summary JSON.

Streams the cache shard by shard (optionally in worker processes), so memory holds one shard of
maps per worker plus the small per-image results. Also scores the centre-Gaussian and full-image
baselines from the index alone. CLI: ``genpromp evaluate`` (``--help`` lists every option).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..cams.cache import CamCache, read_cam_shard, shard_filename
from ..errors import InputError
from ..io import atomic_path, write_text_atomic
from .evaluator import EvalSettings, Evaluator, ImageInput, ImageResult, evaluate_image
from .metrics import (
    box_iou_matrix, center_gaussian_cam, classify_top1_error, full_image_box, scale_boxes_tscam,
    scale_boxes_wsol, threshold_list,
)

__all__ = [
    "load_test_index", "load_scores", "settings_from_config", "evaluate_cache", "evaluate_baselines",
    "results_table", "write_evaluation", "run_evaluate", "register_cli",
]
log = logging.getLogger(__name__)


def settings_from_config(config, dataset):
    """EvalSettings from a validated config dict and a dataset name."""
    ev = config["evaluation"]
    sw = ev["sweep"]
    return EvalSettings(cam_thr=float(config["datasets"][dataset]["cam_thr"]), frame=int(ev["frame"]),
                        wsol_frame=int(ev["wsol_frame"]),
                        thresholds=tuple(threshold_list(sw["start"], sw["stop"], sw["step"]).tolist()),
                        iou_thresholds=tuple(float(d) for d in ev["iou_thresholds"]),
                        protocols=tuple(ev["protocols"]))


def load_test_index(path):
    """Test index (FORMATS.md) as a DataFrame indexed by image_id; every row needs ≥ 1 GT box."""
    df = pq.read_table(path).to_pandas()
    for col in ("image_id", "label", "width", "height", "boxes"):
        if col not in df.columns:
            raise InputError(path, f"index lacks column {col!r}; rebuild it with `genpromp index`")
    for i, (iid, boxes) in enumerate(zip(df["image_id"], df["boxes"])):
        if boxes is None or len(boxes) == 0:
            raise InputError(path, f"image {iid!r} has no ground-truth box; test images need boxes", i)
    return df.set_index("image_id", drop=False)


def load_scores(path):
    """Classifier scores (FORMATS.md) as {image_id: top-5 class ids tuple}."""
    df = pq.read_table(path, columns=["image_id", "top5_ids"]).to_pandas()
    return {iid: tuple(int(c) for c in ids) for iid, ids in zip(df["image_id"], df["top5_ids"])}


def _gt_record(index, iid, source):
    if iid not in index.index:
        raise InputError(source, f"image {iid!r} is in the CAM cache but not in the test index; "
                                 "the cache belongs to another dataset or split")
    rec = index.loc[iid]
    return (int(rec["label"]), int(rec["width"]), int(rec["height"]),
            np.asarray([list(b) for b in rec["boxes"]], dtype=np.float64))


def _shard_inputs(folder, k, rows, gts, scores):
    """ImageInputs of shard k: rows = [(image_id, row, slot, class_id, role)]."""
    shard = read_cam_shard(Path(folder) / shard_filename(k))
    by_image = {}
    for iid, row, slot, cid, role in rows:
        by_image.setdefault(iid, {})[role] = (int(cid), shard.cams[row, slot].astype(np.float32))
    for iid, maps in by_image.items():
        label, w, h, boxes = gts[iid]
        yield ImageInput(iid, label, w, h, boxes, maps, scores.get(iid) if scores is not None else None)


def _evaluate_shard(args):
    folder, k, rows, gts, scores, settings = args
    return [evaluate_image(inp, settings) for inp in _shard_inputs(folder, k, rows, gts, scores)]


def _check_coverage(cache, index, scores, scores_path):
    have = set(cache.index.loc[cache.index["role"] == "gt", "image_id"])
    missing = [i for i in index["image_id"] if i not in have]
    if missing:
        raise InputError(cache.index_path, f"{len(missing)} test images have no 'gt'-role map (first: "
                                           f"{missing[0]!r}); re-run the CAM extraction for this variant")
    if scores is not None:
        lacking = [i for i in index["image_id"] if i not in scores]
        if lacking:
            raise InputError(scores_path, f"{len(lacking)} test images have no classifier scores (first: {lacking[0]!r})")
        top1 = cache.index[cache.index["role"] == "top1"]
        for pos, (iid, cid) in enumerate(zip(top1["image_id"], top1["class_id"])):
            if scores[iid][0] != int(cid):
                raise InputError(cache.index_path, f"image {iid!r}: cached top1 map is class {int(cid)} but the "
                                                   f"scores' top-1 is {scores[iid][0]}; the cache was made with "
                                                   "other scores", pos)


def evaluate_cache(cam_dir, index_path, settings, scores_path=None, threads=1):
    """Evaluate every test image of a CAM cache; return an :class:`Evaluator` holding the results.

    scores_path: classifier scores parquet (needed for Top-1/Top-5 Loc, Cls and the breakdown;
    None → GT-known metrics only). threads > 1 evaluates shards in that many worker processes.
    """
    cache = CamCache(cam_dir)
    index = load_test_index(index_path)
    scores = load_scores(scores_path) if scores_path else None
    _check_coverage(cache, index, scores, scores_path)
    ids = set(index["image_id"])
    gts, jobs = {}, []
    for k in cache.shard_numbers():
        sub = cache.index[cache.index["shard"] == k]
        for iid in dict.fromkeys(sub["image_id"]):
            gts[iid] = _gt_record(index, iid, cache.index_path)
        rows = list(sub[["image_id", "row", "slot", "class_id", "role"]].itertuples(index=False, name=None))
        cache.load_shard(k)  # validates the shard against the index (NaN, negatives, row/slot/class)
        jobs.append((str(cam_dir), k, rows, {i: gts[i] for i in dict.fromkeys(sub["image_id"])},
                     {i: scores[i] for i in dict.fromkeys(sub["image_id"])} if scores is not None else None,
                     settings))
    if len(ids) != len(gts):
        raise InputError(cache.index_path, "the cache does not cover the test index")
    evaluator = Evaluator(settings)
    if threads > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=threads) as pool:
            for results in pool.map(_evaluate_shard, jobs):
                for r in results:
                    evaluator.add_result(r)
    else:
        for job in jobs:
            for r in _evaluate_shard(job):
                evaluator.add_result(r)
    order = {iid: i for i, iid in enumerate(index["image_id"])}
    evaluator.results.sort(key=lambda r: order[r.image_id])
    return evaluator


def _fixed_box_result(iid, label, gt_tscam, gt_wsol, box_t, box_w, top5, n_thr):
    iou = float(box_iou_matrix(box_t, gt_tscam).max())
    iou_w = float(box_iou_matrix(box_w, gt_wsol).max())
    res = ImageResult(iid, label, None, None, None, list(box_t), iou, iou >= 0.5, None, None, None, None, None,
                      np.full(n_thr, iou, np.float32), np.full(n_thr, iou_w, np.float32), np.full(n_thr, iou_w, np.float32))
    if top5 is not None:
        res.top1_id, res.cls1, res.cls5 = top5[0], top5[0] == label, label in top5
        res.box_top1, res.iou_top1 = list(box_t), iou
        res.top1_loc, res.top5_loc = bool(res.cls1 and iou > 0.5), bool(res.cls5 and iou > 0.5)
        res.error = classify_top1_error(res.cls1, box_t, gt_tscam)
    return res


def evaluate_baselines(index_path, settings, scores_path=None, cam_size=64):
    """Score the two map-free baselines over the test index; return {name: Evaluator}.

    ``center``: the centre-Gaussian map (Choe et al.; sigma = size/4) put through both protocols
    exactly like a CAM, so the sweep picks the best centred box. ``full``: the box covering the whole
    frame, [0, 0, F − 1, F − 1], at every threshold. With scores, Top-1/Top-5 Loc use the classifier.
    """
    index = load_test_index(index_path)
    scores = load_scores(scores_path) if scores_path else None
    center_map = center_gaussian_cam(cam_size)
    out = {"center": Evaluator(settings), "full": Evaluator(settings)}
    n_thr = len(settings.thresholds)
    for iid, label, w, h, boxes in index[["image_id", "label", "width", "height", "boxes"]].itertuples(index=False):
        gt = np.asarray([list(b) for b in boxes], dtype=np.float64)
        top5 = scores.get(iid) if scores is not None else None
        out["center"].accumulate(ImageInput(iid, int(label), int(w), int(h), gt,
                                            {"gt": (int(label), center_map)}, top5))
        out["full"].add_result(_fixed_box_result(
            iid, int(label), scale_boxes_tscam(gt, w, h, settings.frame), scale_boxes_wsol(gt, w, h, settings.wsol_frame),
            full_image_box(settings.frame), full_image_box(settings.wsol_frame), top5, n_thr))
    return out


def results_table(results):
    """Per-image results as a pyarrow Table (one row per image; boxes in the TS-CAM frame, x1y1x2y2 inclusive)."""
    def col(name):
        return [getattr(r, name) for r in results]
    return pa.table({
        "image_id": pa.array(col("image_id"), pa.string()),
        "label": pa.array(col("label"), pa.int32()),
        "top1_id": pa.array(col("top1_id"), pa.int32()),
        "cls1": pa.array(col("cls1"), pa.bool_()),
        "cls5": pa.array(col("cls5"), pa.bool_()),
        "box_gt": pa.array(col("box_gt"), pa.list_(pa.int32())),
        "iou_gt": pa.array(col("iou_gt"), pa.float64()),
        "gt_known": pa.array(col("gt_known"), pa.bool_()),
        "box_top1": pa.array(col("box_top1"), pa.list_(pa.int32())),
        "iou_top1": pa.array(col("iou_top1"), pa.float64()),
        "top1_loc": pa.array(col("top1_loc"), pa.bool_()),
        "top5_loc": pa.array(col("top5_loc"), pa.bool_()),
        "error": pa.array(col("error"), pa.string()),
        "tscam_ious": pa.array([r.tscam_ious.tolist() for r in results], pa.list_(pa.float32())),
        "wsol_v1_ious": pa.array([r.wsol_v1.tolist() for r in results], pa.list_(pa.float32())),
        "wsol_v2_ious": pa.array([r.wsol_v2.tolist() for r in results], pa.list_(pa.float32())),
    })


def write_evaluation(evaluator, per_image_path, summary_path, meta=None):
    """Write the per-image parquet and the summary JSON (atomically); return the summary dict."""
    summary = dict(meta or {})
    summary.update(evaluator.compute())
    with atomic_path(per_image_path) as tmp:
        pq.write_table(results_table(evaluator.results), tmp)
    write_text_atomic(summary_path, json.dumps(summary, indent=1) + "\n")
    return summary


def run_evaluate(cams, index, settings, per_image, summary, scores=None, threads=1, meta=None):
    """Evaluate a CAM cache folder and write both outputs; return the summary dict."""
    evaluator = evaluate_cache(cams, index, settings, scores_path=scores, threads=threads)
    meta = dict(meta or {})
    meta.setdefault("cams", str(cams))
    meta.setdefault("scores", str(scores) if scores else None)
    return write_evaluation(evaluator, per_image, summary, meta)


def run_baselines(index, settings, out_dir, scores=None, meta=None):
    """Score the baselines; write ``<out_dir>/<name>/{per_image.parquet,summary.json}``; return summaries."""
    out = {}
    for name, ev in evaluate_baselines(index, settings, scores_path=scores).items():
        m = dict(meta or {}, baseline=name)
        out[name] = write_evaluation(ev, Path(out_dir) / name / "per_image.parquet",
                                     Path(out_dir) / name / "summary.json", m)
    return out


def _settings_from_args(args):
    return EvalSettings(cam_thr=args.cam_thr, frame=args.frame, wsol_frame=args.wsol_frame,
                        thresholds=tuple(threshold_list(*args.sweep).tolist()),
                        iou_thresholds=tuple(args.iou_thresholds), protocols=tuple(args.protocols))


def _cli(args):
    settings = _settings_from_args(args)
    meta = {k: v for k, v in (("dataset", args.dataset), ("run", args.run), ("variant", args.variant),
                              ("mode", args.mode), ("ratio", args.ratio)) if v is not None}
    if args.baselines:
        run_baselines(args.index, settings, args.baselines, scores=args.scores, meta=meta)
        return
    if not (args.cams and args.per_image and args.summary):
        raise InputError("<command line>", "--cams, --per-image and --summary are required (or use --baselines DIR)")
    s = run_evaluate(args.cams, args.index, settings, args.per_image, args.summary, scores=args.scores,
                     threads=args.threads, meta=meta)
    log.info("evaluated %d images: GT-known %.2f%%", s["n_images"], s["tscam"]["gt_known"])


def register_cli(subparsers):
    p = subparsers.add_parser(
        "evaluate", help="score a CAM cache (TS-CAM protocol + wsolevaluation MaxBoxAccV2)",
        description="Score a CAM cache folder (docs/FORMATS.md) against the test index: Top-1/Top-5/GT-known "
                    "Loc at --cam-thr, the threshold sweep of both protocols, MaxBoxAcc(V2). Writes a per-image "
                    "parquet and a summary JSON. With --baselines DIR, scores the centre-Gaussian and "
                    "full-image baselines instead (no CAMs needed).")
    p.add_argument("--cams", help="CAM cache folder (shard-*.npz + index.parquet)")
    p.add_argument("--index", required=True, help="test index parquet (results/<dataset>/index/test.parquet)")
    p.add_argument("--scores", default=None, help="classifier scores parquet; needed for Top-1/Top-5 Loc, Cls "
                                                  "and the error breakdown (omit for GT-known only)")
    p.add_argument("--per-image", help="output per-image parquet")
    p.add_argument("--summary", help="output summary JSON")
    p.add_argument("--baselines", default=None, metavar="DIR", help="score the baselines into DIR/{center,full}/")
    p.add_argument("--cam-thr", type=float, default=0.23, help="TS-CAM threshold (config datasets.<d>.cam_thr; "
                                                              "0.23 CUB, 0.25 ImageNet)")
    p.add_argument("--frame", type=int, default=512, help="TS-CAM evaluation frame (evaluation.frame)")
    p.add_argument("--wsol-frame", type=int, default=224, help="wsolevaluation frame (evaluation.wsol_frame)")
    p.add_argument("--sweep", type=float, nargs=3, default=[0.0, 1.0, 0.01], metavar=("START", "STOP", "STEP"),
                   help="threshold sweep np.arange(START, STOP, STEP) (evaluation.sweep)")
    p.add_argument("--iou-thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7],
                   help="IoU thresholds δ of MaxBoxAccV2 (evaluation.iou_thresholds)")
    p.add_argument("--protocols", nargs="+", default=["tscam", "wsol"], choices=["tscam", "wsol"],
                   help="which threshold sweeps to run (the cam_thr point metrics always run)")
    p.add_argument("--threads", type=int, default=1, help="worker processes (one CAM shard per task)")
    p.add_argument("--dataset", default=None, help="dataset name recorded in the summary")
    p.add_argument("--run", default=None, help="run name recorded in the summary")
    p.add_argument("--variant", default=None, help="variant name recorded in the summary")
    p.add_argument("--mode", default=None, choices=["gtk", "top1", "top5"], help="CAM mode recorded in the summary")
    p.add_argument("--ratio", type=float, default=None, help="combine ratio w recorded in the summary")
    p.set_defaults(func=_cli)
