"""The Snakemake workflow: lint, dry runs of the shipped configs, and a real run of the data stages."""

import json
from pathlib import Path

import pandas as pd
import pytest

from workflow_utils import REPO, prepare_workdir, run_snakemake


def test_lint_is_clean(tmp_path):
    proc = run_snakemake(prepare_workdir(tmp_path), "--lint", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "Lints for rule" not in text and "Lints for snakefile" not in text, text[-4000:]


@pytest.mark.parametrize("configfile", [None, "config/cub.yaml", "config/imagenet.yaml"])
def test_dry_run(tmp_path, configfile):
    workdir = prepare_workdir(tmp_path)
    args = ["-n", "--quiet", "rules"]
    if configfile:
        # real-data configs: the data does not exist here, so only the plan up to the index is checked
        proc = run_snakemake(workdir, *args, configfile=REPO / configfile, check=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "MissingInputException" in text, text[-3000:]
        assert "ckpts/classifications/" in text, "the plan reads the user's classifier file"
    else:
        proc = run_snakemake(workdir, *args)
        # stages behind the index checkpoint are planned once the index exists
        for rule in ["assets", "demo_world", "index", "classifier", "import_scores", "evaluate_baselines", "tables"]:
            assert rule in proc.stdout, proc.stdout[-3000:]
        assert "checkpoint jobs" in proc.stdout


def test_unknown_config_key_stops_before_any_rule(tmp_path):
    workdir = prepare_workdir(tmp_path)
    proc = run_snakemake(workdir, "-n", "--config", "test={'combne_ratio': 0.5}", check=False)
    assert proc.returncode != 0
    assert "test.combne_ratio" in proc.stdout + proc.stderr


def test_data_stages_run(tmp_path):
    """Demo world -> index checkpoint -> classifier -> score import, for both layouts."""
    workdir = prepare_workdir(tmp_path)
    targets = [f"results/{d}/{f}" for d in ("cub_demo", "imagenet_demo")
               for f in ("index/test.parquet", "index/classes.parquet", "scores/democls.parquet")]
    run_snakemake(workdir, *targets, configfile=REPO / "tests/configs/tiny.yaml")
    for d in ("cub_demo", "imagenet_demo"):
        test = pd.read_parquet(workdir / f"results/{d}/index/test.parquet")
        scores = pd.read_parquet(workdir / f"results/{d}/scores/democls.parquet")
        classes = pd.read_parquet(workdir / f"results/{d}/index/classes.parquet")
        assert set(scores["image_id"]) == set(test["image_id"])
        assert all(len(s) == len(classes) for s in scores["scores"])
        assert all(len(b) >= 1 for b in test["boxes"])
    imnet = pd.read_parquet(workdir / "results/imagenet_demo/index/classes.parquet")
    assert imnet["wnid"].iloc[0] == "n01440764"
    # a second run has nothing to do, also when only evaluation settings changed
    proc = run_snakemake(workdir, *targets, "-n", configfile=REPO / "tests/configs/tiny.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    proc = run_snakemake(workdir, *targets, "-n", "--config", "datasets={'cub_demo': {'cam_thr': 0.4}}",
                         configfile=REPO / "tests/configs/tiny.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
