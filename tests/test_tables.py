"""Tables from summaries written by the evaluator: content, paper rows, files."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from genpromp.evaluation.evaluate import evaluate_baselines, evaluate_cache, write_evaluation
from genpromp.evaluation.evaluator import EvalSettings, Evaluator
from genpromp.evaluation.tables import to_markdown, write_tables

from eval_fixtures import write_dataset

SETTINGS = EvalSettings(frame=96, wsol_frame=64, thresholds=tuple(np.arange(0, 1, 0.05).tolist()),
                       tscam_thresholds=tuple(np.arange(0, 1, 0.1).tolist()))


def test_write_tables(tmp_path):
    d = write_dataset(tmp_path, n=6, mode="top1", shard_size=3)
    ev = evaluate_cache(d["cams"], d["index"], SETTINGS, scores_path=d["scores"])
    paths, meta = [], {}
    for w in (0.4, 0.6):
        p = tmp_path / f"cub_demo/genpromp/eval/top1_w{w:.2f}/summary.json"
        write_evaluation(ev, p.with_name("per_image.parquet"), p)
        meta[str(p)] = {"dataset": "cub_demo", "run": "genpromp", "variant": f"top1_w{w:.2f}_t0-99",
                        "mode": "top1", "ratio": w}
        paths.append(p)
    base = []
    for name, bev in evaluate_baselines(d["index"], SETTINGS).items():
        p = tmp_path / f"cub_demo/baselines/{name}/summary.json"
        write_evaluation(bev, p.with_name("per_image.parquet"), p, {"dataset": "cub_demo", "baseline": name})
        base.append(p)
    out = tmp_path / "tables"
    write_tables(out, paths[1:], paths, base, meta)
    main = pd.read_csv(out / "main.csv")
    ours = main[main.source == "ours"].iloc[0]
    s = ev.compute()
    assert ours.gt_known == pytest.approx(s["tscam"]["gt_known"])
    assert ours.max_box_acc_v2 == pytest.approx(s["wsol"]["v2"]["mean"])
    paper = main[(main.source == "paper") & main.method.str.startswith("GenPromp")].iloc[0]
    assert (paper.dataset, paper.top1_loc, paper.top5_loc, paper.gt_known) == ("CUB", 87.0, 96.1, 98.0)
    assert set(main[main.source == "baseline"].method) == {"center box", "full box"}
    ratio = pd.read_csv(out / "combine_ratio.csv")
    assert ratio.ratio.tolist() == [0.4, 0.6]
    curve = pd.read_csv(out / "threshold_curve.csv")
    assert len(curve) == 10 and curve.gt_known.tolist() == pytest.approx(s["tscam"]["curve"]["gt_known"])
    eb = pd.read_csv(out / "error_breakdown.csv")
    assert eb.iloc[0][["Cls", "M-ins", "Part", "More", "Wrong", "Right"]].sum() == pytest.approx(100)
    for f in ("main.md", "combine_ratio.md", "combine_ratio.png", "threshold_curve.png", "error_breakdown.md"):
        assert (out / f).stat().st_size > 0
    assert "paper" in (out / "main.md").read_text()
    assert main.pxap.isna().all()  # evaluated without masks: no PxAP anywhere ("–" in the Markdown)
    assert (out / "pr_curve.png").stat().st_size > 0 and pd.read_csv(out / "pr_curve.csv").empty


def test_pxap_column_and_pr_curve(tmp_path):
    from genpromp.evaluation.pxap import MaskSource
    d = write_dataset(tmp_path, n=6, mode="top1", shard_size=3)
    index = pd.read_parquet(d["index"])
    lines = []
    for iid, w, h, boxes in index[["image_id", "width", "height", "boxes"]].itertuples(index=False):
        m = np.zeros((h, w), np.uint8)
        x1, y1, x2, y2 = (int(v) for v in boxes[0])
        m[y1:y2, x1:x2] = 255
        (tmp_path / "masks" / iid).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "masks" / f"{iid}.png"), m)
        lines.append(f"{iid}.jpg,{iid}.png,\n")
    (tmp_path / "masks/list.txt").write_text("".join(lines))
    masks = MaskSource(tmp_path / "masks/list.txt")
    with_masks = tmp_path / "a/summary.json"
    s = write_evaluation(evaluate_cache(d["cams"], d["index"], SETTINGS, scores_path=d["scores"], masks=masks),
                         with_masks.with_name("p.parquet"), with_masks)
    without = tmp_path / "b/summary.json"
    write_evaluation(evaluate_cache(d["cams"], d["index"], SETTINGS, scores_path=d["scores"]),
                     without.with_name("p.parquet"), without)
    base = tmp_path / "base/summary.json"
    bev = evaluate_baselines(d["index"], SETTINGS, masks=masks)["full"]
    fb = write_evaluation(bev, base.with_name("p.parquet"), base, {"dataset": "cub_demo", "baseline": "full"})
    meta = {str(with_masks): {"dataset": "cub_demo", "run": "genpromp", "variant": "a", "mode": "top1", "ratio": 0.6},
            str(without): {"dataset": "cub_demo", "run": "genpromp", "variant": "b", "mode": "top1", "ratio": 0.4}}
    out = tmp_path / "tables"
    write_tables(out, [with_masks, without], [with_masks, without], [base], meta)
    main = pd.read_csv(out / "main.csv")
    ours = main[main.source == "ours"].set_index("variant")
    assert ours.loc["a", "pxap"] == pytest.approx(s["pxap"]["pxap"]) and np.isnan(ours.loc["b", "pxap"])
    assert main[main.source == "baseline"].pxap.iloc[0] == pytest.approx(fb["pxap"]["pxap"])
    assert main[main.source == "paper"].pxap.isna().all()
    table = [[c.strip() for c in ln.strip("|").split("|")] for ln in (out / "main.md").read_text().splitlines()
             if ln.startswith("|")]
    rows = [dict(zip(table[0], r)) for r in table[2:]]
    shown = {r["variant"]: r["pxap"] for r in rows if r["source"] == "ours"}
    assert shown == {"a": f"{s['pxap']['pxap']:.1f}", "b": "–"}
    ratio = pd.read_csv(out / "combine_ratio.csv")
    assert ratio.pxap.isna().tolist() == [True, False]  # sorted by ratio: b (0.4) has no masks
    pr = pd.read_csv(out / "pr_curve.csv")
    assert set(pr.variant) == {"a"} and len(pr) == len(s["pxap"]["thresholds"])
    assert pr.recall.tolist() == pytest.approx(s["pxap"]["recall"])
    assert (out / "pr_curve.png").stat().st_size > 0


def test_to_markdown():
    md = to_markdown(pd.DataFrame({"a": ["x", None], "b": [1.234, np.nan]}))
    assert md.splitlines() == ["| a | b |", "|---|---|", "| x | 1.2 |", "| – | – |"]


def test_markdown_writes_thresholds_as_configured():
    """A threshold column keeps the config's precision (cam_thr 0.23 is not shown as 0.2); metrics keep 1 decimal."""
    import pandas as pd

    from genpromp.evaluation.tables import to_markdown

    md = to_markdown(pd.DataFrame({"metric": [87.04, 100.0], "fixed_threshold": [0.23, 0.0],
                                   "oracle_threshold": [0.125, None]}))
    assert md.splitlines()[2] == "| 87.0 | 0.23 | 0.125 |"
    assert md.splitlines()[3] == "| 100.0 | 0 | – |"


