"""The Snakemake workflow: lint, dry runs of the shipped configs, and a real run of the data stages."""

import pandas as pd
import pytest
import yaml

from release_fixtures import write_release_inputs
from workflow_utils import REPO, planned_jobs, prepare_workdir, run_snakemake


def test_lint_is_clean(tmp_path):
    proc = run_snakemake(prepare_workdir(tmp_path), "--lint", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "Lints for rule" not in text and "Lints for snakefile" not in text, text[-4000:]


def test_dry_run_demo(tmp_path):
    workdir = prepare_workdir(tmp_path)
    proc = run_snakemake(workdir, "-n", "--quiet", "rules")
    jobs = planned_jobs(proc.stdout)
    # stages behind the index checkpoint are planned once the index exists
    for rule in ["demo_world", "index", "classifier", "import_scores", "evaluate_baselines", "tables"]:
        assert rule in jobs, proc.stdout[-3000:]
    # the assets are planned exactly when they are not built yet (prepare_workdir shares the repository's)
    built = (workdir / "resources/assets/clip_tokenizer/vocab.json").is_file()
    assert ("assets" in jobs) != built, proc.stdout[-3000:]
    assert "checkpoint jobs" in proc.stdout


# The whole plan of a shipped real-data config on the stand-in release (tests/release_fixtures.py):
# 200 CUB / 1000 ImageNet classes, one training image per class, 501 test images. Counts:
# * train_token: min(train_token.shards, kept classes) = 20 (CUB) / 100 (ImageNet);
# * CAM variants per (dataset, run): eval_modes x combine_ratio 0.6 ([top1, gtk]) on every run, plus
#   the gtk combine-ratio sweep (6 ratios, 0.6 shared) on the main run: CUB 2 runs -> 2 + 2 + 5 = 9,
#   ImageNet 1 run -> 2 + 5 = 7; each has 2 CAM shards (501 images / test.shard_size 500), one
#   evaluation part (evaluation.shard_size >= 1000), one cam_index and one merge_eval;
# * encode_latents: one per test CAM shard (2), shared by every variant and run;
# * overlays: main variants (n_vis > 0) on every run; embeddings: one per token source (CUB's genpromp
#   and no_stage2 runs share the trained tokens: one job).
# The index checkpoint ran before the plan, so it is not in it.
REAL_PLANS = {
    "cub": dict(train_token=20, merge_tokens=1, train_unet=1, embeddings=1, encode_latents=2, extract_cams=18,
                cam_index=9, evaluate_shard=9, merge_eval=9, overlays=4, import_scores=1, evaluate_baselines=1,
                tables=1, all=1),
    "imagenet": dict(train_token=100, merge_tokens=1, train_unet=1, embeddings=1, encode_latents=2, extract_cams=14,
                     cam_index=7, evaluate_shard=7, merge_eval=7, overlays=2, import_scores=1, evaluate_baselines=1,
                     tables=1, all=1),
}


@pytest.mark.parametrize("name", sorted(REAL_PLANS))
def test_dry_run_of_a_real_config_plans_every_stage(tmp_path, name):
    """config/<name>.yaml, unchanged, on a stand-in release at the paths it names: the index runs,
    then the dry run of the default target plans every stage with the expected job counts; without
    the pretrained folder's marker the same dry run stops, naming it."""
    configfile = REPO / "config" / f"{name}.yaml"
    config = yaml.safe_load(configfile.read_text())
    workdir = tmp_path / "work"
    write_release_inputs(workdir, config)
    index = [f"results/{d}/index/{split}.parquet" for d in config["datasets"] for split in ("train", "test", "classes")]
    run_snakemake(workdir, *index, configfile=configfile)
    proc = run_snakemake(workdir, "-n", configfile=configfile, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert planned_jobs(proc.stdout) == REAL_PLANS[name], proc.stdout[-5000:]
    marker = f"{config['pretrained']}/unet/config.json"
    (workdir / marker).unlink()
    proc = run_snakemake(workdir, "-n", configfile=configfile, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "MissingInputException" in text and marker in text, text[-3000:]


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
