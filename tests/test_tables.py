"""Tables from summaries written by the evaluator: content, paper rows, files."""

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


def test_to_markdown():
    md = to_markdown(pd.DataFrame({"a": ["x", None], "b": [1.234, np.nan]}))
    assert md.splitlines() == ["| a | b |", "|---|---|", "| x | 1.2 |", "| – | – |"]