def _summaries(tmp_path, d, ev, runs=("genpromp", "no_stage2"), ratios=(0.0, 0.6, 1.0)):
    """Main summaries of ``runs`` (top1_w0.60) and a gtk ratio sweep of the first run, all written from
    one evaluator, plus the baselines; returns (main paths, sweep paths, baseline paths, meta)."""
    main, sweep, meta = [], [], {}
    for run in runs:
        p = tmp_path / f"cub_demo/{run}/eval/top1_w0.60_t0-99/summary.json"
        write_evaluation(ev, p.with_name("per_image.parquet"), p)
        meta[str(p)] = {"dataset": "cub_demo", "run": run, "variant": "top1_w0.60_t0-99", "mode": "top1", "ratio": 0.6}
        main.append(p)
    for w in ratios:
        p = tmp_path / f"cub_demo/{runs[0]}/eval/gtk_w{w:.2f}_t0-99/summary.json"
        write_evaluation(ev, p.with_name("per_image.parquet"), p)
        meta[str(p)] = {"dataset": "cub_demo", "run": runs[0], "variant": f"gtk_w{w:.2f}_t0-99", "mode": "gtk",
                        "ratio": w}
        sweep.append(p)
    base = []
    for name, bev in evaluate_baselines(d["index"], SETTINGS, scores_path=d["scores"]).items():
        p = tmp_path / f"cub_demo/baselines/{name}/summary.json"
        write_evaluation(bev, p.with_name("per_image.parquet"), p, {"dataset": "cub_demo", "baseline": name})
        base.append(p)
    return main, sweep, base, meta


