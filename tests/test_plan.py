"""genpromp.plan: what each stage's input functions return for a config, without Snakemake."""

import copy
import re

import pandas as pd
import pytest

from genpromp import layout, plan
from genpromp.errors import ConfigError, GenprompError

BASE = {
    "pretrained": "ckpts/sd14",
    "demo": {"enabled": False},
    "datasets": {"cub": {"classifier": {"name": "cls", "path": "ckpts/cls.json"}, "cam_thr": 0.23},
                 "bare": {"cam_thr": 0.25}},
    "runs": {"genpromp": {"tokens": "trained", "unet": "finetuned"},
             "meta_only": {"tokens": "meta", "unet": "pretrained"},
             "released": {"tokens": "ckpts/tokens", "unet": "ckpts/unet"}},
    "train_token": {"shards": 3},
    "test": {"shard_size": 4, "eval_modes": ["top1", "gtk"]},
    "evaluation": {"shard_size": 8, "calibration": None},
}


def _table(path, n, **cols):
    pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], **cols}).to_parquet(path)
    return path


def test_run_tokens_and_unet_follow_the_run():
    assert plan.run_tokens(BASE, "cub", "genpromp") == "results/cub/tokens/tokens.safetensors"
    assert plan.run_tokens(BASE, "cub", "meta_only") == "meta"
    assert plan.run_tokens(BASE, "cub", "released") == "ckpts/tokens"
    assert plan.run_unet_dir(BASE, "cub", "genpromp") == "results/cub/unet"
    assert plan.run_unet_dir(BASE, "cub", "meta_only") is None
    assert plan.run_unet_marker(BASE, "cub", "meta_only") == "ckpts/sd14/unet/config.json"
    assert plan.run_unet_marker(BASE, "cub", "released") == "ckpts/unet/config.json"


def test_runs_with_the_same_tokens_share_their_embeddings():
    config = {**BASE, "runs": {**BASE["runs"], "no_stage2": {"tokens": "trained", "unet": "pretrained"},
                               "released_too": {"tokens": "ckpts/tokens", "unet": "pretrained"}}}
    assert plan.run_embeddings(config, "cub", "genpromp") == plan.run_embeddings(config, "cub", "no_stage2") \
        == "results/cub/embeddings/trained.safetensors"
    given = plan.tokens_key(config, "released")
    assert re.fullmatch(layout.TOKENS_KEY_PATTERN, given) and given.startswith("given-")
    assert plan.tokens_key(config, "released_too") == given != plan.tokens_key({**config, "runs": {
        "x": {"tokens": "ckpts/other", "unet": "pretrained"}}}, "x")
    assert plan.tokens_for_key(config, "cub", given) == "ckpts/tokens"
    assert plan.tokens_for_key(config, "cub", "trained") == "results/cub/tokens/tokens.safetensors"
    assert plan.tokens_input(config, "cub", "meta") == []
    with pytest.raises(ConfigError, match="no run"):
        plan.tokens_for_key(config, "cub", "given-000000000000")


def test_scores_only_where_a_variant_needs_them():
    assert plan.variant_scores(BASE, "cub", "gtk_w0.60_t0-99") == []
    assert plan.variant_scores(BASE, "cub", "top1_w0.60_t0-99") == "results/cub/scores/cls.parquet"
    with pytest.raises(ConfigError, match="datasets.bare.classifier"):
        plan.variant_scores(BASE, "bare", "top5_w0.60_t0-99")
    assert plan.embeddings_scores(BASE, "cub") == "results/cub/scores/cls.parquet"
    gtk_only = copy.deepcopy(BASE)
    gtk_only["test"]["eval_modes"] = ["gtk"]
    assert plan.embeddings_scores(gtk_only, "cub") == []
    assert plan.scores_source(BASE, "cub", "cls") == "ckpts/cls.json"
    with pytest.raises(ConfigError, match="no classifier named other"):
        plan.scores_source(BASE, "cub", "other")


