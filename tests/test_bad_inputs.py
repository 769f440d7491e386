"""Nothing lost, nothing silent: every malformed input is refused through the public entry points.

Each case goes through the ``genpromp`` command line (``genpromp.cli.main``), expects exit status 1
with a message naming the file (and line / row / key), and checks that the output was not written
and that no temporary file (``.<name>.tmp.*``) was left next to it. Cases that must *work*
(grayscale / CMYK / 16-bit / palette images, extra images in a score file) check the output instead.

``docs/bad_inputs.md`` lists every bad input with the test that covers it;
``test_bad_inputs_doc_is_in_sync`` checks that every test id listed there exists.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from genpromp.cams.cache import roles_for_mode, shard_filename, write_cam_index, write_cam_shard
from genpromp.cams.extract import load_test_image
from genpromp.cli import main as cli_main
from genpromp.data.images import read_rgb

from data_fixtures import TOKENIZER_DIR, make_jpeg, write_cub_fixture
from eval_fixtures import write_dataset

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "bad_inputs.md"
BASE_CONFIG = REPO / "config" / "config.yaml"


# ----------------------------------------------------------------------------- helpers

def leftovers(folder):
    """Temporary files / folders left in ``folder`` by an interrupted atomic write."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if re.match(r"^\..*\.tmp", p.name) or p.name.endswith(".tmp"))


def assert_refused(capsys, argv, outputs, *patterns):
    """Run the CLI: exit status 1, stderr matches every pattern, no output and no temp file left."""
    capsys.readouterr()
    rc = cli_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 1, f"exit status {rc}, stderr:\n{err}"
    assert err.startswith(f"genpromp {argv[0]}: error: "), err
    for pattern in patterns:
        assert re.search(pattern, err), f"{pattern!r} not in:\n{err}"
    for out in map(Path, outputs):
        assert not out.exists(), f"{out} was written although the input was refused"
        assert not leftovers(out.parent), f"temporary files left in {out.parent}: {leftovers(out.parent)}"
    return err


def write_config(tmp_path, datasets, **overrides):
    """The shipped config with its datasets replaced (and top-level sections merged); return the YAML path."""
    config = yaml.safe_load(BASE_CONFIG.read_text())
    config["datasets"] = datasets
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cub_entry(root, **extra):
    return {"layout": "cub", "root": str(root), "token_prefix": "cub", "meta_word": "bird", **extra}


def index_argv(config, out, dataset="cub"):
    return ["index", dataset, "--config", config, "--out", out, "--tokenizer", TOKENIZER_DIR, "--threads", "1"]


def index_outputs(out):
    return [Path(out) / f"{name}.parquet" for name in ("train", "test", "classes")]


# ----------------------------------------------------------------------------- images (genpromp index)

BLUE_JAY = "images/002.Blue_Jay/Blue_Jay_0003.jpg"   # a test image of the CUB fixture, line 3 of images.txt


def _corrupt(path):
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG " * 4)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


IMAGE_DAMAGE = {"missing": Path.unlink, "corrupt": _corrupt, "truncated": _truncate}


@pytest.mark.parametrize("damage", list(IMAGE_DAMAGE), ids=list(IMAGE_DAMAGE))
def test_index_cli_refuses_bad_image(tmp_path, capsys, damage):
    root = write_cub_fixture(tmp_path / "CUB")
    IMAGE_DAMAGE[damage](root / BLUE_JAY)
    out = tmp_path / "index"
    config = write_config(tmp_path, {"cub": cub_entry(root)})
    assert_refused(capsys, index_argv(config, out), index_outputs(out),
                   r"images\.txt, line 3", "Blue_Jay_0003.jpg",
                   {"missing": "not found", "corrupt": "not a readable image|cannot decode",
                    "truncated": "truncated"}[damage])
    assert not out.exists()


def _gray(path):
    Image.fromarray((np.arange(32 * 32) % 256).astype(np.uint8).reshape(32, 32), "L").save(path)


def _cmyk(path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, format="JPEG")


def _png16(path):
    img = Image.fromarray((np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60))
    assert img.mode.startswith("I;16")
    img.save(path)


def _palette(path):
    img = Image.new("P", (32, 32))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.paste(1, (8, 8, 24, 24))
    img.save(path)


IMAGE_MODES = {"grayscale": (_gray, ".png"), "cmyk": (_cmyk, ".jpg"), "png16": (_png16, ".png"),
               "palette": (_palette, ".png")}


