"""File-level evaluation: a CAM cache + test index (+ classifier scores, + masks) → per-image parquet + summary JSON.

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
import pyarrow as pa
import pyarrow.parquet as pq

from .. import layout
from ..cams.cache import CamCache, read_cam_shard, shard_filename
from ..config import schema_default, schema_entry
from ..errors import ConfigError, InputError
from ..data.scores import read_top5
from ..io import atomic_path, write_text_atomic
from .evaluator import (
    Evaluator, ImageInput, ImageResult, evaluate_image, merge_states, score_classes, settings_from_params,
    summary_from_state,
)
from .metrics import best_iou, center_gaussian_cam, full_image_box, scale_boxes_tscam, scale_boxes_wsol
from .pxap import (
    MaskSource, PxapAccumulator, load_gt_mask, merge_pxap_states, read_mask_listing, summary_from_pxap_state,
)
from .wsol import wsol_scoremap

__all__ = [
    "load_test_index", "settings_from_params", "eval_part_shards",
    "evaluate_cache", "evaluate_baselines", "results_table", "write_evaluation", "run_evaluate",
    "run_evaluate_part", "merge_evaluation", "run_baselines", "register_cli",
]
log = logging.getLogger(__name__)


def eval_part_shards(n_images, cam_shard_size, eval_shard_size):
    """CAM shard numbers of each evaluation part: list of lists.

    A part holds ``max(1, round(eval_shard_size / cam_shard_size))`` whole CAM shards of the CAM stage's
    ``layout.shard_count(n_images, cam_shard_size)``.
    """
    n_cam = layout.shard_count(n_images, cam_shard_size)
    per = max(1, round(int(eval_shard_size) / int(cam_shard_size)))
    return [list(range(k, min(n_cam, k + per))) for k in range(0, n_cam, per)]


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
    """Results of one CAM shard and, when masks are given ({image_id: MaskEntry}), its PxAP state."""
    folder, k, rows, gts, scores, settings, masks = args
    pxap = PxapAccumulator(settings.thresholds, settings.wsol_frame) if masks is not None else None
    results = []
    for inp in _shard_inputs(folder, k, rows, gts, scores):
        results.append(evaluate_image(inp, settings))
        if pxap is not None:  # PxAP, like MaxBoxAcc, scores the GT-class map
            pxap.accumulate(inp.maps["gt"][1], masks[inp.image_id], (inp.width, inp.height))
    return results, (pxap.state() if pxap is not None else None)


def _mask_entries(masks, image_ids):
    """{image_id: MaskEntry} of ``image_ids`` from the listing of ``masks`` (a MaskSource); every image
    needs at least one mask. None when ``masks`` is None."""
    if masks is None:
        return None
    entries = read_mask_listing(masks)
    missing = [i for i in image_ids if i not in entries]
    if missing:
        raise InputError(masks.listing, f"{len(missing)} test images have no mask (first: {missing[0]!r}); every "
                                        "evaluated image needs a line image_path,mask_path,ignore_path")
    return {i: entries[i] for i in image_ids}


def _pxap_summary(state):
    """PxAP summary of a (merged) state carrying its listing under "masks"; None without masks."""
    if state is None:
        return None
    out = summary_from_pxap_state(state, state.get("masks"))
    out["masks"] = state.get("masks")
    return out


def _check_coverage(cache, index, scores, scores_path, part=None):
    have = set(cache.index.loc[cache.index["role"] == "gt", "image_id"])
    wanted = index["image_id"] if part is None else [i for i in dict.fromkeys(cache.index["image_id"])]
    missing = [i for i in wanted if i not in have]
    if missing:
        raise InputError(cache.index_path, f"{len(missing)} test images have no 'gt'-role map (first: "
                                           f"{missing[0]!r}); re-run the CAM extraction for this variant")
    if scores is not None:
        lacking = [i for i in wanted if i not in scores]
        if lacking:
            raise InputError(scores_path, f"{len(lacking)} test images have no classifier scores (first: {lacking[0]!r})")
        top1 = cache.index[cache.index["role"] == "top1"]
        for pos, (iid, cid) in enumerate(zip(top1["image_id"], top1["class_id"])):
            if scores[iid][0] != int(cid):
                raise InputError(cache.index_path, f"image {iid!r}: cached top1 map is class {int(cid)} but the "
                                                   f"scores' top-1 is {scores[iid][0]}; the cache was made with "
                                                   "other scores", pos)


def evaluate_cache(cam_dir, index_path, settings, scores_path=None, threads=1, shards=None, masks=None):
    """Evaluate the test images of a CAM cache; return an :class:`Evaluator` holding the results.

    scores_path: classifier scores parquet (needed for Top-1/Top-5 Loc, Cls and the breakdown;
    None → GT-known metrics only). threads > 1 evaluates shards in that many worker processes.
    shards: CAM shard numbers to evaluate (one evaluation part); None → all, and the cache must
    cover the whole test index (a part's coverage is checked when the parts are merged).
    masks: a :class:`~.pxap.MaskSource` → PxAP over the same images; the evaluator's ``pxap_state``
    then holds its counts (:class:`~.pxap.PxapAccumulator` state plus the listing under "masks"),
    else None.
    """
    cache = CamCache(cam_dir)
    if shards is not None:
        known = set(cache.shard_numbers())
        bad = [int(k) for k in shards if int(k) not in known]
        if bad:
            raise InputError(cache.index_path, f"CAM shards {bad} are not in the cache index; the evaluation "
                                               "part was planned for a different test set or test.shard_size")
        cache.index = cache.index[cache.index["shard"].isin([int(k) for k in shards])]  # keep row numbers
    index = load_test_index(index_path)
    scores = read_top5(scores_path) if scores_path else None
    _check_coverage(cache, index, scores, scores_path, part=shards)
    ids = set(index["image_id"])
    entries = _mask_entries(masks, [i for i in dict.fromkeys(cache.index["image_id"]) if i in ids])
    gts, jobs = {}, []
    for k in cache.shard_numbers():
        sub = cache.index[cache.index["shard"] == k]
        for iid in dict.fromkeys(sub["image_id"]):
            gts[iid] = _gt_record(index, iid, cache.index_path)
        rows = list(sub[["image_id", "row", "slot", "class_id", "role"]].itertuples(index=False, name=None))
        cache.load_shard(k)  # validates the shard against the index (NaN, negatives, row/slot/class)
        shard_ids = list(dict.fromkeys(sub["image_id"]))
        jobs.append((str(cam_dir), k, rows, {i: gts[i] for i in shard_ids},
                     {i: scores[i] for i in shard_ids} if scores is not None else None,
                     settings, {i: entries[i] for i in shard_ids} if entries is not None else None))
    if shards is None and len(ids) != len(gts):
        raise InputError(cache.index_path, "the cache does not cover the test index")
    evaluator = Evaluator(settings)
    pxap_states = []
    if threads > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=threads) as pool:
            outputs = list(pool.map(_evaluate_shard, jobs))
    else:
        outputs = [_evaluate_shard(job) for job in jobs]
    for results, pxap_state in outputs:
        for r in results:
            evaluator.add_result(r)
        if pxap_state is not None:
            pxap_states.append(pxap_state)
    evaluator.pxap_state = dict(merge_pxap_states(pxap_states), masks=str(masks.listing)) if pxap_states else None
    order = {iid: i for i, iid in enumerate(index["image_id"])}
    evaluator.results.sort(key=lambda r: order[r.image_id])
    return evaluator


def _fixed_box_result(iid, label, gt_tscam, gt_wsol, box_t, box_w, top5, n_thr, n_ts):
    """The result of one box used at every threshold (the full-image baseline); its map is every class's."""
    iou, iou_w = best_iou(box_t, gt_tscam), best_iou(box_w, gt_wsol)
    res = ImageResult(iid, label, None, None, None, list(box_t), iou, iou >= 0.5, None, None, None, None, None,
                      np.full(n_ts, iou, np.float64), np.full(n_thr, iou_w, np.float64), np.full(n_thr, iou_w, np.float64))
    return score_classes(res, top5, (box_t, iou), gt_tscam) if top5 is not None else res


def evaluate_baselines(index_path, settings, scores_path=None, cam_size=64, masks=None):
    """Score the two map-free baselines over the test index; return {name: Evaluator}.

    ``center``: the centre-Gaussian map (Choe et al.; sigma = size/4) put through both protocols
    exactly like a CAM, so the sweep picks the best centred box. ``full``: the box covering the whole
    frame, [0, 0, F − 1, F − 1], at every threshold. With scores, Top-1/Top-5 Loc use the classifier.
    With masks (a :class:`~.pxap.MaskSource`) each evaluator's ``pxap_state`` holds PxAP counts:
    ``center`` for the Gaussian map, ``full`` for a constant map (every pixel scores the same, so its
    PxAP is the share of positive pixels).
    """
    index = load_test_index(index_path)
    scores = read_top5(scores_path) if scores_path else None
    center_map = center_gaussian_cam(cam_size)
    out = {"center": Evaluator(settings), "full": Evaluator(settings)}
    n_thr = len(settings.thresholds)
    entries = _mask_entries(masks, list(index["image_id"]))
    pxap = None
    if entries is not None:
        pxap = {k: PxapAccumulator(settings.thresholds, settings.wsol_frame) for k in out}
        center_scores = wsol_scoremap(center_map, settings.wsol_frame)
        flat_scores = wsol_scoremap(np.ones((cam_size, cam_size)), settings.wsol_frame)
    for iid, label, w, h, boxes in index[["image_id", "label", "width", "height", "boxes"]].itertuples(index=False):
        gt = np.asarray([list(b) for b in boxes], dtype=np.float64)
        top5 = scores.get(iid) if scores is not None else None
        if pxap is not None:
            positive, negative = load_gt_mask(entries[iid], settings.wsol_frame, (int(w), int(h)))
            pxap["center"].add_scoremap(center_scores, positive, negative)
            pxap["full"].add_scoremap(flat_scores, positive, negative)
        out["center"].accumulate(ImageInput(iid, int(label), int(w), int(h), gt,
                                            {"gt": (int(label), center_map)}, top5))
        out["full"].add_result(_fixed_box_result(
            iid, int(label), scale_boxes_tscam(gt, w, h, settings.frame), scale_boxes_wsol(gt, w, h, settings.wsol_frame),
            full_image_box(settings.frame), full_image_box(settings.wsol_frame), top5, n_thr,
            len(settings.tscam_thresholds)))
    for name, ev in out.items():
        ev.pxap_state = dict(pxap[name].state(), masks=str(masks.listing)) if pxap is not None else None
    return out


def results_table(results):
    """Per-image results as a pyarrow Table (one row per image; boxes in the TS-CAM frame, x1y1x2y2 inclusive).

    IoUs are stored as float64, as computed, so a row re-thresholded at δ decides ties (IoU = δ) as the
    summary did."""
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
        "tscam_ious": pa.array([r.tscam_ious.tolist() for r in results], pa.list_(pa.float64())),
        "wsol_v1_ious": pa.array([r.wsol_v1.tolist() for r in results], pa.list_(pa.float64())),
        "wsol_v2_ious": pa.array([r.wsol_v2.tolist() for r in results], pa.list_(pa.float64())),
    })


