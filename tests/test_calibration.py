"""Threshold calibration on held-out images: selection of the held-out set, threshold choice (first
maximiser), the reported test numbers, the calibration table, and the config key."""

import copy
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from genpromp.config import load_config
from genpromp.errors import ConfigError, GenprompError, InputError
from genpromp.evaluation.calibration import calibrate, run_calibrate, select_heldout, write_heldout_index
from genpromp.evaluation.evaluator import EvalSettings, summary_from_state
from genpromp.evaluation.metrics import first_argmax
from genpromp.layout import Variant
from genpromp.evaluation.tables import calibration_table, write_tables

from workflow_utils import REPO


def _summary(ts_thr, gtk, cam_thr=0.23, fixed=(65.0, 55.0, 60.0), top1=None, top5=None, taus=None, v2=None, n=4):
    curve = {"gt_known": gtk}
    if top1 is not None:
        curve.update(top1_loc=top1, top5_loc=top5)
    s = {"n_images": n, "thresholds": taus or [0.0, 0.1, 0.2],
         "tscam": {"cam_thr": cam_thr, "gt_known": fixed[0], "top1_loc": fixed[1] if top1 else None,
                   "top5_loc": fixed[2] if top1 else None, "thresholds": ts_thr, "curve": curve}}
    if v2 is not None:  # V1 gets the same curves
        s["wsol"] = {"iou_thresholds": [0.3, 0.5, 0.7], "v2": {"curve": v2}, "v1": {"curve": v2}}
    return s


HELD_V2 = {"0.3": [50.0, 100.0, 100.0], "0.5": [50.0, 50.0, 25.0], "0.7": [0.0, 25.0, 50.0]}
TEST_V2 = {"0.3": [80.0, 60.0, 90.0], "0.5": [40.0, 70.0, 70.0], "0.7": [10.0, 20.0, 30.0]}
TS_THR = [0.0, 0.1, 0.2, 0.3]


def _pair():
    held = _summary(TS_THR, [25.0, 75.0, 75.0, 50.0], v2=HELD_V2, n=8)
    test = _summary(TS_THR, [40.0, 50.0, 70.0, 60.0], top1=[30.0, 40.0, 60.0, 50.0], top5=[35.0, 45.0, 65.0, 55.0],
                    v2=TEST_V2, n=10)
    return held, test


def test_first_argmax_takes_the_lowest_of_tied_maxima():
    assert first_argmax([1.0, 3.0, 3.0, 2.0]) == 1
    assert first_argmax([5.0]) == 0
    with pytest.raises(ValueError):
        first_argmax([])


def test_tscam_threshold_chosen_on_heldout_and_test_numbers_read_there():
    held, test = _pair()
    out = calibrate(held, test)
    assert out["n_heldout"] == 8 and out["n_test"] == 10
    ts = out["tscam"]
    # held-out GT-known [25, 75, 75, 50]: the tie at 0.1 and 0.2 goes to 0.1
    assert ts["calibrated"] == {"threshold": 0.1, "heldout_gt_known": 75.0, "gt_known": 50.0, "top1_loc": 40.0,
                                "top5_loc": 45.0}
    # oracle: the test's own GT-known maximiser, 70 at 0.2
    assert ts["oracle"] == {"threshold": 0.2, "gt_known": 70.0, "top1_loc": 60.0, "top5_loc": 65.0}
    assert ts["fixed"] == {"threshold": 0.23, "gt_known": 65.0, "top1_loc": 55.0, "top5_loc": 60.0}


def test_wsol_tau_chosen_per_delta_on_heldout():
    held, test = _pair()
    v2 = calibrate(held, test)["wsol"]["v2"]
    cal, orc = v2["calibrated"], v2["oracle"]
    # held-out maximisers: δ 0.3 → τ 0.1 (tie with 0.2), δ 0.5 → τ 0.0 (tie with 0.1), δ 0.7 → τ 0.2
    assert cal["threshold"] == {"0.3": 0.1, "0.5": 0.0, "0.7": 0.2}
    assert cal["heldout_box_acc"] == {"0.3": 100.0, "0.5": 50.0, "0.7": 50.0}
    assert cal["box_acc"] == {"0.3": 60.0, "0.5": 40.0, "0.7": 30.0}
    assert cal["mean"] == pytest.approx(130.0 / 3, rel=1e-15)
    # test maximisers: δ 0.5 ties at 0.1 and 0.2 → 0.1
    assert orc["threshold"] == {"0.3": 0.2, "0.5": 0.1, "0.7": 0.2}
    assert orc["box_acc"] == {"0.3": 90.0, "0.5": 70.0, "0.7": 30.0}
    assert orc["mean"] == pytest.approx(190.0 / 3, rel=1e-15)