@pytest.mark.parametrize("mode", list(IMAGE_MODES), ids=list(IMAGE_MODES))
def test_index_cli_accepts_non_rgb_images(tmp_path, capsys, mode):
    """Non-RGB test images index (fully decoded) and load as 3-channel RGB for CAM extraction."""
    write_image, ext = IMAGE_MODES[mode]
    name = f"002.Blue_Jay/Blue_Jay_0003{ext}"
    root = write_cub_fixture(tmp_path / "CUB", images_text="1 001.Red_Bird/Red_Bird_0001.jpg\n"
                             f"2 001.Red_Bird/Red_Bird_0002.jpg\n3 {name}\n")
    (root / BLUE_JAY).unlink()
    write_image(root / "images" / name)
    out = tmp_path / "index"
    config = write_config(tmp_path, {"cub": cub_entry(root)})
    rc = cli_main([str(a) for a in index_argv(config, out)])
    assert rc == 0, capsys.readouterr().err
    test = pd.read_parquet(out / "test.parquet")
    row = test.set_index("image_id").loc["002.Blue_Jay/Blue_Jay_0003"]
    assert (row["width"], row["height"]) == (32, 32) and row["path"] == f"images/{name}"
    rgb = read_rgb(root / row["path"])
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    if mode == "cmyk":
        assert rgb[..., 0].mean() > 200 and rgb[..., 1].mean() < 60            # red stays red
    elif mode == "palette":
        assert rgb[16, 16].tolist() == [10, 200, 30] and rgb[0, 0].tolist() == [0, 0, 0]
    else:
        assert (rgb[..., 0] == rgb[..., 1]).all() and rgb.max() > 200          # gray, full range kept
    pixels = load_test_image(root / row["path"], 64)
    assert pixels.shape == (3, 64, 64) and pixels.dtype == torch.float32 and torch.isfinite(pixels).all()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "dotdot inside"])
def test_index_cli_refuses_paths_outside_root(tmp_path, capsys, how):
    """An image path in images.txt that escapes the dataset root (../, absolute) is refused, even when
    the ../ would lead back inside."""
    outside = make_jpeg(tmp_path / "secret" / "x.jpg", 50, 20, 7)
    entry = {"dotdot": "../../secret/x.jpg", "absolute": str(outside),
             "dotdot inside": "001.Red_Bird/../002.Blue_Jay/Blue_Jay_0003.jpg"}[how]
    root = write_cub_fixture(tmp_path / "CUB", images_text="1 001.Red_Bird/Red_Bird_0001.jpg\n"
                             f"2 {entry}\n3 002.Blue_Jay/Blue_Jay_0003.jpg\n")
    out = tmp_path / "index"
    config = write_config(tmp_path, {"cub": cub_entry(root)})
    assert_refused(capsys, index_argv(config, out), index_outputs(out), r"images\.txt, line 2",
                   r"must be relative to .* and must not contain '\.\.'")


@pytest.mark.parametrize("how", ["images folder", "one image"])
def test_symlinked_images_are_inside_the_root(tmp_path, capsys, how):
    """A dataset whose images/ folder (or one image) is a symlink to another disk is indexed, and the
    training and CAM stages open its images through the same path check (lexical containment)."""
    from genpromp.cams.extract import shard_records
    from genpromp.errors import InputError
    from genpromp.io import resolve_inside
    from genpromp.training.data import load_training_table

    root = write_cub_fixture(tmp_path / "CUB")
    elsewhere = tmp_path / "other_disk"
    if how == "images folder":
        (root / "images").rename(elsewhere)
        (root / "images").symlink_to(elsewhere, target_is_directory=True)
        rel = "001.Red_Bird/Red_Bird_0001.jpg"
    else:
        rel = "002.Blue_Jay/Blue_Jay_0003.jpg"
        target = elsewhere / "x.jpg"
        target.parent.mkdir()
        (root / "images" / rel).rename(target)
        (root / "images" / rel).symlink_to(target)
    out = tmp_path / "index"
    config = write_config(tmp_path, {"cub": cub_entry(root)})
    rc = cli_main([str(a) for a in index_argv(config, out)])
    assert rc == 0, capsys.readouterr().err
    paths = set(pd.read_parquet(out / "train.parquet")["path"]) | set(pd.read_parquet(out / "test.parquet")["path"])
    assert f"images/{rel}" in paths
    # CAM extraction (test split) and training (train split) accept the same paths
    test_files = [r.path for r in shard_records(out / "test.parquet", root, 0, 10)]
    table = load_training_table(out / "train.parquet", out / "classes.parquet", root, class_ids=[0])
    train_files = [str(p) for paths in table.images.values() for p in paths]
    assert sorted(test_files + train_files) == sorted(str(root.absolute() / p) for p in paths)
    full = resolve_inside(root, f"images/{rel}", out / "test.parquet")
    assert full == root.absolute() / "images" / rel and read_rgb(full).ndim == 3
    with pytest.raises(InputError, match="must not contain"):
        resolve_inside(root, "images/../../other_disk/x.jpg")