def write_evaluation(evaluator, per_image_path, summary_path, meta=None):
    """Write the per-image parquet and the summary JSON (atomically); return the summary dict.

    The summary's ``pxap`` is the PxAP summary of the evaluator's ``pxap_state`` (see
    :func:`evaluate_cache`), None when no masks were given."""
    summary = dict(meta or {})
    summary.update(evaluator.compute())
    summary["pxap"] = _pxap_summary(getattr(evaluator, "pxap_state", None))
    with atomic_path(per_image_path) as tmp:
        pq.write_table(results_table(evaluator.results), tmp)
    write_text_atomic(summary_path, json.dumps(summary, indent=1) + "\n")
    return summary


def run_evaluate(cams, index, settings, per_image, summary, scores=None, threads=1, meta=None, masks=None):
    """Evaluate a CAM cache folder and write both outputs; return the summary dict.

    masks: a :class:`~.pxap.MaskSource` → the summary's ``pxap`` (else None)."""
    evaluator = evaluate_cache(cams, index, settings, scores_path=scores, threads=threads, masks=masks)
    meta = dict(meta or {})
    meta.setdefault("cams", str(cams))
    meta.setdefault("scores", str(scores) if scores else None)
    return write_evaluation(evaluator, per_image, summary, meta)


def run_evaluate_part(cams, index, settings, shards, per_image, state, scores=None, threads=1, masks=None):
    """Evaluate the CAM shards ``shards`` of a cache: write a partial per-image parquet and the
    accumulator state JSON (integer counts, :func:`~.evaluator.state_from_results`; with masks also
    the PxAP counts under "pxap", else null). Returns the state."""
    evaluator = evaluate_cache(cams, index, settings, scores_path=scores, threads=threads, shards=list(shards),
                               masks=masks)
    st = {"shards": [int(k) for k in shards], "state": evaluator.state(), "pxap": evaluator.pxap_state}
    with atomic_path(per_image) as tmp:
        pq.write_table(results_table(evaluator.results), tmp)
    write_text_atomic(state, json.dumps(st) + "\n")
    return st


