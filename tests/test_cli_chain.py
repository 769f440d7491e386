"""The whole method through the `genpromp` command line alone (no Snakemake), on the tiny test world.

The commands are the ones of README.md § "Without Snakemake", read from the README, so the README
cannot drift from what works. They run in a scratch folder holding a copy of tests/configs/tiny.yaml
as config/config.yaml (one dataset, one CAM shard) and the shared resources/assets/. Marked slow:
about 2.5 CPU-minutes (5 min wall on 2 shared cores), most of it pretrain-tiny and the two training stages.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
import yaml

from genpromp.cli import main as cli_main

from workflow_utils import REPO, prepare_workdir


def readme_commands():
    """The command lines of README.md § Without Snakemake, each split into words (without `genpromp`)."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Without Snakemake\n(.*?)^## ", text, re.S | re.M).group(1)
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert all(ln.startswith("genpromp ") for ln in lines), lines
    return [shlex.split(ln)[1:] for ln in lines]


def chain_config():
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    config["datasets"] = {"cub_demo": config["datasets"]["cub_demo"]}
    config["test"]["shard_size"] = 64  # the 12 test images in one CAM shard, as in the README
    return config


def test_readme_chain_names_every_stage():
    names = [argv[0] for argv in readme_commands()]
    for stage in ["index", "import-scores", "train-token", "convert-tokens", "train-unet", "embeddings",
                  "extract-cams", "cam-index", "evaluate", "tables"]:
        assert stage in names, stage
    assert names.index("embeddings") < names.index("extract-cams") < names.index("cam-index") < names.index("evaluate")


@pytest.mark.slow
def test_whole_chain_through_the_cli(tmp_path, monkeypatch, capsys):
    work = prepare_workdir(tmp_path)
    (work / "config").mkdir()
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(chain_config()))
    monkeypatch.chdir(work)
    for argv in readme_commands():
        rc = cli_main(argv)
        assert rc == 0, f"genpromp {' '.join(argv)} failed:\n{capsys.readouterr().err[-3000:]}"
    results = work / "results"
    summary = json.loads((results / "cub_demo/genpromp/eval/top1_w0.60_t0-99/summary.json").read_text())
    assert summary["n_images"] == 12
    assert (summary["dataset"], summary["run"], summary["variant"], summary["mode"]) == \
        ("cub_demo", "genpromp", "top1_w0.60_t0-99", "top1")
    assert 0 <= summary["tscam"]["gt_known"] <= 100
    index = pd.read_parquet(results / "cub_demo/genpromp/cams/top1_w0.60_t0-99/index.parquet")
    assert len(index) == 12 * 2 and set(index["role"]) == {"top1", "gt"}  # top1 mode: two maps per image
    base = json.loads((results / "cub_demo/baselines/center/summary.json").read_text())
    assert base["dataset"] == "cub_demo" and base["baseline"] == "center"
    main = pd.read_csv(results / "tables" / "main.csv")
    ours = main[main["source"] == "ours"]
    assert ours["dataset"].tolist() == ["cub_demo"] and ours["run"].tolist() == ["genpromp"]
    assert set(main[main["source"] == "baseline"]["dataset"]) == {"cub_demo"}


def test_cam_index_command_refuses_a_partial_cache(tmp_path, capsys):
    import numpy as np

    from genpromp.cams.cache import write_cam_shard

    folder = tmp_path / "top1_w0.60_t0-99"
    write_cam_shard(folder / "shard-00000.npz", ["a", "b"], [[0, 1], [1, 1]], np.zeros((2, 2, 4, 4), np.float16))
    write_cam_shard(folder / "shard-00002.npz", ["c"], [[0, 0]], np.zeros((1, 2, 4, 4), np.float16))
    assert cli_main(["cam-index", str(folder), "--shards", "3"]) == 1
    assert "missing [1]" in capsys.readouterr().err and not (folder / "index.parquet").exists()
    assert cli_main(["cam-index", str(folder)]) == 0
    index = pd.read_parquet(folder / "index.parquet")
    assert index["image_id"].tolist() == ["a", "a", "b", "b", "c", "c"]
    assert index["role"].tolist() == ["top1", "gt"] * 3 and index["shard"].tolist() == [0, 0, 0, 0, 2, 2]
    assert cli_main(["cam-index", str(tmp_path / "cams")]) == 1
    assert "cannot tell the CAM mode" in capsys.readouterr().err


def test_baselines_without_a_dataset_name_are_refused(tmp_path, capsys):
    index = tmp_path / "elsewhere" / "test.parquet"
    index.parent.mkdir()
    pd.DataFrame({"image_id": ["a"], "path": ["a.jpg"], "label": [0], "width": [8], "height": [8],
                  "boxes": [[[0.0, 0.0, 4.0, 4.0]]]}).to_parquet(index)
    rc = cli_main(["evaluate", "--baselines", str(tmp_path / "b"), "--index", str(index)])
    assert rc == 1
    assert "--baselines needs --dataset NAME" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