# ----------------------------------------------------------------------------- config

BAD_CONFIGS = {
    "unknown key": ({"test": {"combne_ratio": 0.5}}, r"unknown config key test\.combne_ratio"),
    "wrong type": ({"test": {"batch_size": "eight"}}, r"config key test\.batch_size is the string 'eight'; expected integer"),
    "threshold out of range": ("cam_thr", r"config key datasets\.cub\.cam_thr: 1\.5 is greater than the maximum of 1"),
    "ratio out of range": ({"test": {"combine_ratio": -0.2}}, r"config key test\.combine_ratio: -0\.2 is less than"),
    "ratio list out of range": ({"test": {"combine_ratios": [0.0, 1.2]}}, r"config key test\.combine_ratios\.1: 1\.2"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS), ids=list(BAD_CONFIGS))
def test_bad_config_refused_before_any_output(tmp_path, capsys, case):
    override, pattern = BAD_CONFIGS[case]
    root = write_cub_fixture(tmp_path / "CUB")
    entry = cub_entry(root, cam_thr=1.5) if override == "cam_thr" else cub_entry(root)
    config = write_config(tmp_path, {"cub": entry}, **({} if override == "cam_thr" else override))
    out = tmp_path / "index"
    assert_refused(capsys, index_argv(config, out), index_outputs(out), "invalid configuration", pattern)
    assert not out.exists()


# ----------------------------------------------------------------------------- classifier scores

def _index_dir(tmp_path, ids=("a/1", "b/2"), n_classes=3):
    d = tmp_path / "index"
    d.mkdir()
    pd.DataFrame({"image_id": list(ids), "path": [f"{i}.jpg" for i in ids], "label": np.zeros(len(ids), np.int32),
                  "width": np.full(len(ids), 10, np.int32), "height": np.full(len(ids), 10, np.int32),
                  "boxes": [[[0.0, 0.0, 5.0, 5.0]]] * len(ids)}).to_parquet(d / "test.parquet")
    pd.DataFrame({"class_id": np.arange(n_classes, dtype=np.int32),
                  "concept_token": [f"<t-{i}>" for i in range(n_classes)]}).to_parquet(d / "classes.parquet")
    return d


BAD_SCORES = {
    "missing image": ('{"a/1.jpg": {"pred_scores": [1, 2, 3]}}', r"no scores for 1 test images: 'b/2'"),
    "wrong class count": ('{"a/1": {"pred_scores": [1, 2, 3]},\n"b/2.jpg": {"pred_scores": [1, 2]}}',
                          r"line 2: .*b/2\.jpg \(2 scores, expected 3\)"),
    "NaN": ('{"a/1": {"pred_scores": [1, 2, 3]},\n"b/2": {"pred_scores": [1, NaN, 2]}}', r"line 2: .*NaN"),
}


@pytest.mark.parametrize("case", list(BAD_SCORES), ids=list(BAD_SCORES))
def test_import_scores_cli_refuses(tmp_path, capsys, case):
    text, pattern = BAD_SCORES[case]
    src = tmp_path / "scores.json"
    src.write_text(text)
    out = tmp_path / "scores" / "democls.parquet"
    out.parent.mkdir()
    assert_refused(capsys, ["import-scores", src, "--index", _index_dir(tmp_path), "--out", out], [out],
                   re.escape(str(src)), pattern)


