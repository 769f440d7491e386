"""Rules evaluate_shard + merge_eval (workflow/rules/evaluate.smk) on a tiny cache: parts follow the
index checkpoint and the merged numbers equal the single-job evaluation."""

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from genpromp.evaluation.evaluate import run_evaluate, settings_from_params
from genpromp.evaluation.pxap import MaskSource

from eval_fixtures import write_dataset
from workflow_utils import run_snakemake

ROOT = Path(__file__).resolve().parents[1]
VARIANT = "top1_w0.60_t0-99"
EVALUATION = {"protocols": ["tscam", "wsol"], "frame": 96, "wsol_frame": 64,
              "sweep": {"start": 0.0, "stop": 1.0, "step": 0.05},
              "tscam_sweep": {"start": 0.0, "stop": 1.0, "step": 0.1},
              "iou_thresholds": [0.3, 0.5, 0.7], "shard_size": 4}

SNAKEFILE = f'''
wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    run=r"[A-Za-z0-9_]+",
    variant=r"(gtk|top1|top5)_w[0-9.]+_t[0-9-]+",

checkpoint index:
    input: "src/test.parquet"
    output: test="results/demo/index/test.parquet"
    shell: "cp {{input}} {{output.test}}"

include: "{ROOT}/workflow/rules/evaluate.smk"
'''


def _write_box_masks(index_path, folder):
    """One mask per GT box (the box filled) for every test image; return the listing path."""
    lines = []
    for iid, w, h, boxes in pq.read_table(index_path).to_pandas()[["image_id", "width", "height", "boxes"]].itertuples(
            index=False):
        for j, b in enumerate(boxes):
            m = np.zeros((h, w), np.uint8)
            m[int(b[1]):int(b[3]), int(b[0]):int(b[2])] = 255
            (folder / iid).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{iid}_m{j}.png"), m)
            lines.append(f"{iid}.jpg,{iid}_m{j}.png,\n")
    (folder / "localization.txt").write_text("".join(lines))
    return folder / "localization.txt"