def test_numbers_from_evaluator_states():
    """Summaries built from integer counts by the evaluator: the calibrated numbers are the test's hits × 100 / n."""
    settings = EvalSettings(cam_thr=0.25, thresholds=(0.0, 0.5), tscam_thresholds=(0.0, 0.5, 0.75),
                            iou_thresholds=(0.5,))

    def state(n, gtk_hits, curve_hits, wsol_hits, has_cls):
        return {"n_images": n, "has_cls": has_cls,
                "point": {"gt_known": [gtk_hits, n], "top1_loc": [1, n], "top5_loc": [2, n], "cls1": [2, n],
                          "cls5": [3, n]},
                "errors": {c: 0 for c in ("Cls", "M-ins", "Part", "More", "Wrong", "Right")} if has_cls else None,
                "tscam_curve": {"gt_known": curve_hits, **({"top1_loc": [0, 1, 1], "top5_loc": [1, 2, 1]}
                                                           if has_cls else {})},
                "wsol": {"v1": {"0.5": wsol_hits}, "v2": {"0.5": wsol_hits}}}

    held = summary_from_state(state(2, 1, [0, 2, 1], [2, 1], False), settings)
    test = summary_from_state(state(4, 3, [1, 2, 3], [1, 3], True), settings)
    out = calibrate(held, test)
    # held-out GT-known hits [0, 2, 1] → threshold 0.5; test hits there: GT-known 2/4, Top-1 1/4, Top-5 2/4
    assert out["tscam"]["calibrated"]["threshold"] == 0.5
    assert out["tscam"]["calibrated"]["gt_known"] == 50.0
    assert out["tscam"]["calibrated"]["top1_loc"] == 25.0 and out["tscam"]["calibrated"]["top5_loc"] == 50.0
    assert out["tscam"]["oracle"]["threshold"] == 0.75 and out["tscam"]["oracle"]["gt_known"] == 75.0
    assert out["tscam"]["fixed"]["gt_known"] == 75.0 and out["tscam"]["fixed"]["threshold"] == 0.25
    # held-out BoxAcc hits [2, 1] → τ 0.0; test 1/4 there, oracle 3/4 at τ 0.5
    assert out["wsol"]["v2"]["calibrated"]["box_acc"] == {"0.5": 25.0}
    assert out["wsol"]["v2"]["oracle"] == {"threshold": {"0.5": 0.5}, "box_acc": {"0.5": 75.0}, "mean": 75.0}


def test_different_sweeps_are_refused():
    held, test = _pair()
    held["tscam"]["thresholds"] = [0.0, 0.2, 0.4, 0.6]
    with pytest.raises(InputError, match="tscam_sweep"):
        calibrate(held, test, ("held.json", "test.json"))
    held, test = _pair()
    held["thresholds"] = [0.0, 0.5, 0.9]
    with pytest.raises(InputError, match="evaluation.sweep"):
        calibrate(held, test)


def test_without_curves_only_the_fixed_numbers_remain():
    held, test = _pair()
    del test["tscam"]["curve"], test["wsol"]
    out = calibrate(held, test)
    assert out["tscam"]["calibrated"] is None and out["tscam"]["oracle"] is None and out["wsol"] is None
    assert out["tscam"]["fixed"]["gt_known"] == 65.0


def _train_frame():
    rows = [("c0/a", 0, [[1.0, 1.0, 5.0, 5.0]]), ("c0/b", 0, []), ("c1/a", 1, [[0.0, 0.0, 2.0, 2.0]]),
            ("c0/c", 0, [[2.0, 2.0, 6.0, 6.0]]), ("c0/d", 0, [[0.0, 1.0, 3.0, 4.0]]), ("c1/b", 1, [[1.0, 0.0, 3.0, 3.0]])]
    return pd.DataFrame({"image_id": [r[0] for r in rows], "path": [f"images/{r[0]}.jpg" for r in rows],
                         "label": np.array([r[1] for r in rows], np.int32), "width": np.full(6, 8, np.int32),
                         "height": np.full(6, 8, np.int32), "boxes": pd.Series([r[2] for r in rows], dtype=object)})


def test_select_heldout_takes_the_first_boxed_images_per_class():
    picked = select_heldout(_train_frame(), 2)
    assert list(picked["image_id"]) == ["c0/a", "c0/c", "c1/a", "c1/b"]  # c0/b has no box
    with pytest.raises(InputError, match="class 1 has 2 training images with boxes.*images_per_class is 3"):
        select_heldout(_train_frame(), 3, "train.parquet")
    nobox = _train_frame().assign(boxes=pd.Series([[]] * 6, dtype=object))
    with pytest.raises(InputError, match="evaluation.calibration to null"):
        select_heldout(nobox, 1)


