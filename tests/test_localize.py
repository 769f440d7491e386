"""genpromp localize: the map of an image and class equals the workflow's CAM cache, the boxes equal the
evaluation functions' boxes, and bad requests fail clearly."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cam_fixtures import cam_config, cam_world, tiny_model_dir  # noqa: F401  (fixtures)
from genpromp.cams.cache import CamCache, write_cam_index, write_cam_shard
from genpromp.cams.embeddings import build_run_embeddings, read_embeddings
from genpromp.cams.extract import ImageRecord, extract_cams, settings_from_config
from genpromp.cli import main as cli_main
from genpromp.errors import GenprompError, InputError
from genpromp.evaluation.metrics import tscam_box, wsol_boxes
from genpromp.evaluation.tscam import prepare_tscam_cam
from genpromp.evaluation.wsol import prepare_wsol_cam
from genpromp.localize import image_ids_for, localize, resolve_target
from genpromp.models.loading import load_components
from genpromp.prompts import token_index

CLASS = 2
TAUS = (0.1, 0.35, 0.6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, repo_root, tiny_model_dir, cam_world):  # noqa: F811
    """Run embeddings and the workflow's CAM cache (mode gtk) of all 7 images for class CLASS."""
    import pandas as pd

    base = tmp_path_factory.mktemp("localize")
    config = cam_config(repo_root, tiny_model_dir, cam_world)
    emb_path = build_run_embeddings(tiny_model_dir, cam_world["classes"], str(cam_world["tokens"]),
                                    base / "embeddings.safetensors")
    index = pd.read_parquet(cam_world["index"])
    comps = load_components(tiny_model_dir)
    test = config["test"]
    settings = settings_from_config(config, "gtk", test["combine_ratio"], test["timesteps"],
                                    token_index(comps.tokenizer))
    records = [ImageRecord(i, str(cam_world["root"] / p), CLASS) for i, p in zip(index["image_id"], index["path"])]
    ids, class_ids, cams = extract_cams(comps, read_embeddings(emb_path), records, settings, torch.device("cpu"),
                                        torch.float32)
    cache = base / "cams"
    write_cam_index([write_cam_shard(cache / "shard-00000.npz", ids, class_ids, cams)], cache / "index.parquet",
                    ("gt",))
    images = [str(cam_world["root"] / p) for p in index["path"]]
    return dict(config=config, emb=emb_path, cache=CamCache(cache), images=images, ids=list(index["image_id"]),
                base=base)


def test_map_and_boxes_equal_the_workflow_cache(setup, cam_world):  # noqa: F811
    target = resolve_target("c2", classes=cam_world["classes"])
    assert (target.kind, target.class_id, target.concept_token, target.meta_token) == ("class", 2, "<cub-2>", "bird")
    out = setup["base"] / "out"
    results = localize(setup["images"], target, config=setup["config"], embeddings=setup["emb"],
                       root=cam_world["root"], taus=TAUS, device="cpu", out_dir=out)
    assert [r.image_id for r in results] == setup["ids"]
    cfg = setup["config"]
    thr, frame, wframe = cfg["datasets"]["cub_demo"]["cam_thr"], cfg["evaluation"]["frame"], cfg["evaluation"]["wsol_frame"]
    for res in results:
        cid, cached = setup["cache"].get(res.image_id, "gt")
        assert cid == CLASS
        assert res.cam.dtype == np.float16 and np.array_equal(res.cam.astype(np.float32), cached)
        assert res.tscam_box == [int(v) for v in tscam_box(prepare_tscam_cam(cached, frame), thr)]
        u8 = prepare_wsol_cam(cached, wframe)
        for tau in TAUS:
            assert res.wsol[tau][0] == wsol_boxes(u8, tau, False)[0].tolist()
            assert res.wsol[tau][1] == wsol_boxes(u8, tau, True).tolist()
        # the files
        stem = res.image_id.replace("/", "__")
        assert np.array_equal(np.load(out / f"{stem}.npy"), res.cam)
        doc = json.loads((out / f"{stem}.json").read_text())
        assert doc["tscam"]["box_frame"] == res.tscam_box and doc["tscam"]["cam_thr"] == thr
        assert [b["tau"] for b in doc["wsol"]["boxes"]] == list(TAUS)
        assert doc["wsol"]["boxes"][1]["all_frame"] == res.wsol[TAUS[1]][1]
        x1, y1, x2, y2 = res.tscam_box
        assert doc["tscam"]["box_image"] == [round(x1 * res.width / frame, 2), round(y1 * res.height / frame, 2),
                                             round(x2 * res.width / frame, 2), round(y2 * res.height / frame, 2)]
        assert doc["target"]["concept_token"] == "<cub-2>" and doc["width"] == res.width
        heat = np.asarray(Image.open(out / f"{stem}.heatmap.png"))
        assert heat.shape == (res.height, res.width) and heat.max() == 255
        assert np.asarray(Image.open(out / f"{stem}.overlay.png")).shape == (frame, frame, 3)