@pytest.mark.slow
def test_sharded_rules_equal_single_job(tmp_path):
    (tmp_path / "src").mkdir()
    d = write_dataset(tmp_path / "src", n=10, mode="top1", shard_size=2)  # 5 CAM shards of 2 images
    cams = tmp_path / "results/demo/run1/cams" / VARIANT
    cams.parent.mkdir(parents=True)
    d["cams"].rename(cams)
    (tmp_path / "results/demo/scores").mkdir(parents=True)
    d["scores"].rename(tmp_path / "results/demo/scores/democls.parquet")
    listing = _write_box_masks(tmp_path / "src/test.parquet", tmp_path / "masks")
    config = {"datasets": {"demo": {"cam_thr": 0.23, "classifier": {"name": "democls"},
                                    "masks": {"listing": "masks/localization.txt", "root": None}}},
              "test": {"shard_size": 2}, "evaluation": EVALUATION}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    target = f"results/demo/run1/eval/{VARIANT}/summary.json"
    proc = run_snakemake(tmp_path, target, "--quiet", "rules", snakefile=tmp_path / "Snakefile",
                         configfile=tmp_path / "config.yaml", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = sorted((tmp_path / f"results/demo/run1/eval/{VARIANT}/parts").glob("part-*.json"))
    # evaluation.shard_size 4 / test.shard_size 2 → 2 CAM shards per part → 3 parts
    assert [p.name for p in parts] == ["part-00000.json", "part-00001.json", "part-00002.json"]
    assert [json.loads(p.read_text())["shards"] for p in parts] == [[0, 1], [2, 3], [4]]
    for p in parts:
        assert (tmp_path / f"logs/evaluate/demo/run1/{VARIANT}/{p.stem}.bench.tsv").is_file()
    merged = json.loads((tmp_path / target).read_text())
    settings = settings_from_params(EVALUATION, 0.23)
    single = run_evaluate(cams, tmp_path / "src/test.parquet", settings, tmp_path / "one.parquet", tmp_path / "one.json",
                          scores=tmp_path / "results/demo/scores/democls.parquet", masks=MaskSource(listing))
    assert merged["variant"] == VARIANT and merged["mode"] == "top1" and merged["ratio"] == 0.6
    assert merged["pxap"]["n_images"] == 10 and merged["pxap"]["masks"] == "masks/localization.txt"
    assert merged["pxap"]["pxap"] == single["pxap"]["pxap"] and merged["pxap"]["recall"] == single["pxap"]["recall"]
    for key in ("n_images", "thresholds", "tscam", "wsol"):
        assert merged[key] == json.loads(json.dumps(single[key]))
    assert pq.read_table(tmp_path / f"results/demo/run1/eval/{VARIANT}/per_image.parquet").equals(
        pq.read_table(tmp_path / "one.parquet"))


REPORT_SNAKEFILE = f'''
EVAL_META = {{f"results/cub_demo/genpromp/eval/top1_w{{w}}_t0-99/summary.json":
             dict(dataset="cub_demo", run="genpromp", variant=f"top1_w{{w}}_t0-99", mode="top1", ratio=float(w))
             for w in ("0.40", "0.60")}}
def eval_summaries(): return [list(EVAL_META)[1]]
def ablation_summaries(): return list(EVAL_META)
include: "{ROOT}/workflow/rules/tables.smk"

rule overlays_standin:  # the output pattern of cams.smk's rule overlays
    output:
        report(directory("results/{{dataset}}/{{run}}/cams/{{variant}}/overlays"), patterns=["{{name}}.png"],
               caption="{ROOT}/workflow/report/overlays.rst", category="Overlays", subcategory="{{dataset}} {{run}} {{variant}}")
    run:
        import os, numpy as np, cv2
        os.makedirs(output[0])
        for i in range(2):
            cv2.imwrite(f"{{output[0]}}/c0__img_{{i}}.png", np.full((8, 8, 3), 90 * i, np.uint8))
        open(f"{{output[0]}}/index.html", "w").write("<p>overlays</p>")

rule all:
    input: "results/tables/main.md", "results/cub_demo/genpromp/cams/top1_w0.60_t0-99/overlays"
    default_target: True
'''


@pytest.mark.slow
def test_tables_rule_and_report(tmp_path):
    import numpy as np
    from genpromp.evaluation.evaluate import evaluate_baselines, evaluate_cache, write_evaluation
    from genpromp.evaluation.evaluator import EvalSettings
    settings = EvalSettings(frame=96, wsol_frame=64, thresholds=tuple(np.arange(0, 1, 0.1).tolist()))
    (tmp_path / "src").mkdir()
    d = write_dataset(tmp_path / "src", n=6, mode="top1", shard_size=3)
    ev = evaluate_cache(d["cams"], d["index"], settings, scores_path=d["scores"])
    for w in ("0.40", "0.60"):
        p = tmp_path / f"results/cub_demo/genpromp/eval/top1_w{w}_t0-99/summary.json"
        write_evaluation(ev, p.with_name("per_image.parquet"), p)
    for name, bev in evaluate_baselines(d["index"], settings).items():
        p = tmp_path / f"results/cub_demo/baselines/{name}/summary.json"
        write_evaluation(bev, p.with_name("per_image.parquet"), p, {"dataset": "cub_demo", "baseline": name})
    (tmp_path / "Snakefile").write_text(REPORT_SNAKEFILE)
    for args, cores in (([], 1), (["--report", "results/report.html"], None)):
        proc = run_snakemake(tmp_path, *args, snakefile=tmp_path / "Snakefile", cores=cores, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
    html = (tmp_path / "results/report.html").read_text(errors="replace")
    for name in ("main.md", "combine_ratio.png", "threshold_curve.png", "pr_curve.png", "error_breakdown.md",
                 "paired.md", "c0__img_1.png"):
        assert name in html