def _md_rows(path):
    table = [[c.strip() for c in ln.strip("|").split("|")] for ln in path.read_text().splitlines()
             if ln.startswith("|")]
    return [dict(zip(table[0], r)) for r in table[2:]]


def test_intervals_in_every_table(tmp_path):
    d = write_dataset(tmp_path, n=8, mode="top1", shard_size=4)
    ev = evaluate_cache(d["cams"], d["index"], SETTINGS, scores_path=d["scores"])
    main, sweep, base, meta = _summaries(tmp_path, d, ev)
    out = tmp_path / "tables"
    write_tables(out, main, sweep, base, meta, bootstrap={"samples": 200, "seed": 3, "level": 0.9})
    t = pd.read_csv(out / "main.csv")
    measured = t[t.source != "paper"]
    for k in ("gt_known", "top1_loc", "top5_loc", "max_box_acc_v2", "max_box_acc", "cls1", "cls5"):
        assert measured[f"{k}_lo"].notna().all(), k
        assert (measured[f"{k}_lo"] <= measured[k] + 1e-9).all() and (measured[k] <= measured[f"{k}_hi"] + 1e-9).all()
    assert t[t.source == "paper"].gt_known_lo.isna().all() and "pxap_lo" not in t.columns
    s = ev.compute()
    ours = t[t.source == "ours"].iloc[0]
    assert ours.cls1 == pytest.approx(s["tscam"]["cls1"]) and ours.n_images == 8
    assert ours.max_box_acc == pytest.approx(s["wsol"]["v1"]["max_box_acc"]["0.5"])
    cell = next(r for r in _md_rows(out / "main.md") if r["source"] == "ours")["gt_known"]
    assert cell == f"{ours.gt_known:.1f} [{ours.gt_known_lo:.1f}, {ours.gt_known_hi:.1f}]"
    assert "gt_known_lo" not in (out / "main.md").read_text() and "90% bootstrap" in (out / "main.md").read_text()
    ratio = pd.read_csv(out / "combine_ratio.csv")
    assert ratio[["gt_known_lo", "gt_known_hi", "max_box_acc_v2_lo", "max_box_acc_v2_hi"]].notna().all().all()
    curve = pd.read_csv(out / "threshold_curve.csv")
    assert len(curve) == 2 * 10 and (curve.gt_known_lo <= curve.gt_known + 1e-9).all()
    assert (curve.top1_loc <= curve.top1_loc_hi + 1e-9).all()
    # the same seed gives the same files
    again = tmp_path / "again"
    write_tables(again, main, sweep, base, meta, bootstrap={"samples": 200, "seed": 3, "level": 0.9})
    assert (again / "main.csv").read_text() == (out / "main.csv").read_text()
    assert (again / "paired.csv").read_text() == (out / "paired.csv").read_text()


def test_paired_table_rows(tmp_path):
    d = write_dataset(tmp_path, n=8, mode="top1", shard_size=4)
    ev = evaluate_cache(d["cams"], d["index"], SETTINGS, scores_path=d["scores"])
    main, sweep, base, meta = _summaries(tmp_path, d, ev)
    out = tmp_path / "tables"
    write_tables(out, main, sweep, base, meta, bootstrap={"samples": 100}, main_run="genpromp", combine_ratio=0.6)
    paired = pd.read_csv(out / "paired.csv")
    got = {(r.comparison, r.a, r.a_variant, r.b, r.b_variant if isinstance(r.b_variant, str) else None, r.metric)
           for r in paired.itertuples()}
    assert got == {
        ("run", "genpromp", "top1_w0.60_t0-99", "no_stage2", "top1_w0.60_t0-99", m)
        for m in ("gt_known", "top1_loc", "max_box_acc_v2")} | {
        ("baseline", "genpromp", "top1_w0.60_t0-99", "center box", None, m)
        for m in ("gt_known", "top1_loc", "max_box_acc_v2")} | {
        ("combine_ratio", "genpromp", "gtk_w0.60_t0-99", "genpromp", f"gtk_w{w}_t0-99", m)
        for w in ("0.00", "1.00") for m in ("gt_known", "max_box_acc_v2")}
    same = paired[paired.comparison != "baseline"]  # identical per-image tables on both sides
    assert (same[["difference", "difference_lo", "difference_hi"]] == 0).all().all()
    centre = pd.read_csv(tmp_path / "tables/main.csv").query("method == 'center box'").iloc[0]
    row = paired[(paired.comparison == "baseline") & (paired.metric == "gt_known")].iloc[0]
    assert row.b_value == pytest.approx(centre.gt_known) and row.n_images == 8
    assert row.difference == pytest.approx(row.a_value - row.b_value)
    assert row.difference_lo <= row.difference <= row.difference_hi
    md = _md_rows(out / "paired.md")
    assert md[0]["difference"].count("[") == 1 and "same resamples" in (out / "paired.md").read_text()


