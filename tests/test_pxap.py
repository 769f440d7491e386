"""PxAP (wsolevaluation's pixel average precision): hand-computed values on tiny maps, mask reading,
shard merging, bad masks, and the evaluation files (summary, parts, baselines)."""

import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from genpromp.errors import InputError
from genpromp.evaluation.evaluate import (
    evaluate_baselines, evaluate_cache, merge_evaluation, run_evaluate, run_evaluate_part, write_evaluation,
)
from genpromp.evaluation.evaluator import EvalSettings
from genpromp.evaluation.pxap import (
    MaskSource, PxapAccumulator, load_gt_mask, merge_pxap_states, pxap_bin_edges, read_mask_listing,
    summary_from_pxap_state,
)
from genpromp.evaluation.wsol import prepare_wsol_cam, wsol_scoremap

from eval_fixtures import write_dataset

THR4 = [0.0, 0.25, 0.5, 0.75]  # bins [0, .25) [.25, .5) [.5, .75) [.75, 1) [1, 2) [2, 3]


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.asarray(array, np.uint8))


def _listing(tmp_path, lines):
    listing = tmp_path / "masks" / "localization.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(line + "\n" for line in lines))
    return MaskSource(listing)


def test_bins_and_curve_by_hand():
    # scores 0.9 (pos), 0.6 (neg), 0.3 (pos), 0.1 (neg): AP of that ranking = (1/1 + 2/3) / 2
    acc = PxapAccumulator(THR4, frame=2)
    scores = np.array([[0.9, 0.6], [0.3, 0.1]])
    pos = np.array([[True, False], [True, False]])
    acc.add_scoremap(scores, pos, ~pos)
    st = acc.state()
    assert st["positive"] == [0, 1, 0, 1, 0, 0] and st["negative"] == [1, 0, 1, 0, 0, 0]
    s = acc.compute()
    assert s["pxap"] == pytest.approx(100 * 5 / 6, abs=1e-12)
    assert s["thresholds"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert s["precision"][:4] == pytest.approx([0.5, 2 / 3, 0.5, 1.0], abs=1e-15) and s["precision"][4] is None
    assert s["recall"] == [1.0, 1.0, 0.5, 0.5, 0.0]
    assert (s["positive_pixels"], s["negative_pixels"], s["n_images"]) == (2, 2, 1)


def test_score_equal_to_threshold_falls_in_the_upper_bin():
    acc = PxapAccumulator(THR4, frame=2)
    scores = np.array([[1.0, 0.75], [0.25, 0.0]])
    acc.add_scoremap(scores, np.ones((2, 2), bool), np.zeros((2, 2), bool))
    assert acc.state()["positive"] == [1, 1, 0, 1, 1, 0]


def test_masks_from_files_with_ignore_and_background_image(tmp_path):
    # image a: two instance masks (OR-ed) mark (0,0) and (1,0); no ignore file.
    # image b: no foreground; its ignore mask drops pixel (1,1).
    root = tmp_path / "masks"
    _png(root / "a_m0.png", [[255, 0], [0, 0]])
    _png(root / "a_m1.png", [[0, 0], [255, 0]])
    _png(root / "b_m0.png", [[0, 0], [0, 0]])
    _png(root / "b_ignore.png", [[0, 0], [0, 255]])
    src = _listing(tmp_path, ["x/a.jpg,a_m0.png,", "x/a.jpg,a_m1.png,", "x/b.jpg,b_m0.png,b_ignore.png"])
    entries = read_mask_listing(src)
    assert set(entries) == {"x/a", "x/b"} and len(entries["x/a"].masks) == 2 and entries["x/a"].ignore is None
    acc = PxapAccumulator(THR4, frame=2)
    # a: cam / 4 → scores 1.0 (pos), 0.75 (neg), 0.25 (pos), 0 (neg)
    acc.accumulate(np.array([[4.0, 3.0], [1.0, 0.0]]), entries["x/a"], (2, 2))
    # b: scores 0, 1/3, 2/3 (negatives), 1.0 (ignored)
    acc.accumulate(np.array([[0.0, 1.0], [2.0, 3.0]]), entries["x/b"], (2, 2))
    st = acc.state()
    assert st["positive"] == [0, 1, 0, 0, 1, 0]
    assert st["negative"] == [2, 1, 1, 1, 0, 0]
    # ≥1: 1 TP 0 FP (P 1, R 1/2); ≥.75, ≥.5: recall unchanged; ≥.25: 2 TP 3 FP (P 2/5, R 1)
    # PxAP = 100 · (1 · 1/2 + 2/5 · 1/2) = 70
    assert acc.compute()["pxap"] == pytest.approx(70.0, abs=1e-12)


def test_perfect_map_scores_100_and_constant_map_the_positive_share(tmp_path):
    root = tmp_path / "masks"
    fg = np.array([[0, 255, 0], [255, 255, 0], [0, 0, 0]])
    _png(root / "m.png", fg)
    _png(root / "ign.png", [[0, 0, 255], [0, 0, 0], [0, 0, 0]])
    entries = read_mask_listing(_listing(tmp_path, ["i.png,m.png,ign.png"]))
    perfect = PxapAccumulator(THR4, frame=3)
    cam = (fg > 0).astype(np.float64)
    cam[0, 2] = 0.7  # the ignored pixel may score anything
    perfect.accumulate(cam, entries["i"], (3, 3))
    assert perfect.compute()["pxap"] == 100.0
    flat = PxapAccumulator(THR4, frame=3)
    flat.accumulate(np.full((3, 3), 0.4), entries["i"], (3, 3))  # constant → zeros: one operating point
    assert flat.compute()["pxap"] == pytest.approx(100 * 3 / 8, abs=1e-12)  # 3 positives, 5 negatives


def test_mask_reading_follows_the_reference(tmp_path):
    # any grey level > 0.5 (of 0..255) is foreground; masks are resized nearest-neighbour to the frame;
    # colour files are read as grey
    root = tmp_path / "masks"
    big = np.zeros((6, 6), np.uint8)
    big[0:2, 0:2] = 1
    big[4, 4] = 200
    _png(root / "m.png", big)
    colour = np.zeros((6, 6, 3), np.uint8)
    colour[2, 2] = (0, 0, 255)
    _png(root / "ign.png", colour)
    entries = read_mask_listing(_listing(tmp_path, ["i.jpg,m.png,ign.png"]))
    pos, neg = load_gt_mask(entries["i"], 3, (12, 12))
    assert pos.tolist() == [[True, False, False], [False, False, False], [False, False, True]]
    assert neg.tolist() == [[False, True, True], [True, False, True], [True, True, False]]


def test_scoremap_is_float64_minmax():
    cam = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    s = wsol_scoremap(cam, 2)
    assert s.dtype == np.float64 and s.tolist() == [[0.0, 0.25], [0.5, 1.0]]
    assert not wsol_scoremap(np.full((4, 4), 3.0), 8).any()
    assert not wsol_scoremap(np.array([[0.0, np.nan], [1.0, 2.0]]), 2).any()
    # MaxBoxAcc quantises the very map PxAP scores
    assert prepare_wsol_cam(cam, 2).tolist() == [[0, 63], [127, 255]]


def test_shards_merge_to_the_single_pass():
    rng = np.random.default_rng(0)
    thr = np.arange(0, 1, 0.05).tolist()
    maps = [(rng.random((5, 5)) ** 2, rng.random((5, 5)) < 0.3, rng.random((5, 5)) < 0.1) for _ in range(7)]
    maps[3] = (maps[3][0], np.zeros((5, 5), bool), maps[3][2])  # an all-background image
    one = PxapAccumulator(thr, 5)
    parts = [PxapAccumulator(thr, 5) for _ in range(3)]
    for i, (score, pos, ign) in enumerate(maps):
        one.add_scoremap(score, pos, ~pos & ~ign)
        parts[i % 3].add_scoremap(score, pos, ~pos & ~ign)
    states = [json.loads(json.dumps(p.state())) for p in parts]
    merged = merge_pxap_states(states[::-1])
    assert merged["positive"] == one.state()["positive"] and merged["negative"] == one.state()["negative"]
    assert summary_from_pxap_state(merged) == one.compute()
    with pytest.raises(ValueError, match="different"):
        merge_pxap_states([one.state(), PxapAccumulator(THR4, 5).state()])


def test_no_positive_pixel_is_an_error():
    acc = PxapAccumulator(THR4, 2)
    acc.add_scoremap(np.zeros((2, 2)), np.zeros((2, 2), bool), np.ones((2, 2), bool))
    with pytest.raises(InputError, match="no foreground pixel"):
        acc.compute("masks.txt")


def test_threshold_list_must_be_a_sweep_below_one():
    with pytest.raises(Exception, match="increasing thresholds"):
        pxap_bin_edges([0.0, 0.5, 1.0])
    assert pxap_bin_edges([0.0, 0.5]).tolist() == [0.0, 0.5, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("lines, files, message, line", [
    (["a.jpg,a.png"], {}, "3 comma-separated fields", 1),
    (["a.jpg,a.png,", "a.jpg,b.png,ign.png"], {"a.png": 1, "b.png": 1, "ign.png": 1}, "first line", 2),
    (["a.jpg,,"], {}, "must not be empty", 1),
    (["a.jpg,../a.png,"], {}, "must not contain", 1),
    (["a.jpg,a.png,", "a.png,a.png,"], {"a.png": 1}, "same id", 2),
])
def test_bad_listing_lines(tmp_path, lines, files, message, line):
    for name in files:
        _png(tmp_path / "masks" / name, np.zeros((2, 2)))
    src = _listing(tmp_path, lines)
    with pytest.raises(InputError, match=message) as exc:
        read_mask_listing(src)
    assert exc.value.line == line and exc.value.path == str(src.listing)


def test_bad_mask_files(tmp_path):
    root = tmp_path / "masks"
    root.mkdir()
    (root / "text.png").write_text("not a png")
    _png(root / "wide.png", np.zeros((10, 20)))
    src = _listing(tmp_path, ["a.jpg,missing.png,", "b.jpg,text.png,", "c.jpg,wide.png,"])
    entries = read_mask_listing(src)
    cases = (("a", "not found", 1), ("b", "not a readable image", 2), ("c", "aspect ratios differ", 3))
    for iid, message, line in cases:
        with pytest.raises(InputError, match=message) as exc:
            load_gt_mask(entries[iid], 4, (20, 20))
        assert exc.value.line == line and str(src.listing) in str(exc.value)
    assert load_gt_mask(entries["c"], 4, (40, 20))[0].shape == (4, 4)  # same aspect at another size is fine
    with pytest.raises(InputError, match="mask listing not found"):
        read_mask_listing(MaskSource(tmp_path / "nope.txt"))


# ---------------------------------------------------------------------------- evaluation files

SETTINGS = EvalSettings(frame=96, wsol_frame=32, thresholds=tuple(np.arange(0, 1, 0.05).tolist()),
                        tscam_thresholds=tuple(np.arange(0, 1, 0.1).tolist()))


def _dataset_with_masks(tmp_path, n=8, skip=None):
    """write_dataset plus a mask listing: each image's masks are its GT boxes, the first image gets an ignore
    strip along its top edge."""
    d = write_dataset(tmp_path, n=n, mode="top1", shard_size=3)
    index = pq.read_table(d["index"]).to_pandas()
    lines = []
    for k, (iid, w, h, boxes) in enumerate(index[["image_id", "width", "height", "boxes"]].itertuples(index=False)):
        if iid == skip:
            continue
        for j, b in enumerate(boxes):
            m = np.zeros((h, w), np.uint8)
            m[int(b[1]):int(b[3]), int(b[0]):int(b[2])] = 255
            _png(tmp_path / "masks" / f"{iid}_m{j}.png", m)
            ign = ""
            if j == 0 and k == 0:
                strip = np.zeros((h, w), np.uint8)
                strip[: h // 5] = 255
                _png(tmp_path / "masks" / f"{iid}_ignore.png", strip)
                ign = f"{iid}_ignore.png"
            lines.append(f"{iid}.jpg,{iid}_m{j}.png,{ign}")
    return d, _listing(tmp_path, lines), index


def test_evaluate_cache_reports_pxap_of_the_gt_maps(tmp_path):
    from genpromp.cams.cache import CamCache
    d, src, index = _dataset_with_masks(tmp_path)
    ev = evaluate_cache(d["cams"], d["index"], SETTINGS, scores_path=d["scores"], masks=src)
    summary = write_evaluation(ev, tmp_path / "p.parquet", tmp_path / "s.json")
    # the same counts by hand from the cached gt-role maps
    cache, entries = CamCache(d["cams"]), read_mask_listing(src)
    acc = PxapAccumulator(SETTINGS.thresholds, SETTINGS.wsol_frame)
    gt_rows = cache.index[cache.index["role"] == "gt"].set_index("image_id")
    for iid, w, h in index[["image_id", "width", "height"]].itertuples(index=False):
        r = gt_rows.loc[iid]
        cam = cache.load_shard(int(r["shard"])).cams[int(r["row"]), int(r["slot"])]
        acc.accumulate(cam, entries[iid], (w, h))
    expected = acc.compute()
    assert summary["pxap"]["pxap"] == expected["pxap"] and 0 < expected["pxap"] < 100
    assert summary["pxap"]["precision"] == expected["precision"]
    assert summary["pxap"]["masks"] == str(src.listing)
    assert json.loads((tmp_path / "s.json").read_text())["pxap"]["pxap"] == expected["pxap"]
    plain = write_evaluation(evaluate_cache(d["cams"], d["index"], SETTINGS, scores_path=d["scores"]),
                             tmp_path / "q.parquet", tmp_path / "q.json")
    assert plain["pxap"] is None


def test_parts_merge_to_the_single_job(tmp_path):
    d, src, _ = _dataset_with_masks(tmp_path, n=8)
    single = run_evaluate(d["cams"], d["index"], SETTINGS, tmp_path / "one.parquet", tmp_path / "one.json",
                          scores=d["scores"], masks=src)
    parts, states = [], []
    for p, shards in enumerate(([0], [1, 2])):
        parts.append(tmp_path / f"part-{p}.parquet")
        states.append(tmp_path / f"part-{p}.json")
        st = run_evaluate_part(d["cams"], d["index"], SETTINGS, shards, parts[-1], states[-1],
                               scores=d["scores"], masks=src)
        assert st["pxap"]["n_images"] == (3 if p == 0 else 5)
    merged = merge_evaluation(parts, states, d["index"], SETTINGS, tmp_path / "m.parquet", tmp_path / "m.json")
    assert merged["pxap"] == json.loads(json.dumps(single["pxap"]))
    # a part computed without masks cannot be merged with parts that have them
    run_evaluate_part(d["cams"], d["index"], SETTINGS, [0], parts[0], states[0], scores=d["scores"])
    with pytest.raises(InputError, match="no PxAP counts"):
        merge_evaluation(parts, states, d["index"], SETTINGS, tmp_path / "m.parquet", tmp_path / "m.json")


def test_an_image_without_masks_is_an_error(tmp_path):
    d, src, index = _dataset_with_masks(tmp_path, n=6, skip="c2/img_002")
    with pytest.raises(InputError, match="1 test images have no mask.*c2/img_002") as exc:
        evaluate_cache(d["cams"], d["index"], SETTINGS, masks=src)
    assert exc.value.path == str(src.listing)


def test_baselines_pxap(tmp_path):
    d, src, index = _dataset_with_masks(tmp_path, n=6)
    out = evaluate_baselines(d["index"], SETTINGS, masks=src)
    full = write_evaluation(out["full"], tmp_path / "f.parquet", tmp_path / "f.json")["pxap"]
    center = write_evaluation(out["center"], tmp_path / "c.parquet", tmp_path / "c.json")["pxap"]
    # the constant map has one operating point: PxAP = positives / (positives + negatives)
    assert full["pxap"] == pytest.approx(100 * full["positive_pixels"] / (full["positive_pixels"]
                                                                          + full["negative_pixels"]), abs=1e-9)
    assert center["positive_pixels"] == full["positive_pixels"] and center["pxap"] != full["pxap"]


# ---------------------------------------------------------------------------- demo world masks

DEMO_KW = dict(n_classes=3, train_per_class=2, test_per_class=3, image_size=(64, 96), jpeg_quality=90)


def _check_demo_masks(root, index):
    """Every test image has its masks in the listing, one per GT box, whose tight box is that GT box."""
    from genpromp.demo.world import MASK_LISTING
    entries = read_mask_listing(MaskSource(root / MASK_LISTING))
    assert set(entries) == set(index.test["image_id"])
    for iid, w, h, boxes in index.test[["image_id", "width", "height", "boxes"]].itertuples(index=False):
        e = entries[iid]
        assert len(e.masks) == len(boxes) and e.ignore is not None
        assert not cv2.imread(str(e.ignore), cv2.IMREAD_GRAYSCALE).any()
        for path, box in zip(e.masks, boxes):
            m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            assert m.shape == (h, w) and set(np.unique(m)) == {0, 255}
            ys, xs = np.nonzero(m)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == list(box)
        load_gt_mask(e, 16, (w, h))  # readable, aspect ratio of its image
    return entries


def test_demo_world_writes_masks_of_the_test_images(tmp_path):
    from genpromp.data.indexing import index_cub, index_imagenet
    from genpromp.demo.world import MASK_LISTING, write_cub_dataset, write_imagenet_dataset
    from data_fixtures import SYNSETS, load_tokenizer
    a = write_cub_dataset(tmp_path / "a", seed=3, **DEMO_KW)
    b = write_cub_dataset(tmp_path / "b", seed=3, **DEMO_KW)
    assert (a / MASK_LISTING).read_text() == (b / MASK_LISTING).read_text()
    first = sorted((a / "masks").rglob("*_m0.png"))[0]
    assert first.read_bytes() == (b / first.relative_to(a)).read_bytes()
    _check_demo_masks(a, index_cub(a, meta_word="bird"))
    root = write_imagenet_dataset(tmp_path / "I", SYNSETS, multi_instance_fraction=0.5, seed=0, **DEMO_KW)
    entries = _check_demo_masks(root, index_imagenet(root, tokenizer=load_tokenizer()))
    assert sorted(len(e.masks) for e in entries.values()).count(2) == round(0.5 * 9)
