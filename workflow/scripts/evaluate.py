"""Snakemake script for rules `evaluate_shard` (one part of a CAM cache), `merge_eval`, `evaluate_baselines` and
`evaluate_heldout` (the held-out calibration images' CAM cache, in one job)."""

import logging
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

from genpromp.evaluation.evaluate import (  # noqa: E402
    merge_evaluation, run_baselines, run_evaluate, run_evaluate_part, settings_from_params,
)
from genpromp.evaluation.pxap import mask_source_from_config  # noqa: E402

sm = snakemake  # noqa: F821
settings = settings_from_params(sm.params.evaluation, sm.params.cam_thr)
scores = sm.input.get("scores") or None
scores = scores if isinstance(scores, str) else None
masks = mask_source_from_config(sm.params.get("masks"))

if sm.rule == "evaluate_baselines":
    run_baselines(sm.input.index, settings, Path(sm.output.center).parent.parent, scores=scores,
                  meta={"dataset": sm.wildcards.dataset}, masks=masks)
elif sm.rule == "evaluate_shard":
    st = run_evaluate_part(Path(sm.input.cams).parent, sm.input.index, settings, sm.params.shards,
                           sm.output.per_image, sm.output.state, scores=scores, threads=sm.threads, masks=masks)
    logging.info("part %s: CAM shards %s, %d images", sm.wildcards.part, st["shards"], st["state"]["n_images"])
elif sm.rule == "evaluate_heldout":
    s = run_evaluate(Path(sm.input.cams).parent, sm.input.index, settings, sm.output.per_image, sm.output.summary,
                     threads=sm.threads, meta=dict(sm.params.meta))
    logging.info("held-out: %d images, GT-known %.2f%% at cam_thr", s["n_images"], s["tscam"]["gt_known"])
else:
    s = merge_evaluation(list(sm.input.parts), list(sm.input.states), sm.input.index, settings,
                         sm.output.per_image, sm.output.summary, meta=dict(sm.params.meta))
    logging.info("merged %d parts, %d images: GT-known %.2f%%", len(sm.input.parts), s["n_images"], s["tscam"]["gt_known"])
    if s.get("pxap"):
        logging.info("PxAP %.2f%%", s["pxap"]["pxap"])