def test_paired_uses_only_common_images(tmp_path):
    """A side evaluated on fewer images is compared on the images both have."""
    import pyarrow.parquet as pq

    d = write_dataset(tmp_path, n=8, mode="top1", shard_size=4)
    ev = evaluate_cache(d["cams"], d["index"], SETTINGS, scores_path=d["scores"])
    main, _, _, meta = _summaries(tmp_path, d, ev, ratios=())
    other = main[1]
    sub = Evaluator(SETTINGS)
    for r in ev.results[:5]:
        sub.add_result(r)
    write_evaluation(sub, other.with_name("per_image.parquet"), other)
    out = tmp_path / "tables"
    write_tables(out, main, (), (), meta, bootstrap={"samples": 50})
    paired = pd.read_csv(out / "paired.csv")
    gk = paired[paired.metric == "gt_known"].iloc[0]
    first5 = pq.read_table(main[0].with_name("per_image.parquet")).to_pandas().head(5)
    assert gk.n_images == 5 and gk.a_value == pytest.approx(first5.gt_known.mean() * 100)


def test_stale_per_image_table_is_an_error(tmp_path):
    from genpromp.errors import InputError

    d = write_dataset(tmp_path, n=6, mode="top1", shard_size=3)
    ev = evaluate_cache(d["cams"], d["index"], SETTINGS, scores_path=d["scores"])
    main, _, _, meta = _summaries(tmp_path, d, ev, runs=("genpromp",), ratios=())
    s = json.loads(main[0].read_text())
    s["tscam"]["gt_known"] += 10.0
    main[0].write_text(json.dumps(s))
    with pytest.raises(InputError, match="gt_known from the per-image table"):
        write_tables(tmp_path / "tables", main, (), (), meta, bootstrap={"samples": 20})


def test_markdown_interval_cells():
    md = to_markdown(pd.DataFrame({"m": [87.46, 50.0, None], "m_lo": [81.04, None, None], "m_hi": [93.0, None, None],
                                   "n": [3, 4, 5]}))
    assert md.splitlines()[:3] == ["| m | n |", "|---|---|", "| 87.5 [81.0, 93.0] | 3 |"]
    assert md.splitlines()[3:] == ["| 50.0 | 4 |", "| – | 5 |"]


def test_tables_plan_functions():
    from genpromp import plan

    meta = {"results/cub/g/eval/top1_w0.60_t0-99/summary.json": {"dataset": "cub", "run": "g",
                                                                 "variant": "top1_w0.60_t0-99"}}
    assert plan.per_image_files(meta, list(meta)) == ["results/cub/g/eval/top1_w0.60_t0-99/per_image.parquet"]
    assert plan.baseline_per_images(meta) == ["results/cub/baselines/center/per_image.parquet",
                                              "results/cub/baselines/full/per_image.parquet"]
    assert plan.tables_params({}) == {"bootstrap": {"samples": 1000, "seed": 0, "level": 0.95}, "main_run": None,
                                      "combine_ratio": None}
    config = {"runs": {"a": {}, "b": {}}, "test": {"combine_ratio": 0.4},
              "evaluation": {"bootstrap": {"samples": 50, "seed": 2, "level": 0.9}}}
    assert plan.tables_params(config) == {"bootstrap": {"samples": 50, "seed": 2, "level": 0.9}, "main_run": "a",
                                          "combine_ratio": 0.4}


def test_main_table_labels_runs_by_method(tmp_path):
    from genpromp.evaluation.tables import main_table
    d = write_dataset(tmp_path, n=4, mode="gtk", shard_size=2)
    ev = evaluate_cache(d["cams"], d["index"], SETTINGS)
    paths, meta = [], {}
    for run, method in (("genpromp", None), ("cam", "cam")):
        p = tmp_path / f"cub_demo/{run}/eval/summary.json"
        write_evaluation(ev, p.with_name("per_image.parquet"), p)
        meta[str(p)] = {"dataset": "cub_demo", "run": run, "variant": "gtk_w0.60_t0-99", "mode": "gtk", "ratio": 0.6}
        if method:
            meta[str(p)]["method"] = method
        paths.append(p)
    main = main_table(paths, meta)
    ours = main[main.source == "ours"].set_index("run")
    assert ours.loc["genpromp", "method"] == "GenPromp (ours)"
    assert ours.loc["cam", "method"] == "CAM (Zhou et al. 2016)"
