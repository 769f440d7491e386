"""Tables from summaries written by the evaluator: content, paper rows, files."""

import cv2
import numpy as np
import pandas as pd
import pytest

from genpromp.evaluation.evaluate import evaluate_baselines, evaluate_cache, write_evaluation
from genpromp.evaluation.evaluator import EvalSettings
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