def test_write_heldout_index_keeps_the_index_schema(tmp_path):
    train = tmp_path / "train.parquet"
    _train_frame().to_parquet(train, index=False)
    assert write_heldout_index(train, tmp_path / "heldout.parquet", 1) == 2
    table = pq.read_table(tmp_path / "heldout.parquet")
    assert table.schema.names == pq.read_table(train).schema.names
    assert table.schema.field("label").type == pq.read_table(train).schema.field("label").type
    assert table.column("image_id").to_pylist() == ["c0/a", "c1/a"]
    assert table.column("boxes").to_pylist() == [[[1.0, 1.0, 5.0, 5.0]], [[0.0, 0.0, 2.0, 2.0]]]


def heldout_variant(name):
    return Variant.parse(name).heldout().name


def test_heldout_variant_is_the_gtk_map_of_the_same_ratio_and_timesteps():
    assert heldout_variant("top1_w0.60_t0-99") == "gtk_w0.60_t0-99"
    assert heldout_variant("gtk_w0.00_t0-99") == "gtk_w0.00_t0-99"
    with pytest.raises(GenprompError):
        heldout_variant("best_w0.60_t0-99")


def _write_calibration(tmp_path):
    held, test = _pair()
    (tmp_path / "held.json").write_text(json.dumps(held))
    (tmp_path / "test.json").write_text(json.dumps(test))
    out = tmp_path / "cub_demo/genpromp/eval/top1_w0.60_t0-99/calibration.json"
    run_calibrate(tmp_path / "held.json", tmp_path / "test.json", out,
                  {"dataset": "cub_demo", "run": "genpromp", "variant": "top1_w0.60_t0-99"})
    return out


def test_calibration_table_rows(tmp_path):
    path = _write_calibration(tmp_path)
    saved = json.loads(path.read_text())
    assert saved["dataset"] == "cub_demo" and saved["heldout_summary"].endswith("held.json")
    df = calibration_table([path]).set_index("metric")
    assert list(df.index) == ["GT-known Loc", "Top-1 Loc", "Top-5 Loc", "BoxAccV2 δ=0.3", "BoxAccV2 δ=0.5",
                              "BoxAccV2 δ=0.7", "MaxBoxAccV2 (mean over δ)"]
    top1 = df.loc["Top-1 Loc"]
    assert (top1.fixed, top1.calibrated, top1.oracle) == (55.0, 40.0, 60.0)
    assert (top1.fixed_threshold, top1.calibrated_threshold, top1.oracle_threshold) == (0.23, 0.1, 0.2)
    d5 = df.loc["BoxAccV2 δ=0.5"]
    assert np.isnan(d5.fixed) and (d5.calibrated, d5.oracle) == (40.0, 70.0)
    assert (d5.calibrated_threshold, d5.oracle_threshold) == (0.0, 0.1)
    assert df.loc["MaxBoxAccV2 (mean over δ)"].calibrated == pytest.approx(130.0 / 3)
    assert set(df["n_heldout"]) == {8}


def test_write_tables_labels_the_three_choices(tmp_path):
    path = _write_calibration(tmp_path)
    summary = tmp_path / "test.json"
    meta = {str(summary): {"dataset": "cub_demo", "run": "genpromp", "variant": "top1_w0.60_t0-99"}}
    write_tables(tmp_path / "tables", [summary], meta=meta, calibration_paths=[path])
    md = (tmp_path / "tables/calibration.md").read_text()
    for word in ("**fixed**", "**calibrated**", "**oracle**", "| GT-known Loc |", "| 50.0 |"):
        assert word in md
    assert len(pd.read_csv(tmp_path / "tables/calibration.csv")) == 7
    write_tables(tmp_path / "off", [summary], meta=meta)
    assert "evaluation.calibration is off" in (tmp_path / "off/calibration.md").read_text()
    assert pd.read_csv(tmp_path / "off/calibration.csv").empty


def test_config_key():
    base = REPO / "config" / "config.yaml"
    assert load_config(base)["evaluation"]["calibration"] == {"images_per_class": 3}  # the demo calibrates
    assert load_config(REPO / "config" / "cub.yaml")["evaluation"]["calibration"] is None
    with pytest.raises(ConfigError, match="evaluation.calibration.images_per_class"):
        load_config(base, copy.deepcopy({"evaluation": {"calibration": {"images_per_class": 0}}}))
    with pytest.raises(ConfigError, match="evaluation.calibration"):
        load_config(base, {"evaluation": {"calibration": {"per_class": 2}}})