def _read_state(path):
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return data["shards"], data["state"], data.get("pxap")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"cannot read evaluation state ({exc}); re-run rule evaluate_shard") from exc


def merge_evaluation(parts, states, index, settings, per_image, summary, meta=None):
    """Merge evaluation parts into the per-image parquet (test-index order) and the summary JSON.

    parts / states: per-part parquet and state JSON paths (same order). Every test image must occur
    in exactly one part. The numbers equal a single-job :func:`run_evaluate` (same per-image rows,
    summary from the summed integer counts). Returns the summary dict.
    """
    if len(parts) != len(states) or not parts:
        raise InputError("<merge>", f"{len(parts)} part tables but {len(states)} state files; give one of each per part")
    order = {iid: i for i, iid in enumerate(load_test_index(index)["image_id"])}
    tables, loaded, pxap_states, seen = [], [], [], {}
    for part, st in zip(parts, states):
        table = pq.read_table(part)
        for iid in table.column("image_id").to_pylist():
            if iid not in order:
                raise InputError(part, f"image {iid!r} is not in the test index {index}; the part belongs to another dataset")
            if iid in seen:
                raise InputError(part, f"image {iid!r} was also evaluated in {seen[iid]}; the parts overlap")
            seen[iid] = str(part)
        tables.append(table)
        _, counts, pxap_state = _read_state(st)
        loaded.append(counts)
        pxap_states.append(pxap_state)
    missing = [i for i in order if i not in seen]
    if missing:
        raise InputError(index, f"{len(missing)} test images are in no evaluation part (first: {missing[0]!r}); "
                                "re-run the evaluation for this variant")
    merged = pa.concat_tables(tables)
    pos = np.array([order[i] for i in merged.column("image_id").to_pylist()], dtype=np.int64)
    merged = merged.take(pa.array(np.argsort(pos, kind="stable")))
    out = dict(meta or {})
    out.update(summary_from_state(merge_states(loaded), settings))
    if any(p is None for p in pxap_states) and any(p is not None for p in pxap_states):
        raise InputError(states[[p is None for p in pxap_states].index(True)],
                         "this part has no PxAP counts but others have; re-run rule evaluate_shard for every part")
    try:
        out["pxap"] = _pxap_summary(merge_pxap_states(pxap_states) if pxap_states[0] is not None else None)
    except ValueError as exc:
        raise InputError("<merge>", f"{exc}; re-run rule evaluate_shard for every part") from None
    with atomic_path(per_image) as tmp:
        pq.write_table(merged, tmp)
    write_text_atomic(summary, json.dumps(out, indent=1) + "\n")
    return out