def test_import_scores_cli_warns_on_extra_images(tmp_path, capsys, caplog):
    src = tmp_path / "scores.json"
    src.write_text(json.dumps({"a/1": {"pred_scores": [1, 2, 3]}, "b/2": {"pred_scores": [3, 2, 1]},
                               "zz/unknown.jpg": {"pred_scores": [1, 1, 1]}}))
    out = tmp_path / "democls.parquet"
    with caplog.at_level(logging.WARNING):
        rc = cli_main(["import-scores", str(src), "--index", str(_index_dir(tmp_path)), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "1 entries are not test images" in caplog.text and "zz/unknown.jpg" in caplog.text
    assert pd.read_parquet(out)["image_id"].tolist() == ["a/1", "b/2"]


# ----------------------------------------------------------------------------- concept tokens

class _Evil:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _token_folder(tmp_path, n=2, dim=8):
    folder = tmp_path / "tokens"
    folder.mkdir()
    for i in range(n):
        torch.save({f"<cub-{i}>": torch.arange(dim, dtype=torch.float32) + i}, folder / f"{49408 + i}.bin")
    classes = tmp_path / "classes.parquet"
    pd.DataFrame({"class_id": np.arange(n, dtype=np.int32), "concept_token": [f"<cub-{i}>" for i in range(n)],
                  "meta_token": ["bird"] * n}).to_parquet(classes)
    return folder, classes


def test_convert_tokens_cli_refuses_unknown_class(tmp_path, capsys):
    folder, classes = _token_folder(tmp_path)
    torch.save({"<cub-7>": torch.zeros(8)}, folder / "49415.bin")
    out = tmp_path / "out" / "tokens.safetensors"
    assert_refused(capsys, ["convert-tokens", folder, out, "--classes", classes], [out],
                   r"49415\.bin: unknown class token '<cub-7>'")


def test_convert_tokens_cli_refuses_wrong_dimension(tmp_path, capsys):
    folder, classes = _token_folder(tmp_path, dim=8)
    out = tmp_path / "out" / "tokens.safetensors"
    assert_refused(capsys, ["convert-tokens", folder, out, "--classes", classes, "--dim", "768"], [out],
                   r"4940[89]\.bin: token '<cub-[01]>' has dimension 8, the text encoder expects 768")
    # one file of another width among correct ones
    torch.save({"<cub-1>": torch.zeros(16)}, folder / "49409.bin")
    assert_refused(capsys, ["convert-tokens", folder, out, "--classes", classes], [out], "different dimensions")


@pytest.mark.parametrize("how", ["torch.save", "raw pickle"])
def test_convert_tokens_cli_refuses_code_executing_pickle(tmp_path, capsys, how):
    folder, classes = _token_folder(tmp_path)
    marker = tmp_path / "pwned"
    if how == "torch.save":
        torch.save({"<cub-1>": _Evil(marker)}, folder / "49409.bin")
    else:
        (folder / "49409.bin").write_bytes(pickle.dumps(_Evil(marker)))
    out = tmp_path / "out" / "tokens.safetensors"
    assert_refused(capsys, ["convert-tokens", folder, out, "--classes", classes], [out],
                   r"49409\.bin: refused to load")
    assert not marker.exists(), "the pickle's code ran"


# ----------------------------------------------------------------------------- CAM cache (genpromp evaluate)

def _tamper(cams_dir, k, edit):
    """Rewrite shard k's arrays with ``edit(dict of arrays)`` applied (bypassing the writer's checks)."""
    path = cams_dir / shard_filename(k)
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name].copy() for name in data.files}
    edit(arrays)
    np.savez(path, **arrays)


def _set_nan(a):
    a["cams"][1, 0, 3, 3] = np.nan


def _set_negative(a):
    a["cams"][1, 0, 3, 3] = -0.5


def _wrong_shape(a):
    a["cams"] = a["cams"][:, :, :, :-1]        # [N, K, S, S-1]


def _drop_shard(cams_dir):
    (cams_dir / shard_filename(1)).unlink()


