"""Evaluator end to end: a cache written by the test, scored through the CLI and directly."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import argparse

from genpromp.evaluation import evaluate as evaluate_module
from genpromp.errors import InputError
from genpromp.evaluation.evaluate import evaluate_baselines, evaluate_cache, write_evaluation
from genpromp.evaluation.evaluator import EvalSettings

from eval_fixtures import write_dataset

def run_cli(argv):
    """Parse with the `genpromp evaluate` sub-command only (other stages may be absent) and run it."""
    parser = argparse.ArgumentParser()
    evaluate_module.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    args.func(args)
    return 0


SETTINGS = EvalSettings(cam_thr=0.23, frame=128, wsol_frame=64, thresholds=tuple(np.arange(0, 1, 0.05).tolist()))
CLI_OPTS = ["--cam-thr", "0.23", "--frame", "128", "--wsol-frame", "64", "--sweep", "0", "1", "0.05"]


def test_cli_equals_direct_call(tmp_path):
    d = write_dataset(tmp_path, n=10, mode="top1")
    out = tmp_path / "eval"
    rc = run_cli(["evaluate", "--cams", str(d["cams"]), "--index", str(d["index"]), "--scores", str(d["scores"]),
               "--per-image", str(out / "per_image.parquet"), "--summary", str(out / "summary.json"),
               "--threads", "2", "--dataset", "demo", *CLI_OPTS])
    assert rc == 0
    cli = json.loads((out / "summary.json").read_text())
    direct = evaluate_cache(d["cams"], d["index"], SETTINGS, scores_path=d["scores"]).compute()
    assert cli["dataset"] == "demo" and cli["n_images"] == 10
    for key in ("gt_known", "top1_loc", "top5_loc", "cls1", "cls5", "error_breakdown", "curve"):
        assert cli["tscam"][key] == direct["tscam"][key]
    assert cli["wsol"] == json.loads(json.dumps(direct["wsol"]))
    assert sum(cli["tscam"]["error_breakdown"].values()) == pytest.approx(100.0)
    table = pq.read_table(out / "per_image.parquet").to_pandas()
    assert table["image_id"].tolist() == d["ids"]
    assert len(table["tscam_ious"][0]) == 20
    # summary percentages agree with the per-image table
    assert cli["tscam"]["gt_known"] == pytest.approx(100 * table["gt_known"].mean())
    assert cli["tscam"]["top1_loc"] == pytest.approx(100 * table["top1_loc"].mean())
    assert (table["top1_loc"] <= table["cls1"]).all() and (table["top1_loc"] <= table["top5_loc"]).all()


def test_gtk_mode_without_scores(tmp_path):
    d = write_dataset(tmp_path, n=6, mode="gtk", shard_size=3)
    ev = evaluate_cache(d["cams"], d["index"], SETTINGS)
    s = ev.compute()
    assert s["tscam"]["top1_loc"] is None and s["tscam"]["error_breakdown"] is None
    assert 0 <= s["tscam"]["gt_known"] <= 100
    assert s["wsol"]["v2"]["mean"] == pytest.approx(np.mean(list(s["wsol"]["v2"]["max_box_acc"].values())))


def test_threads_match_and_top5_mode(tmp_path):
    d = write_dataset(tmp_path, n=8, mode="top5", shard_size=2)
    one = evaluate_cache(d["cams"], d["index"], SETTINGS, scores_path=d["scores"], threads=1).compute()
    two = evaluate_cache(d["cams"], d["index"], SETTINGS, scores_path=d["scores"], threads=2).compute()
    assert one == two


def test_missing_image_is_an_error(tmp_path):
    d = write_dataset(tmp_path, n=6, mode="gtk", shard_size=3)
    (d["cams"] / "shard-00001.npz").unlink()
    with pytest.raises(InputError, match="shard-00001.npz does not exist"):
        evaluate_cache(d["cams"], d["index"], SETTINGS)


def test_baselines(tmp_path):
    d = write_dataset(tmp_path, n=6, mode="gtk")
    res = evaluate_baselines(d["index"], SETTINGS, scores_path=d["scores"])
    full = res["full"].compute()
    # full box vs GT [0.2W, 0.25H, 0.7W, 0.8H]: IoU ≈ 0.5·0.55 = 0.275 (< 0.5) for every image
    assert full["tscam"]["gt_known"] == 0.0
    center = res["center"].compute()
    assert center["wsol"]["v2"]["max_box_acc"]["0.3"] == 100.0
    out = write_evaluation(res["center"], tmp_path / "b" / "p.parquet", tmp_path / "b" / "s.json", {"baseline": "center"})
    assert out["baseline"] == "center"
