"""Snakemake script for rules `evaluate` (one CAM cache) and `evaluate_baselines` (no CAMs)."""

import logging
import re
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from genpromp.evaluation.evaluate import run_baselines, run_evaluate  # noqa: E402
from genpromp.evaluation.evaluator import EvalSettings  # noqa: E402
from genpromp.evaluation.metrics import threshold_list  # noqa: E402

sm = snakemake  # noqa: F821
ev = sm.params.evaluation
settings = EvalSettings(cam_thr=float(sm.params.cam_thr), frame=ev["frame"], wsol_frame=ev["wsol_frame"],
                        thresholds=tuple(threshold_list(ev["sweep"]["start"], ev["sweep"]["stop"], ev["sweep"]["step"]).tolist()),
                        iou_thresholds=tuple(ev["iou_thresholds"]), protocols=tuple(ev["protocols"]))
scores = sm.input.get("scores") or None
scores = scores if isinstance(scores, str) else None

if sm.rule == "evaluate_baselines":
    run_baselines(sm.input.index, settings, Path(sm.output.center).parent.parent, scores=scores,
                  meta={"dataset": sm.wildcards.dataset})
else:
    variant = sm.wildcards.variant
    match = re.match(r"^(gtk|top1|top5)_w([0-9.]+)_t", variant)
    meta = {"dataset": sm.wildcards.dataset, "run": sm.wildcards.run, "variant": variant,
            "mode": match.group(1) if match else None, "ratio": float(match.group(2)) if match else None}
    run_evaluate(Path(sm.input.cams).parent, sm.input.index, settings, sm.output.per_image, sm.output.summary,
                 scores=scores, threads=sm.threads, meta=meta)
