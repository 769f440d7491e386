"""Reproducibility on CPU: the same config and seed give bit-identical CAM caches, evaluations and
tables; the batch size and the CAM / evaluation shard sizes change no number.

Reuses the micro reference run (workdir A, fixture ``micro_reference`` of
tests/test_resume_workflow.py) and copies its trained artifacts (``resources/`` with the pretrained
model, ``results/<ds>/{index,scores,tokens,unet}``; mtimes kept, so Snakemake reruns none of the
training, which a dry run checks) into a fresh workdir, where only the CAM, evaluation and table
stages run. Training-stage determinism (tokens and UNet bit-identical from the same seed) is checked
by tests/test_resume_workflow.py, whose resumed run B is compared with A file by file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from test_resume_workflow import (CAMS, DATASET, EVAL, MICRO, RUN, VARIANT, assert_same_file,  # noqa: F401
                                  assert_same_outputs, comparable_files, micro_reference, new_workdir, run_workflow)
from genpromp import layout
from workflow_utils import planned_jobs, run_snakemake

TRAINED = [f"results/{DATASET}/{name}" for name in ("index", "scores", "tokens", "unet", "unet.log.csv")]
TRAINING_RULES = ("assets", "pretrain_tiny", "demo_world", "index", "train_token", "merge_tokens", "train_unet",
                  "classifier", "import_scores")


def workdir_with_trained(a, path, extra=()):
    """A fresh workdir holding A's resources/ and trained artifacts (plus ``extra`` paths), mtimes kept."""
    d = new_workdir(path, resources_from=a)
    for rel in (*TRAINED, *extra):
        src, dst = Path(a) / rel, d / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    return d


def assert_plan_skips_training(workdir, configfile=MICRO):
    """A dry run plans the CAM / evaluation jobs but none of the copied training stages."""
    plan = run_snakemake(workdir, "-n", configfile=configfile, check=False)
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = planned_jobs(plan.stdout)
    assert "extract_cams" in jobs and "merge_eval" in jobs, plan.stdout[-3000:]
    rerun = sorted(set(jobs) & set(TRAINING_RULES))
    assert not rerun, f"the copied trained artifacts would be recomputed: {rerun}\n{plan.stdout[-3000:]}"


def cam_maps(workdir):
    """{(image_id, role): (class_id, float16 map)} over all shards of the variant's CAM cache."""
    folder = Path(workdir) / CAMS
    index = pd.read_parquet(folder / "index.parquet")
    shards = {}
    out = {}
    for iid, shard, row, slot, cid, role in index[["image_id", "shard", "row", "slot", "class_id", "role"]].itertuples(
            index=False):
        if shard not in shards:
            with np.load(folder / f"shard-{shard:05d}.npz", allow_pickle=False) as data:
                shards[shard] = {k: data[k] for k in data.files}
        arrays = shards[shard]
        assert arrays["image_ids"][row] == iid and arrays["class_ids"][row, slot] == cid
        out[(iid, role)] = (int(cid), arrays["cams"][row, slot])
    return out, len(shards)


@pytest.mark.slow
def test_same_config_and_seed_is_bit_identical(micro_reference, tmp_path):
    """Second workdir, same config and seed: embeddings, CAM shards, cache index, evaluation parts,
    summaries, baselines and tables are byte-for-byte (array-for-array) equal to run A's."""
    a = micro_reference
    c = workdir_with_trained(a, tmp_path / "C")
    assert_plan_skips_training(c)
    run_workflow(c)
    compared = assert_same_outputs(a, c)
    for rel in (layout.embeddings(DATASET, "trained"), f"{CAMS}/shard-00002.npz", f"{CAMS}/index.parquet",
                f"{EVAL}/summary.json", f"{EVAL}/parts/part-00001.json", "results/tables/main.csv"):
        assert rel in compared


SIZE_VARIANTS = {
    # one CAM shard of all 8 images, batches of 1, one evaluation part
    "batch1-one-shard": {"test": {"batch_size": 1, "shard_size": 8}, "evaluation": {"shard_size": 100}},
    # batches of 3 across 4 CAM shards of 2 images; evaluation parts of 2 CAM shards
    "batch3-four-shards": {"test": {"batch_size": 3, "shard_size": 2}, "evaluation": {"shard_size": 4}},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SIZE_VARIANTS))
def test_batch_and_shard_sizes_change_no_number(micro_reference, tmp_path, name):
    a = micro_reference
    config = yaml.safe_load(MICRO.read_text())
    for section, values in SIZE_VARIANTS[name].items():
        config[section].update(values)
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    d = workdir_with_trained(a, tmp_path / "D", extra=[layout.embeddings(DATASET, "trained")])
    assert_plan_skips_training(d, configfile)
    run_workflow(d, configfile=configfile)

    maps_a, n_a = cam_maps(a)
    maps_d, n_d = cam_maps(d)
    expected_shards = -(-8 // config["test"]["shard_size"])
    assert (n_a, n_d) == (3, expected_shards)
    assert maps_a.keys() == maps_d.keys()
    worst = 0.0
    for key, (cid, cam) in maps_a.items():
        cid_d, cam_d = maps_d[key]
        assert cid == cid_d and cam.dtype == cam_d.dtype == np.float16, key
        worst = max(worst, float(np.abs(cam.astype(np.float64) - cam_d.astype(np.float64)).max()))
    # The noise is per image, so the maps agree across layouts up to fp32 last-bit differences of
    # batched CPU kernels (a batch of 1 and a batch of 3 take different BLAS paths); stored as float16,
    # such a difference can round to the neighbouring float16 value: at most one float16 step.
    fp16_step = float(np.finfo(np.float16).eps)  # 2**-10: one step for values in [1, 2); maps are <= 1
    assert worst <= fp16_step / 2 + 1e-12, f"CAM maps differ by up to {worst:g} between batch/shard layouts"

    # every number downstream is the same: per-image results, summaries, baselines, tables
    same = [f"{EVAL}/per_image.parquet", f"{EVAL}/summary.json"]
    same += [rel for rel in comparable_files(a)
             if rel.startswith(("results/tables/", f"results/{DATASET}/baselines/"))]
    assert_same_outputs(a, d, same)
    n_parts = len(list((d / EVAL / "parts").glob("part-*.json")))
    planned = [json.loads(p.read_text())["shards"] for p in sorted((d / EVAL / "parts").glob("part-*.json"))]
    assert sum(len(p) for p in planned) == expected_shards and n_parts == len(planned)
    assert pq.read_table(d / EVAL / "per_image.parquet").num_rows == 8