def _truncate_shard(cams_dir):
    path = cams_dir / shard_filename(1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


BAD_CACHES = {
    "nan": (lambda d: _tamper(d, 1, _set_nan), r"shard-00001\.npz: row 1 \(image_id 'c1/img_005'\) has a NaN"),
    "negative": (lambda d: _tamper(d, 1, _set_negative),
                 r"shard-00001\.npz: row 1 \(image_id 'c1/img_005'\) has a negative value"),
    "wrong shape": (lambda d: _tamper(d, 1, _wrong_shape), r"shard-00001\.npz: cams must have shape \[N=4, K, S, S\]"),
    "missing shard": (_drop_shard, r"index\.parquet, line 4: row 4 references shard 1 but .*shard-00001\.npz does not exist"),
    "truncated shard": (_truncate_shard, r"shard-00001\.npz: cannot read CAM shard"),
}


@pytest.mark.parametrize("case", list(BAD_CACHES), ids=list(BAD_CACHES))
def test_evaluate_cli_refuses_bad_cam_cache(tmp_path, capsys, case):
    d = write_dataset(tmp_path, n=10, mode="gtk", shard_size=4)      # shards 0, 1, 2 (4 + 4 + 2 images)
    damage, pattern = BAD_CACHES[case]
    damage(d["cams"])
    out = tmp_path / "eval"
    out.mkdir()
    per_image, summary = out / "per_image.parquet", out / "summary.json"
    assert_refused(capsys, ["evaluate", "--cams", d["cams"], "--index", d["index"], "--per-image", per_image,
                            "--summary", summary, "--sweep", "0", "1", "0.1"], [per_image, summary], pattern)
    state = out / "part-00000.json"
    assert_refused(capsys, ["evaluate", "--cams", d["cams"], "--index", d["index"], "--per-image", per_image,
                            "--shards", "1", "--state", state, "--sweep", "0", "1", "0.1"], [per_image, state],
                   "shard-00001.npz")


def test_evaluate_cli_refuses_cache_of_other_images(tmp_path, capsys):
    """A cache that misses test images, or holds images that are not in the index, is refused."""
    d = write_dataset(tmp_path, n=10, mode="gtk", shard_size=4)
    index = pq.read_table(d["index"]).to_pandas()
    extra = pd.concat([index, index.iloc[:1].assign(image_id="c9/not_cached")])
    extra.to_parquet(tmp_path / "more.parquet")
    out = tmp_path / "eval"
    out.mkdir()
    per_image, summary = out / "per_image.parquet", out / "summary.json"
    argv = ["evaluate", "--cams", d["cams"], "--per-image", per_image, "--summary", summary, "--sweep", "0", "1", "0.1"]
    assert_refused(capsys, argv + ["--index", tmp_path / "more.parquet"], [per_image, summary],
                   r"index\.parquet: 1 test images have no 'gt'-role map \(first: 'c9/not_cached'\)")
    index.iloc[1:].to_parquet(tmp_path / "fewer.parquet")
    assert_refused(capsys, argv + ["--index", tmp_path / "fewer.parquet"], [per_image, summary],
                   r"image 'c0/img_000' is in the CAM cache but not in the test index")


def test_cam_writer_refuses_bad_maps_without_leftovers(tmp_path):
    """The writer side: a NaN / negative / mis-shaped map never reaches disk, not even as a temp file."""
    from genpromp.errors import InputError
    ok = np.ones((2, 1, 4, 4), np.float32)
    for cams, pattern in ((np.where(np.arange(32).reshape(2, 1, 4, 4) == 20, np.nan, ok), "NaN"),
                          (-ok, "negative"), (np.ones((2, 1, 4, 3)), r"shape \[N=2, K, S, S\]")):
        with pytest.raises(InputError, match=pattern):
            write_cam_shard(tmp_path / "shard-00000.npz", ["a", "b"], [[0], [1]], cams)
        assert not (tmp_path / "shard-00000.npz").exists() and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- the table stays in sync

def _doc_test_ids():
    """(row text, node id) for every test id in the third column of docs/bad_inputs.md's tables."""
    ids = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not line.lstrip().startswith("|") or set(cells[0]) <= set("-: "):
            continue
        for node in re.findall(r"`(tests/[^`]+)`", cells[2]):
            ids.append((cells[0], node))
    return ids


def _collected(files):
    """Node ids pytest collects from ``files`` (paths relative to the repository)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *sorted(files)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {line.strip() for line in proc.stdout.splitlines() if "::" in line}


def test_bad_inputs_doc_is_in_sync():
    """Every node id in docs/bad_inputs.md is a test pytest collects (function and parametrize id)."""
    listed = _doc_test_ids()
    assert len({row for row, _ in listed}) >= 30, "docs/bad_inputs.md lists fewer bad inputs than expected"
    files = {node.partition("::")[0] for _, node in listed}
    missing_files = sorted(f for f in files if not (REPO / f).is_file())
    assert not missing_files, f"docs/bad_inputs.md names missing test files {missing_files}"
    collected = _collected(files)
    unknown = [f"{row}: {node}" for row, node in listed if node not in collected]
    assert not unknown, "docs/bad_inputs.md lists tests that do not exist:\n" + "\n".join(unknown)


def test_every_test_in_this_file_is_listed_in_the_doc():
    """The other direction: each test here (but the sync checks) appears in docs/bad_inputs.md."""
    listed = {node.partition("::")[2].partition("[")[0] for _, node in _doc_test_ids()
              if node.startswith("tests/test_bad_inputs.py")}
    here = set(re.findall(r"^def (test_\w+)\(", Path(__file__).read_text(), re.M))
    unlisted = here - listed - {"test_bad_inputs_doc_is_in_sync", "test_every_test_in_this_file_is_listed_in_the_doc"}
    assert not unlisted, f"tests not listed in docs/bad_inputs.md: {sorted(unlisted)}"