def run_baselines(index, settings, out_dir, scores=None, meta=None, masks=None):
    """Score the baselines; write ``<out_dir>/<name>/{per_image.parquet,summary.json}``; return summaries."""
    out = {}
    for name, ev in evaluate_baselines(index, settings, scores_path=scores, masks=masks).items():
        m = dict(meta or {}, baseline=name)
        out[name] = write_evaluation(ev, Path(out_dir) / name / "per_image.parquet",
                                     Path(out_dir) / name / "summary.json", m)
    return out


def _settings_from_args(args):
    """The settings of the command line, read as the config's ``evaluation`` section would be."""
    sweeps = {key: dict(zip(("start", "stop", "step"), getattr(args, key))) for key in ("sweep", "tscam_sweep")}
    return settings_from_params({"frame": args.frame, "wsol_frame": args.wsol_frame, **sweeps,
                                 "iou_thresholds": args.iou_thresholds, "protocols": args.protocols}, args.cam_thr)


def _meta_from_args(args):
    return {k: v for k, v in (("dataset", args.dataset), ("run", args.run), ("variant", args.variant),
                              ("mode", args.mode), ("ratio", args.ratio)) if v is not None}


def _names_from_paths(args):
    """Fill the names a summary records (and `genpromp tables` needs) from the workflow's layout when
    not given (:func:`genpromp.layout.parse_results_path`): the dataset from --index (else --cams), the
    run, variant, mode and ratio from a CAM cache folder --cams. Baseline summaries need a dataset:
    without one (given or read from the path) this is an error."""
    cams = layout.parse_results_path(args.cams) if args.cams and not args.baselines else {}
    if args.dataset is None:
        args.dataset = layout.parse_results_path(args.index).get("dataset") or cams.get("dataset")
    if "variant" in cams:
        variant = layout.Variant.parse(cams["variant"])
        args.variant = args.variant or cams["variant"]
        args.run = args.run or cams["run"]
        args.mode = args.mode or variant.mode
        args.ratio = variant.ratio if args.ratio is None else args.ratio
    if args.baselines and args.dataset is None:
        raise InputError("<command line>", f"--baselines needs --dataset NAME (recorded in the baseline summaries, "
                                           f"which `genpromp tables` groups by dataset); it cannot be read from "
                                           f"--index {args.index}, which is not <results>/<dataset>/index/test.parquet")