def test_shards_and_parts_follow_the_tables(tmp_path):
    test = _table(tmp_path / "test.parquet", 10)
    shards = plan.cam_shard_files(BASE, "cub", "genpromp", "gtk_w0.60_t0-99", test)
    assert [s.rsplit("/", 1)[1] for s in shards] == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    # evaluation.shard_size 8 / test.shard_size 4 -> 2 CAM shards per part: [0, 1], [2]
    assert plan.eval_parts(BASE, test) == [[0, 1], [2]]
    assert plan.part_cam_files(BASE, "cub", "r", "gtk_w0.60_t0-99", "1", test) == \
        ["results/cub/r/cams/gtk_w0.60_t0-99/shard-00002.npz"]
    assert plan.eval_part_files(BASE, "cub", "r", "gtk_w0.60_t0-99", "json", test)[-1] == \
        "results/cub/r/eval/gtk_w0.60_t0-99/parts/part-00001.json"
    with pytest.raises(GenprompError, match="part 2 does not exist"):
        plan.part_shards(BASE, "cub", "2", test)
    classes = tmp_path / "classes.parquet"
    pd.DataFrame({"class_id": [0, 1], "kept": [True, True]}).to_parquet(classes)
    assert plan.token_shards(BASE, "cub", classes) == ["results/cub/tokens/shard-0.safetensors",
                                                      "results/cub/tokens/shard-1.safetensors"]


def test_meta_heldout_baselines_and_calibration():
    meta = plan.eval_meta(BASE, "cub", "genpromp", "top1_w0.60_t0-99")
    assert meta == {"dataset": "cub", "run": "genpromp", "variant": "top1_w0.60_t0-99", "mode": "top1", "ratio": 0.6,
                    "cams": "results/cub/genpromp/cams/top1_w0.60_t0-99", "scores": "results/cub/scores/cls.parquet"}
    assert plan.eval_meta(BASE, "cub", "genpromp", "gtk_w0.40_t0")["scores"] is None
    assert plan.heldout_summary("cub", "g", "top5_w0.40_t0-99") == "results/cub/g/heldout/eval/gtk_w0.40_t0-99/summary.json"
    by_path = {"results/cub/g/eval/top1_w0.60_t0-99/summary.json": meta}
    assert plan.baseline_summaries(by_path) == ["results/cub/baselines/center/summary.json",
                                                "results/cub/baselines/full/summary.json"]
    assert plan.calibration_files(BASE, by_path, list(by_path)) == []
    calibrated = {**BASE, "evaluation": {**BASE["evaluation"], "calibration": {"images_per_class": 1}}}
    assert plan.calibration_files(calibrated, by_path, list(by_path)) == \
        ["results/cub/genpromp/eval/top1_w0.60_t0-99/calibration.json"]


def test_index_tokenizer_prefers_the_model_folders_own(tmp_path):
    config = {**BASE, "pretrained": str(tmp_path)}
    assert plan.index_tokenizer(config) == plan.ASSETS_TOKENIZER
    (tmp_path / "tokenizer").mkdir()
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "tokenizer" / name).write_text("{}")
    assert plan.index_tokenizer(config) == f"{tmp_path.as_posix()}/tokenizer/vocab.json"
    assert plan.index_tokenizer({**config, "demo": {"enabled": True}}) == plan.ASSETS_TOKENIZER


def test_latent_view_holds_what_the_latents_depend_on_only():
    config = {**copy.deepcopy(BASE), "seed": 3,
              "test": {"resolution": 512, "batch_size": 16, "shard_size": 500, "inference_precision": "auto",
                       "combine_ratio": 0.6, "combine_ratios": [0.0, 0.6], "eval_modes": ["top1"], "timesteps": [0, 99],
                       "cam_size": 64, "cam_groups": [], "n_vis": 8}}
    view = plan.latent_view(config)
    assert view == {"pretrained": "ckpts/sd14", "seed": 3, "test": {"resolution": 512, "batch_size": 16,
                                                                    "shard_size": 500, "inference_precision": "auto"}}
    changed = copy.deepcopy(config)
    changed["test"].update(combine_ratio=0.4, combine_ratios=[0.4], eval_modes=["gtk", "top5"], timesteps=[0, 50],
                           cam_size=32, n_vis=0)
    changed["runs"]["extra"] = {"tokens": "meta", "unet": "pretrained"}
    changed["datasets"]["cub"]["cam_thr"] = 0.4
    assert plan.latent_view(changed) == view