def test_token_table_and_single_image_give_the_same_map(setup, cam_world, tiny_model_dir):  # noqa: F811
    """Concept-token embeddings computed on the fly, and another batch layout, move the map only by rounding."""
    target = resolve_target("<cub-2>", tokens=cam_world["tokens"])
    assert (target.kind, target.class_id, target.meta_token) == ("token", 2, "bird")
    (res,) = localize(setup["images"][4:5], target, config=setup["config"], tokens=cam_world["tokens"],
                      root=cam_world["root"], device="cpu")
    _, cached = setup["cache"].get(setup["ids"][4], "gt")
    assert np.abs(res.cam.astype(np.float32) - cached).max() < 2e-3
    # another class gives another map (the comparison above can fail)
    (other,) = localize(setup["images"][4:5], resolve_target("<cub-0>", tokens=cam_world["tokens"]),
                        config=setup["config"], tokens=cam_world["tokens"], root=cam_world["root"], device="cpu")
    assert np.abs(other.cam.astype(np.float32) - cached).max() > 1e-2


def test_free_word_equals_ratio_zero(setup, cam_world):  # noqa: F811
    """A free word's map is the meta-word (f_d) map: a class at ratio 0 whose meta word is that word."""
    img = setup["images"][:2]
    word = localize(img, resolve_target(word="bird"), config=setup["config"], root=cam_world["root"], device="cpu")
    cls = localize(img, resolve_target("c1", classes=cam_world["classes"]), config=setup["config"], ratio=0.0,
                   embeddings=setup["emb"], root=cam_world["root"], device="cpu")
    for a, b in zip(word, cls):
        assert np.abs(a.cam.astype(np.float32) - b.cam.astype(np.float32)).max() < 2e-3


def test_cli_writes_files_and_has_an_example(setup, cam_world, capsys, tmp_path):  # noqa: F811
    with pytest.raises(SystemExit):
        cli_main(["localize", "--help"])
    assert "examples:" in capsys.readouterr().out
    cfg = tmp_path / "config.yaml"
    import yaml
    cfg.write_text(yaml.safe_dump(setup["config"]))
    rc = cli_main(["localize", setup["images"][0], "--class", "<cub-1>", "--tokens", str(cam_world["tokens"]),
                   "--config", str(cfg), "--device", "cpu", "--tau", "0.3", "--out", str(tmp_path / "o")])
    assert rc == 0
    stem = image_ids_for(setup["images"][:1])[0]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(
        f"{stem}{s}" for s in (".npy", ".json", ".heatmap.png", ".overlay.png"))
    assert json.loads((tmp_path / "o" / f"{stem}.json").read_text())["wsol"]["boxes"][0]["tau"] == 0.3


def test_bad_requests(setup, cam_world, tmp_path, capsys):  # noqa: F811
    with pytest.raises(InputError, match=r"no class 'c22'.*did you mean 'c2'") as err:
        resolve_target("c22", classes=cam_world["classes"])
    assert err.value.path == str(cam_world["classes"])
    with pytest.raises(InputError, match="no concept token '<cub-9>'"):
        resolve_target("<cub-9>", tokens=cam_world["tokens"])
    with pytest.raises(GenprompError, match="--classes"):
        resolve_target("c1")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match="cannot decode image") as err:
        localize([setup["images"][0], str(bad)], resolve_target(word="bird"), config=setup["config"], device="cpu")
    assert err.value.path == str(bad)
    (tmp_path / "notsd" / "unet").mkdir(parents=True)
    with pytest.raises(GenprompError, match=r"not a diffusers Stable Diffusion folder \(missing vae, text_encoder"):
        localize(setup["images"][:1], resolve_target(word="bird"), config=setup["config"], model=tmp_path / "notsd",
                 device="cpu")
    with pytest.raises(GenprompError, match="not a single CLIP token"):
        localize(setup["images"][:1], resolve_target(word="hummingbirdish"), config=setup["config"], device="cpu")
    rc = cli_main(["localize", setup["images"][0], "--class", "nope", "--classes", str(cam_world["classes"]),
                   "--out", str(tmp_path / "x")])
    assert rc == 1 and "no class 'nope'" in capsys.readouterr().err
