"""The discriminative CAM baseline (genpromp.baselines): the CNN's class activation maps are Zhou et al.'s,
a trained net's maps peak on the discriminative part, its caches are valid CAM caches with the mode's slots,
and the peak analysis, the side-by-side figure and the run wiring behave."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from genpromp import layout, plan
from genpromp.baselines.cam import (
    CamNet,
    CamNetSettings,
    class_activation_maps,
    extract_cam_shard,
    load_cam_net,
    train_cam_baseline,
    train_cam_net,
)
from genpromp.baselines.compare import side_by_side
from genpromp.baselines.peaks import image_peaks, map_peaks, read_part_boxes
from genpromp.cams.cache import CamCache, write_cam_index
from genpromp.config import load_config
from genpromp.data.indexing import index_dataset
from genpromp.data.scores import import_scores
from genpromp.demo.parts import PartSettings
from genpromp.demo.world import PART_LISTING, write_cub_dataset
from genpromp.errors import InputError

TOKENIZER = "resources/assets/clip_tokenizer"


def test_cam_is_the_class_weighted_sum_of_the_last_features():
    torch.manual_seed(0)
    model = CamNet(3, (4, 6)).eval()
    x = torch.randn(2, 3, 16, 16)
    logits, feats = model(x)
    classes = torch.tensor([[2, 0], [1, 1]])
    cams = class_activation_maps(model, feats, classes)
    w = model.fc.weight.detach()
    for b in range(2):
        for s in range(2):
            ref = sum(w[classes[b, s], k] * feats[b, k] for k in range(feats.shape[1]))
            torch.testing.assert_close(cams[b, s], ref)
            # the GAP identity: the map's mean plus the bias is the class logit
            torch.testing.assert_close(cams[b, s].mean() + model.fc.bias[classes[b, s]], logits[b, classes[b, s]])


def _toy(n, gen):
    """Grey noise images with one 6x6 patch whose colour (red / blue) is the class; patch centres [N, 2]."""
    x = 0.1 * torch.randn(n, 3, 32, 32, generator=gen)
    labels = torch.arange(n) % 2
    centres = torch.randint(5, 27, (n, 2), generator=gen)
    for i in range(n):
        cy, cx = centres[i].tolist()
        x[i, :, cy - 3:cy + 3, cx - 3:cx + 3] = torch.tensor([0.9, -0.8, -0.8] if labels[i] == 0 else [-0.8, -0.8, 0.9])[:, None, None]
    return x, labels, centres


def test_a_trained_net_classifies_by_the_part_and_its_cam_peaks_there():
    gen = torch.Generator().manual_seed(0)
    x, y, _ = _toy(64, gen)
    settings = CamNetSettings(resolution=32, channels=(8, 16), epochs=25, batch_size=16, learning_rate=1e-2, shift=2)
    model, losses = train_cam_net(x, y, 2, settings, seed=0)
    assert losses[-1] < 0.5 * losses[0]
    xt, yt, centres = _toy(40, gen)
    with torch.no_grad():
        logits, feats = model(xt)
        cams = class_activation_maps(model, feats, yt[:, None])[:, 0]
    assert (logits.argmax(1) == yt).float().mean() >= 0.9
    scale = 32 / cams.shape[-1]
    peaks = [np.unravel_index(int(c.argmax()), c.shape) for c in cams]
    near = [abs((py + 0.5) * scale - cy) <= 6 and abs((px + 0.5) * scale - cx) <= 6
            for (py, px), (cy, cx) in zip(peaks, centres.tolist())]
    assert np.mean(near) >= 0.8


@pytest.fixture(scope="module")
def part_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    write_cub_dataset(root / "CUB", 2, 4, 3, seed=0, parts=PartSettings(), object_size=(0.35, 0.7))
    ds = {"layout": "cub", "root": str(root / "CUB"), "meta_word": "bird", "token_prefix": "cub", "keep_class": None}
    index_dataset(ds, out_dir=root / "index", tokenizer=TOKENIZER)
    settings = CamNetSettings(resolution=32, channels=(8, 16), epochs=2, batch_size=4, threads=1)
    report = train_cam_baseline(root / "index", root / "CUB", root / "model.safetensors", root / "scores.json",
                                settings)
    return root, report


def test_training_writes_a_model_and_classifier_scores(part_dataset):
    root, report = part_dataset
    assert 0 <= report["train_accuracy"] <= 1 and len(report["losses"]) == 2
    test = pd.read_parquet(root / "index" / "test.parquet")
    scores = json.loads((root / "scores.json").read_text())
    assert sorted(scores) == sorted(test["image_id"])
    assert all(abs(sum(v["pred_scores"]) - 1) < 1e-4 and len(v["pred_scores"]) == 2 for v in scores.values())
    table = import_scores(root / "scores.json", root / "index", root / "scores.parquet")  # the real importer reads it
    assert table is not None
    model, settings = load_cam_net(root / "model.safetensors")
    assert settings.resolution == 32 and model.fc.out_features == 2


@pytest.mark.parametrize("variant, roles", [("gtk_w0.60_t0-99", ["gt"]), ("top1_w0.60_t0-99", ["top1", "gt"])])
def test_extraction_writes_the_modes_slots_as_a_cam_cache(part_dataset, variant, roles):
    root, _ = part_dataset
    scores = root / "scores.parquet"
    if not scores.exists():
        import_scores(root / "scores.json", root / "index", scores)
    out = root / "run" / variant / "shard-00000.npz"
    extract_cam_shard(root / "model.safetensors", variant, 0, root / "index" / "test.parquet", root / "CUB", out,
                      64, 16, scores_path=scores if variant.startswith("top1") else None, threads=1)
    write_cam_index([out], out.parent / "index.parquet", roles)
    cache = CamCache(out.parent)
    test = pd.read_parquet(root / "index" / "test.parquet")
    assert cache.roles == roles and cache.image_ids == list(test["image_id"])
    for image_id, label in zip(test["image_id"], test["label"]):
        cid, cam = cache.get(image_id, "gt")
        assert cid == label and cam.shape == (16, 16)
        assert cam.min() == 0 and abs(cam.max() - 1) < 1e-3  # min-max per map


def test_peaks_of_a_map_on_the_part_and_of_a_flat_map():
    obj, part = [10, 10, 50, 40], [40, 10, 50, 20]
    cam = np.zeros((8, 8), np.float32)
    cam[2, 6] = 1.0  # centre (48.75, 15) in a 60 x 48 image: inside the part box
    rec = image_peaks(cam, 60, 48, [obj], part)
    assert rec["peak_in_part"] and rec["peak_in_object"] and rec["part_mass"] > 0.5
    flat = np.zeros((8, 8), np.float32)
    flat[2:6, 2:7] = 1.0
    rec = image_peaks(flat, 60, 48, [obj], part)
    assert not rec["peak_in_part"] and rec["peak_in_object"] and rec["part_mass"] < rec["part_area"] + 0.1


def test_peaks_of_a_cache_and_the_side_by_side_figure(part_dataset, tmp_path):
    root, _ = part_dataset
    cache = root / "run" / "gtk_w0.60_t0-99"
    if not (cache / "index.parquet").exists():
        test_extraction_writes_the_modes_slots_as_a_cam_cache(part_dataset, "gtk_w0.60_t0-99", ["gt"])
    result = map_peaks(cache, root / "index" / "test.parquet", root / "CUB" / PART_LISTING)
    assert result["n_images"] == 6 and 0 <= result["peak_in_part"] <= result["peak_in_object"] <= 100
    ids = side_by_side({"cam": cache, "again": cache}, root / "index" / "test.parquet", root / "CUB",
                       tmp_path / "fig.png", 2, 0.23, cell=64)
    assert len(ids) == 2 and Image.open(tmp_path / "fig.png").size == (128, 28 + 2 * 64)
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 1 2 3\n")
    with pytest.raises(InputError, match="x1 y1 x2 y2"):
        read_part_boxes(bad)


def test_cam_runs_get_their_own_rule_and_no_genpromp_inputs():
    config = load_config("config/experiment.yaml")
    assert plan.runs_of_method(config, "cam") == ["cam"]
    assert plan.comparison_runs(config) == ["cam", "genpromp", "no_stage2"]
    assert re.fullmatch(plan.run_pattern(config, "cam"), "cam")
    assert not re.fullmatch(plan.run_pattern(config, "cam"), "genpromp")
    assert not re.fullmatch(plan.run_pattern(config, "genpromp"), "cam")
    assert config["datasets"]["cub_parts"]["classifier"]["path"] == layout.cam_baseline_scores("cub_parts")
    default = load_config("config/config.yaml")
    assert plan.runs_of_method(default, "cam") == [] and not re.fullmatch(plan.run_pattern(default, "cam"), "cam")
    assert plan.comparison_variant(config).name == "gtk_w0.60_t0-99"