def _cli(args):
    settings = _settings_from_args(args)
    _names_from_paths(args)
    meta = _meta_from_args(args)
    if args.mask_root and not args.masks:
        raise InputError("<command line>", "--mask-root needs --masks")
    masks = MaskSource(Path(args.masks), Path(args.mask_root) if args.mask_root else None) if args.masks else None
    if args.baselines:
        run_baselines(args.index, settings, args.baselines, scores=args.scores, meta=meta, masks=masks)
        return
    if args.shards is not None:
        if not (args.cams and args.per_image and args.state):
            raise InputError("<command line>", "--shards needs --cams, --per-image and --state")
        run_evaluate_part(args.cams, args.index, settings, args.shards, args.per_image, args.state,
                          scores=args.scores, threads=args.threads, masks=masks)
        return
    if not (args.cams and args.per_image and args.summary):
        raise InputError("<command line>", "--cams, --per-image and --summary are required (or use --baselines DIR)")
    s = run_evaluate(args.cams, args.index, settings, args.per_image, args.summary, scores=args.scores,
                     threads=args.threads, meta=meta, masks=masks)
    log.info("evaluated %d images: GT-known %.2f%%", s["n_images"], s["tscam"]["gt_known"])


def _merge_cli(args):
    merge_evaluation(args.parts, args.states, args.index, _settings_from_args(args), args.per_image, args.summary,
                     meta=_meta_from_args(args))


def _cam_thr_option(p):
    """--cam-thr, defaulting to the schema's datasets.<d>.cam_thr default (required when it has none)."""
    try:
        default = float(schema_default("datasets.*.cam_thr"))
    except ConfigError:
        default = None
    p.add_argument("--cam-thr", type=float, default=default, required=default is None,
                   help="TS-CAM threshold (config datasets.<d>.cam_thr" + ("" if default is None else
                        f"; default {default:g}, the config's") + "; CUB 0.23, ImageNet 0.25)")


