"""Evaluator end to end: a cache written by the test, scored through the CLI and directly."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from genpromp.errors import InputError
from genpromp.evaluation.evaluate import evaluate_baselines, evaluate_cache, write_evaluation
from genpromp.evaluation.evaluator import EvalSettings

from eval_fixtures import write_dataset

def run_cli(argv):
    """``genpromp <argv>`` through the CLI entry point; its exit status (1 when the command failed)."""
    from genpromp.cli import main

    return main(argv)


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


def test_eval_part_shards_hand_computed():
    from genpromp.evaluation.evaluate import eval_part_shards
    assert eval_part_shards(10, 2, 5) == [[0, 1], [2, 3], [4]]  # 5 CAM shards, round(2.5) = 2 per part
    assert eval_part_shards(10, 4, 1) == [[0], [1], [2]]  # at least one whole CAM shard per part
    assert eval_part_shards(50000, 64, 5000) == [list(range(k, min(782, k + 78))) for k in range(0, 782, 78)]
    assert eval_part_shards(0, 64, 5000) == [[0]]


@pytest.mark.parametrize("mode", ["top1", "gtk"])
def test_sharded_merge_equals_single_job(tmp_path, mode):
    from genpromp.evaluation.evaluate import eval_part_shards, merge_evaluation, run_evaluate, run_evaluate_part
    d = write_dataset(tmp_path, n=10, mode=mode, shard_size=2)
    scores = d["scores"] if mode != "gtk" else None
    single = run_evaluate(d["cams"], d["index"], SETTINGS, tmp_path / "one.parquet", tmp_path / "one.json",
                          scores=scores, meta={"cams": "x", "scores": "y"})
    parts, states = [], []
    for p, shards in enumerate(reversed(eval_part_shards(10, 2, 5))):  # any part order
        parts.append(tmp_path / f"part-{p}.parquet")
        states.append(tmp_path / f"part-{p}.json")
        st = run_evaluate_part(d["cams"], d["index"], SETTINGS, shards, parts[-1], states[-1], scores=scores)
        assert st["shards"] == shards
        assert "NaN" not in states[-1].read_text()
    merged = merge_evaluation(parts, states, d["index"], SETTINGS, tmp_path / "m.parquet", tmp_path / "m.json",
                              meta={"cams": "x", "scores": "y"})
    assert merged == single
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads((tmp_path / "one.json").read_text())
    assert pq.read_table(tmp_path / "m.parquet").equals(pq.read_table(tmp_path / "one.parquet"))
    # a missing part and an overlapping part are errors naming the problem
    with pytest.raises(InputError, match="in no evaluation part"):
        merge_evaluation(parts[1:], states[1:], d["index"], SETTINGS, tmp_path / "x.parquet", tmp_path / "x.json")
    with pytest.raises(InputError, match="parts overlap"):
        merge_evaluation(parts + parts[:1], states + states[:1], d["index"], SETTINGS, tmp_path / "x.parquet",
                         tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_merge_cli(tmp_path):
    d = write_dataset(tmp_path, n=6, mode="top1", shard_size=3)
    for k in (0, 1):
        run_cli(["evaluate", "--cams", str(d["cams"]), "--index", str(d["index"]), "--scores", str(d["scores"]),
                 "--shards", str(k), "--per-image", str(tmp_path / f"p{k}.parquet"), "--state",
                 str(tmp_path / f"s{k}.json"), *CLI_OPTS, "--tscam-sweep", "0", "1", "0.1"])
    run_cli(["evaluate-merge", "--parts", str(tmp_path / "p0.parquet"), str(tmp_path / "p1.parquet"),
             "--states", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"), "--index", str(d["index"]),
             "--per-image", str(tmp_path / "m.parquet"), "--summary", str(tmp_path / "m.json"), "--variant", "v",
             *CLI_OPTS, "--tscam-sweep", "0", "1", "0.1"])
    s = json.loads((tmp_path / "m.json").read_text())
    settings = EvalSettings(cam_thr=0.23, frame=128, wsol_frame=64, thresholds=SETTINGS.thresholds,
                            tscam_thresholds=tuple(np.arange(0, 1, 0.1).tolist()))
    direct = evaluate_cache(d["cams"], d["index"], settings, scores_path=d["scores"]).compute()
    assert s["variant"] == "v" and s["n_images"] == 6
    assert s["tscam"] == json.loads(json.dumps(direct["tscam"]))
    assert len(s["tscam"]["thresholds"]) == 10 and len(s["thresholds"]) == 20


def test_summary_counts_match_per_image_table(tmp_path):
    d = write_dataset(tmp_path, n=9, mode="top1", shard_size=4)
    ev = evaluate_cache(d["cams"], d["index"], SETTINGS, scores_path=d["scores"])
    s, res = ev.compute(), ev.results
    ious = np.stack([r.wsol_v2 for r in res])
    for delta in ("0.3", "0.5", "0.7"):  # straightforward MaxBoxAcc from the per-image IoUs
        curve = [100.0 * sum(row[t] >= float(delta) for row in ious) / len(res) for t in range(ious.shape[1])]
        assert s["wsol"]["v2"]["max_box_acc"][delta] == pytest.approx(max(curve))
        assert s["wsol"]["v2"]["best_threshold"][delta] == SETTINGS.thresholds[int(np.argmax(curve))]
    errs = [r.error for r in res]
    assert s["tscam"]["error_breakdown"]["Cls"] == pytest.approx(100 * errs.count("Cls") / 9)


def _write_tie_dataset(tmp_path):
    """Three 64 × 64 images whose map blob (rows/cols 10..18) gives the box [10, 10, 19, 19] (100 px)
    and whose GT boxes inside it have 70, 50 and 30 px: IoU exactly 7/10, 1/2 and 3/10. One image per
    CAM shard, top1 mode, classes right."""
    import pyarrow as pa
    from genpromp.cams.cache import roles_for_mode, shard_filename, write_cam_index, write_cam_shard
    ids = ["c0/seven", "c0/half", "c0/three"]
    boxes = [[[10.0, 10.0, 19.0, 16.0]], [[10.0, 10.0, 19.0, 14.0]], [[10.0, 10.0, 19.0, 12.0]]]
    index = tmp_path / "test.parquet"
    pq.write_table(pa.table({"image_id": ids, "path": [f"{i}.jpg" for i in ids], "label": pa.array([0] * 3, pa.int32()),
                             "width": pa.array([64] * 3, pa.int32()), "height": pa.array([64] * 3, pa.int32()),
                             "boxes": pa.array(boxes, pa.list_(pa.list_(pa.float64())))}), index)
    scores = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"image_id": ids, "top5_ids": pa.array([[0, 1, 2, 3, 4]] * 3, pa.list_(pa.int32())),
                             "top5_scores": pa.array([[0.5] * 5] * 3, pa.list_(pa.float32())),
                             "scores": pa.array([[0.1] * 5] * 3, pa.list_(pa.float32()))}), scores)
    cam = np.zeros((64, 64), np.float32)
    cam[10:19, 10:19] = 1.0
    roles = roles_for_mode("top1")
    shards = [write_cam_shard(tmp_path / "cams" / shard_filename(k), [iid], np.zeros((1, len(roles)), np.int64),
                              np.stack([[cam] * len(roles)])) for k, iid in enumerate(ids)]
    write_cam_index(shards, tmp_path / "cams" / "index.parquet", roles)
    return index, scores, tmp_path / "cams"


def test_exact_iou_ties_in_files_and_merged_parts(tmp_path):
    import pyarrow as pa
    from genpromp.evaluation.evaluate import merge_evaluation, run_evaluate, run_evaluate_part
    index, scores, cams = _write_tie_dataset(tmp_path)
    settings = EvalSettings(cam_thr=0.5, frame=64, wsol_frame=64, thresholds=(0.0, 0.5, 0.9),
                            tscam_thresholds=(0.2, 0.5), iou_thresholds=(0.3, 0.5, 0.7))
    single = run_evaluate(cams, index, settings, tmp_path / "one.parquet", tmp_path / "one.json", scores=scores)
    for v in ("v1", "v2"):  # MaxBoxAcc counts IoU >= δ: 3, 2 and 1 of 3 images at every τ
        assert single["wsol"][v]["max_box_acc"] == pytest.approx({"0.3": 100.0, "0.5": 200 / 3, "0.7": 100 / 3})
        assert single["wsol"][v]["curve"]["0.7"] == pytest.approx([100 / 3] * 3)
    assert single["tscam"]["gt_known"] == pytest.approx(200 / 3)  # IoU >= 0.5: the 7/10 and 1/2 images
    assert single["tscam"]["top1_loc"] == pytest.approx(100 / 3)  # IoU > 0.5: the 7/10 image only
    assert single["tscam"]["top5_loc"] == pytest.approx(100 / 3)
    table = pq.read_table(tmp_path / "one.parquet")
    for col in ("tscam_ious", "wsol_v1_ious", "wsol_v2_ious"):
        assert table.schema.field(col).type.value_type == pa.float64()
    # the stored IoUs re-threshold to the same decisions
    assert [row[0] for row in table.column("wsol_v2_ious").to_pylist()] == [0.7, 0.5, 0.3]
    assert [row[0] >= 0.7 for row in table.column("wsol_v1_ious").to_pylist()] == [True, False, False]
    parts, states = [], []
    for k in range(3):
        parts.append(tmp_path / f"p{k}.parquet")
        states.append(tmp_path / f"s{k}.json")
        run_evaluate_part(cams, index, settings, [k], parts[-1], states[-1], scores=scores)
    merged = merge_evaluation(parts, states, index, settings, tmp_path / "m.parquet", tmp_path / "m.json",
                              meta={"cams": str(cams), "scores": str(scores)})
    assert merged == single


def _parsed(argv):
    """The options `genpromp <argv>` parses (``genpromp evaluate`` / ``evaluate-merge``)."""
    from genpromp.cli import build_parser
    return build_parser(argv).parse_args(argv)


def test_settings_defaults_are_the_config_schemas():
    from genpromp.config import load_schema, schema_default
    from genpromp.evaluation.evaluate import _settings_from_args
    from genpromp.evaluation.evaluator import settings_from_params
    evaluation = schema_default("evaluation")
    assert evaluation["frame"] == load_schema()["properties"]["evaluation"]["properties"]["frame"]["default"]
    from_schema = settings_from_params(evaluation, schema_default("datasets.*.cam_thr"))
    assert EvalSettings() == from_schema == settings_from_params({}, from_schema.cam_thr)
    assert from_schema.thresholds == tuple(np.arange(0.0, 1.0, 0.01).tolist())  # wsolevaluation's τ list
    # a partial sweep entry keeps the other defaults
    assert settings_from_params({"sweep": {"step": 0.05}}, 0.23).thresholds == SETTINGS.thresholds
    for command in (["evaluate", "--index", "i.parquet"],
                    ["evaluate-merge", "--parts", "p", "--states", "s", "--index", "i", "--per-image", "o",
                     "--summary", "s"]):
        assert _settings_from_args(_parsed(command)) == from_schema


def test_cli_reads_names_from_the_layout(tmp_path, monkeypatch, capsys):
    from genpromp import layout
    (tmp_path / "src").mkdir()
    d = write_dataset(tmp_path / "src", n=4, mode="top1", shard_size=2)
    variant = layout.Variant("top1", 0.4, (0, 99))
    monkeypatch.chdir(tmp_path)
    index, cams = Path(layout.index_table("demo", "test")), Path(layout.cam_dir("demo", "genpromp", variant))
    index.parent.mkdir(parents=True)
    cams.parent.mkdir(parents=True)
    d["index"].rename(index)
    d["cams"].rename(cams)
    assert run_cli(["evaluate", "--cams", str(cams), "--index", str(index), "--scores", str(d["scores"]),
                    "--per-image", "p.parquet", "--summary", "s.json", *CLI_OPTS]) == 0
    s = json.loads(Path("s.json").read_text())
    assert (s["dataset"], s["run"], s["variant"], s["mode"], s["ratio"]) == ("demo", "genpromp", variant.name,
                                                                            "top1", 0.4)
    assert run_cli(["evaluate", "--baselines", "b", "--index", str(index)]) == 0  # dataset from the index path
    assert json.loads(Path("b/center/summary.json").read_text())["dataset"] == "demo"
    assert run_cli(["evaluate", "--baselines", "b", "--index", str(d["scores"])]) == 1  # no dataset: an error
    assert "--baselines needs --dataset" in capsys.readouterr().err