def _add_settings_options(p):
    """The protocol options; their defaults are the config schema's (evaluation.*)."""
    _cam_thr_option(p)
    ev = schema_default("evaluation")
    p.add_argument("--frame", type=int, default=ev["frame"], help="TS-CAM evaluation frame (evaluation.frame)")
    p.add_argument("--wsol-frame", type=int, default=ev["wsol_frame"], help="wsolevaluation frame (evaluation.wsol_frame)")
    for key, what in (("sweep", "wsolevaluation threshold sweep for MaxBoxAcc/V2"),
                      ("tscam_sweep", "TS-CAM-protocol threshold curve (the Loc numbers at --cam-thr are computed "
                                      "exactly whatever this is)")):
        p.add_argument(f"--{key.replace('_', '-')}", type=float, nargs=3, metavar=("START", "STOP", "STEP"),
                       default=[ev[key][k] for k in ("start", "stop", "step")],
                       help=f"{what}: np.arange(START, STOP, STEP) (evaluation.{key})")
    p.add_argument("--iou-thresholds", type=float, nargs="+", default=ev["iou_thresholds"],
                   help="IoU thresholds δ of MaxBoxAccV2 (evaluation.iou_thresholds)")
    p.add_argument("--protocols", nargs="+", default=ev["protocols"],
                   choices=schema_entry("evaluation.protocols")["items"]["enum"],
                   help="which threshold sweeps to run (evaluation.protocols; the cam_thr point metrics always run)")
    p.add_argument("--dataset", default=None, help="dataset name recorded in the summary")
    p.add_argument("--run", default=None, help="run name recorded in the summary")
    p.add_argument("--variant", default=None, help="variant name recorded in the summary")
    p.add_argument("--mode", default=None, choices=layout.MODES, help="CAM mode recorded in the summary")
    p.add_argument("--ratio", type=float, default=None, help="combine ratio w recorded in the summary")


def register_cli(subparsers):
    p = subparsers.add_parser(
        "evaluate", help="score a CAM cache (TS-CAM protocol + wsolevaluation MaxBoxAccV2)",
        description="Score a CAM cache folder (docs/FORMATS.md) against the test index: Top-1/Top-5/GT-known "
                    "Loc at --cam-thr, the threshold sweeps of both protocols, MaxBoxAcc(V2), and with --masks PxAP "
                    "(wsolevaluation's pixel average precision). Writes a per-image "
                    "parquet and a summary JSON. With --shards, scores only those CAM shards and writes a partial "
                    "per-image parquet plus --state (merge with `genpromp evaluate-merge`). With --baselines DIR, "
                    "scores the centre-Gaussian and full-image baselines instead (no CAMs needed).")
    p.add_argument("--cams", help="CAM cache folder (shard-*.npz + index.parquet)")
    p.add_argument("--index", required=True, help="test index parquet (results/<dataset>/index/test.parquet)")
    p.add_argument("--scores", default=None, help="classifier scores parquet; needed for Top-1/Top-5 Loc, Cls "
                                                  "and the error breakdown (omit for GT-known only)")
    p.add_argument("--per-image", help="output per-image parquet (partial with --shards)")
    p.add_argument("--summary", help="output summary JSON (not with --shards)")
    p.add_argument("--shards", type=int, nargs="+", default=None, metavar="K",
                   help="evaluate only these CAM shard numbers (one evaluation part); needs --state")
    p.add_argument("--state", default=None, help="output accumulator state JSON of the part (with --shards)")
    p.add_argument("--baselines", default=None, metavar="DIR", help="score the baselines into DIR/{center,full}/")
    p.add_argument("--threads", type=int, default=1, help="worker processes (one CAM shard per task)")
    p.add_argument("--masks", default=None, metavar="LISTING",
                   help="mask listing (lines image_path,mask_path,ignore_path; docs/FORMATS.md): also compute "
                        "PxAP (config datasets.<d>.masks.listing)")
    p.add_argument("--mask-root", default=None, metavar="DIR",
                   help="folder the listing's mask paths are relative to (default: the listing's folder; "
                        "datasets.<d>.masks.root)")
    _add_settings_options(p)
    p.set_defaults(func=_cli)
    m = subparsers.add_parser(
        "evaluate-merge", help="merge evaluation parts into per_image.parquet + summary.json",
        description="Merge the partial per-image parquets and state JSONs written by `genpromp evaluate --shards` "
                    "into one per-image parquet (test-index order) and the summary JSON; the numbers equal a "
                    "single `genpromp evaluate` run. Every test image must be in exactly one part. The settings "
                    "options must match the ones the parts were computed with.")
    m.add_argument("--parts", nargs="+", required=True, help="partial per-image parquets")
    m.add_argument("--states", nargs="+", required=True, help="state JSONs, in the same order as --parts")
    m.add_argument("--index", required=True, help="test index parquet (results/<dataset>/index/test.parquet)")
    m.add_argument("--per-image", required=True, help="output per-image parquet")
    m.add_argument("--summary", required=True, help="output summary JSON")
    _add_settings_options(m)
    m.set_defaults(func=_merge_cli)
