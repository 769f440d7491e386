"""Metric functions against hand-computed values, and the fast sweeps against straightforward loops."""

import cv2
import numpy as np
import pytest

from genpromp.evaluation.evaluator import EvalSettings, ImageInput, evaluate_image, wsol_summary
from genpromp.evaluation.metrics import (
    best_iou, box_acc_hits, box_acc_percent, box_iou_matrix, classify_top1_error, max_box_acc, normalize_minmax,
    prepare_cam, scale_boxes_tscam, scale_boxes_wsol, threshold_list, tscam_box, wsol_boxes,
)
from genpromp.evaluation.tscam import prepare_tscam_cam, tscam_sweep_boxes, tscam_sweep_boxes_reference
from genpromp.evaluation.wsol import prepare_wsol_cam, wsol_sweep_ious, wsol_sweep_ious_reference

from eval_fixtures import blob_cam, smooth_random_cam


def test_inclusive_iou_8_over_27():
    # a: 5 wide × 3 tall = 15 px; b: 5 × 4 = 20 px; overlap x 1..4, y 1..2 = 8 px; union 27
    assert box_iou_matrix([0, 0, 4, 2], [1, 1, 5, 4])[0, 0] == pytest.approx(8 / 27)


def test_iou_matrix_several_gt_and_degenerate():
    m = box_iou_matrix([[0, 0, 9, 9]], [[0, 0, 9, 9], [100, 100, 110, 110], [5, 0, 14, 9]])
    assert m.shape == (1, 3)
    assert m[0].tolist() == pytest.approx([1.0, 0.0, 50 / 150])
    assert best_iou([[0, 0, 9, 9]], [[100, 100, 110, 110], [5, 0, 14, 9]]) == pytest.approx(1 / 3)
    assert box_iou_matrix([0, 0, -2, -2], [0, 0, -2, -2])[0, 0] == 0.0  # union ≤ 0 → 0


def test_scale_boxes():
    gt = [[10, 20, 199.9, 99.5]]
    assert scale_boxes_tscam(gt, 200, 100, 512).tolist() == [[25, 102, 511, 509]]
    assert scale_boxes_wsol(gt, 200, 100, 224).tolist() == [[11, 44, 223, 222]]


def test_fallback_boxes_and_constant_nan_maps():
    zeros = np.zeros((16, 16), np.uint8)
    assert tscam_box(zeros, 0.5) == [0, 0, 1, 1]
    assert wsol_boxes(zeros, 0.5, True).tolist() == [[0, 0, 0, 0]]
    const = np.full((8, 8), 0.7, np.float32)
    nan = const.copy()
    nan[2, 3] = np.nan
    for cam in (const, nan):
        assert not normalize_minmax(cam).any()
        u8 = prepare_cam(cam, 32, 1)
        assert tscam_box(u8, 0.23) == [0, 0, 1, 1]
        assert wsol_boxes(u8, 0.0, False).tolist() == [[0, 0, 0, 0]]


def test_two_blobs_largest_vs_all_and_clipping():
    u8 = (blob_cam(64, [(5, 5, 24, 24, 1.0), (56, 40, 63, 44, 1.0)]) * 255).astype(np.uint8)
    assert tscam_box(u8, 0.5) == [5, 5, 25, 25]  # x + w, not clipped
    assert wsol_boxes(u8, 0.5, False).tolist() == [[5, 5, 25, 25]]
    assert sorted(wsol_boxes(u8, 0.5, True).tolist()) == [[5, 5, 25, 25], [56, 40, 63, 45]]  # x2 64 → 63
    gt = np.array([[56, 40, 63, 45]])
    v1, v2 = wsol_sweep_ious(u8, [0.5], gt)
    assert v1[0] == 0.0 and v2[0] == 1.0


def _line_image(cls_right):
    cam = np.zeros((64, 64), np.float32)
    cam[10, 10:20] = 1.0  # contour rect x=10, w=10, h=1 → box [10, 10, 20, 11], 22 px
    top5 = (0, 1, 2, 3, 4) if cls_right else (1, 0, 2, 3, 4)
    return ImageInput("x", 0, 64, 64, np.array([[10.0, 10.0, 20.0, 10.0]]), {"gt": (0, cam), "top1": (top5[0], cam)}, top5)


def test_boundary_half_iou_gt_known_but_not_top1():
    settings = EvalSettings(frame=64, thresholds=(0.5,), protocols=())
    res = evaluate_image(_line_image(True), settings)
    assert res.box_gt == [10, 10, 20, 11]
    assert res.iou_gt == 0.5  # 11 / 22
    assert res.gt_known is True  # ≥ 0.5
    assert res.top1_loc is False and res.top5_loc is False  # > 0.5 strictly
    # Part needs inter/box > 0.5 (11/22 = 0.5 fails); More: inter/GT = 11/11 ≥ 0.7
    assert res.error == "More"
    wrong = evaluate_image(_line_image(False), settings)
    assert wrong.cls1 is False and wrong.cls5 is True and wrong.error == "Cls"


@pytest.mark.parametrize("box,gts,cls,expected", [
    ([0, 0, 9, 9], [[0, 0, 9, 9]], False, "Cls"),
    ([0, 0, 9, 9], [[0, 0, 9, 9]], True, "Right"),
    ([0, 0, 29, 9], [[0, 0, 9, 9], [20, 0, 29, 9]], True, "M-ins"),  # IoU 1/3 each, both fully covered
    ([0, 0, 9, 9], [[0, 0, 19, 19]], True, "Part"),  # IoU 0.25, inter/box = 1
    ([0, 0, 19, 19], [[0, 0, 9, 9]], True, "More"),  # IoU 0.25, inter/box 0.25, inter/GT = 1
    ([50, 50, 59, 59], [[0, 0, 9, 9]], True, "Wrong"),
    ([0, 0, 9, 9], [[0, 0, 9, 9], [40, 40, 49, 49]], True, "Right"),  # Right before M-ins
])
def test_error_categories(box, gts, cls, expected):
    assert classify_top1_error(cls, box, gts) == expected


def test_error_more_vs_part_boundary():
    # box 22 px, GT 11 px fully inside: inter/box = 0.5 (not Part), inter/GT = 1 → More
    assert classify_top1_error(True, [10, 10, 20, 11], [[10, 10, 20, 10]]) == "More"


def test_max_box_acc_hand_computed():
    # the evaluation's path: hit counts per δ (the state), percentages, then the maximum per δ (the summary)
    ious = np.array([[0.2, 0.6, 0.8], [0.4, 0.5, 0.1]])
    hits = {d: box_acc_hits(ious, d) for d in (0.3, 0.5, 0.7)}
    assert {d: h.tolist() for d, h in hits.items()} == {0.3: [1, 2, 1], 0.5: [0, 2, 1], 0.7: [0, 0, 1]}
    acc, idx, mean = max_box_acc({d: box_acc_percent(h, len(ious)) for d, h in hits.items()})
    assert acc == {0.3: 100.0, 0.5: 100.0, 0.7: 50.0}
    assert idx == {0.3: 1, 0.5: 1, 0.7: 2}
    assert mean == pytest.approx(250 / 3)
    summary = wsol_summary({f"{d:g}": h.tolist() for d, h in hits.items()}, len(ious), (0.1, 0.2, 0.3))
    assert summary["max_box_acc"] == {"0.3": 100.0, "0.5": 100.0, "0.7": 50.0}
    assert summary["best_threshold"] == {"0.3": 0.2, "0.5": 0.2, "0.7": 0.3}
    assert summary["mean"] == pytest.approx(250 / 3)


def _maps():
    rng = np.random.default_rng(1)
    maps = [smooth_random_cam(rng) for _ in range(6)]
    maps += [rng.random((64, 64)).astype(np.float32) for _ in range(2)]  # noisy: many contours, holes
    ring = blob_cam(64, [(10, 10, 50, 50, 1.0)])
    ring[20:40, 20:40] = 0.0
    ring[28:32, 28:32] = 0.8
    maps += [ring, blob_cam(64, [(5, 5, 24, 24, 1.0), (40, 40, 49, 44, 0.5)]), np.zeros((64, 64), np.float32)]
    return maps


def test_fast_tscam_sweep_equals_loop():
    th = threshold_list(0.0, 1.0, 0.01)
    for cam in _maps():
        for frame in (96, 512):
            u8 = prepare_tscam_cam(cam, frame)
            np.testing.assert_array_equal(tscam_sweep_boxes(u8, th), tscam_sweep_boxes_reference(u8, th))


def test_fast_wsol_sweep_equals_loop():
    th = threshold_list(0.0, 1.0, 0.01)
    gt = np.array([[20, 30, 150, 180], [100, 100, 200, 220]])
    for cam in _maps():
        u8 = prepare_wsol_cam(cam, 224)
        fast, ref = wsol_sweep_ious(u8, th, gt), wsol_sweep_ious_reference(u8, th, gt)
        np.testing.assert_array_equal(fast[0], ref[0])
        np.testing.assert_array_equal(fast[1], ref[1])


def test_normalize_matches_straightforward_formula():
    import cv2
    rng = np.random.default_rng(3)
    for cam in (rng.random((97, 97)).astype(np.float32) * 5 + 0.3, smooth_random_cam(rng)):
        lo, hi = float(cam.min()), float(cam.max())
        ref = ((cam - lo) / (hi - lo)).astype(np.float32)
        np.testing.assert_array_equal(normalize_minmax(cam), ref)
        r = cv2.resize(cam, (224, 224), interpolation=cv2.INTER_CUBIC)
        rlo, rhi = float(r.min()), float(r.max())
        np.testing.assert_array_equal(prepare_cam(cam, 224, cv2.INTER_CUBIC),
                                      (((r - rlo) / (rhi - rlo)).astype(np.float32) * 255).astype(np.uint8))


def test_sweep_contour_rects_equals_per_cut_calls():
    import cv2
    from genpromp.evaluation.metrics import find_contours_above, sweep_contour_rects
    rng = np.random.default_rng(5)
    for cam in _maps()[:9]:
        u8 = prepare_wsol_cam(cam, 224)
        cuts = [int(c) for c in rng.integers(0, 256, 12)] + [0, 255, 7, 7]
        for cut, (rects, largest) in zip(cuts, sweep_contour_rects(u8, cuts)):
            contours = find_contours_above(u8, cut)
            assert rects.tolist() == [list(cv2.boundingRect(c)) for c in contours]
            areas = [cv2.contourArea(c) for c in contours]
            assert largest == (int(np.argmax(areas)) if areas else -1)


def test_largest_contour_tie_keeps_first():
    u8 = (blob_cam(64, [(5, 5, 14, 14, 1.0), (40, 40, 49, 49, 1.0), (40, 5, 40, 5, 1.0)]) * 255).astype(np.uint8)
    th = [0.5]
    np.testing.assert_array_equal(tscam_sweep_boxes(u8, th), tscam_sweep_boxes_reference(u8, th))
    # two single pixels: both contours have area 0, the first found wins in both paths
    dots = np.zeros((32, 32), np.uint8)
    dots[3, 20] = dots[10, 4] = 255
    np.testing.assert_array_equal(tscam_sweep_boxes(dots, th), tscam_sweep_boxes_reference(dots, th))
    assert tscam_sweep_boxes(dots, th).tolist()[0] in ([20, 3, 21, 4], [4, 10, 5, 11])


def _order_disagreements(frame):
    """(x, W) pairs, W in 100..1000 and x in 0..W, where the three float64 orders of x·F/W truncate differently."""
    found = []
    for w in range(100, 1001):
        x = np.arange(0, w + 1, dtype=np.float64)
        div_first, mul_first, ratio = np.trunc(x / w * frame), np.trunc(x * float(frame) / w), np.trunc(x * (frame / w))
        for i in np.nonzero((div_first != mul_first) | (div_first != ratio) | (mul_first != ratio))[0]:
            found.append((float(x[i]), w))
    return found


@pytest.mark.parametrize("frame", [224, 512])
def test_box_scaling_uses_each_references_order(frame):
    pairs = _order_disagreements(frame)
    div_first = lambda x, w: x / w * frame  # noqa: E731  GenPromp / TS-CAM: divide, then multiply
    mul_first = lambda x, w: x * float(frame) / w  # noqa: E731  wsolevaluation: multiply, then divide
    ratio = lambda x, w: x * (frame / w)  # noqa: E731  neither reference
    assert any(int(div_first(x, w)) != int(ratio(x, w)) for x, w in pairs)
    assert any(int(mul_first(x, w)) != int(ratio(x, w)) for x, w in pairs)
    if frame == 224:  # with F = 512 = 2^9, x / W · F and x · F / W round identically
        assert any(int(div_first(x, w)) != int(mul_first(x, w)) for x, w in pairs)
    for x, w in pairs:
        box = [[x, x, x, x]]  # the same coordinate as x1, y1, x2, y2 of a W × W image
        lo, hi = int(max(div_first(x, w), 0)), int(min(div_first(x, w), frame - 1))
        assert scale_boxes_tscam(box, w, w, frame).tolist() == [[lo, lo, hi, hi]], (x, w)
        assert scale_boxes_wsol(box, w, w, frame).tolist() == [[int(mul_first(x, w))] * 4], (x, w)
    # non-square image: x uses W, y uses H; wsolevaluation does not clip, TS-CAM clips x2, y2 to F − 1
    assert scale_boxes_wsol([[112.0, 61.0, 224.0, 300.0]], 224, 112, 224).tolist() == [[112, 122, 224, 600]]
    assert scale_boxes_tscam([[-3.0, 61.0, 224.0, 300.0]], 224, 112, 224).tolist() == [[0, 121, 223, 223]]


def _tie_image(iid, gt_box):
    """64 × 64 map whose only blob (rows/cols 10..18) gives the box [10, 10, 19, 19] (10 × 10 = 100 px,
    inclusive) in both protocols at every threshold in (0, 1); the image is 64 × 64 so GT boxes map 1:1."""
    cam = np.zeros((64, 64), np.float32)
    cam[10:19, 10:19] = 1.0
    return ImageInput(iid, 0, 64, 64, np.array([gt_box], np.float64), {"gt": (0, cam), "top1": (0, cam)},
                      (0, 1, 2, 3, 4))


TIE_SETTINGS = EvalSettings(cam_thr=0.5, frame=64, wsol_frame=64, thresholds=(0.0, 0.5, 0.9),
                            tscam_thresholds=(0.2, 0.5), iou_thresholds=(0.3, 0.5, 0.7))
# GT boxes inside [10, 10, 19, 19] with 70, 50 and 30 px: IoU exactly 7/10, 1/2 and 3/10
TIE_GT = {"seven": [10.0, 10.0, 19.0, 16.0], "half": [10.0, 10.0, 19.0, 14.0], "three": [10.0, 10.0, 19.0, 12.0]}


def test_exact_iou_ties_through_evaluator_and_merged_states():
    import json
    from genpromp.evaluation.evaluator import Evaluator, merge_states, state_from_results, summary_from_state
    ev = Evaluator(TIE_SETTINGS)
    res = {k: ev.accumulate(_tie_image(k, gt)) for k, gt in TIE_GT.items()}
    assert res["seven"].box_gt == [10, 10, 19, 19]
    assert (res["seven"].iou_gt, res["half"].iou_gt, res["three"].iou_gt) == (0.7, 0.5, 0.3)
    assert res["seven"].wsol_v2.tolist() == [0.7] * 3 and res["seven"].wsol_v1.dtype == np.float64
    # GT-known counts IoU >= 0.5, Top-1/Top-5 Loc count IoU > 0.5 (classes are right)
    assert [r.gt_known for r in res.values()] == [True, True, False]
    assert [r.top1_loc for r in res.values()] == [True, False, False]
    assert [r.top5_loc for r in res.values()] == [True, False, False]
    state = ev.state()
    # MaxBoxAcc counts IoU >= δ at every τ: δ = 0.3 → all three, 0.5 → two, 0.7 → one (the 7/10 image)
    for v in ("v1", "v2"):
        assert state["wsol"][v] == {"0.3": [3, 3, 3], "0.5": [2, 2, 2], "0.7": [1, 1, 1]}
    assert state["tscam_curve"] == {"gt_known": [2, 2], "top1_loc": [1, 1], "top5_loc": [1, 1]}
    summary = ev.compute()
    assert summary["wsol"]["v2"]["max_box_acc"] == pytest.approx({"0.3": 100.0, "0.5": 200 / 3, "0.7": 100 / 3})
    assert summary["wsol"]["v2"]["mean"] == pytest.approx(200 / 3)
    assert summary["tscam"]["gt_known"] == pytest.approx(200 / 3)
    assert summary["tscam"]["top1_loc"] == pytest.approx(100 / 3)
    # states of parts, through JSON and merged, give the same numbers
    parts = [json.loads(json.dumps(state_from_results(rs, TIE_SETTINGS)))
             for rs in ([res["seven"]], [res["half"], res["three"]])]
    assert summary_from_state(merge_states(parts), TIE_SETTINGS) == summary
    # a narrower float for the IoUs is refused rather than counted
    res["seven"].wsol_v1 = res["seven"].wsol_v1.astype(np.float32)
    with pytest.raises(TypeError, match="wsol_v1 must be float64"):
        state_from_results(list(res.values()), TIE_SETTINGS)


def test_wsol_constant_map_has_no_box_at_any_threshold():
    cam = np.full((64, 64), 0.7, np.float32)  # float32 bicubic to 224 would leave 1-ulp ripples
    assert not prepare_wsol_cam(cam, 224).any()
    settings = EvalSettings(frame=64, wsol_frame=224, thresholds=tuple(threshold_list(0, 1, 0.01).tolist()))
    res = evaluate_image(ImageInput("c", 0, 224, 224, np.array([[0.0, 0.0, 100.0, 100.0]]), {"gt": (0, cam)}), settings)
    # every τ falls back to [0, 0, 0, 0]: 1 px inside the 101 × 101 GT box
    assert res.wsol_v1.tolist() == [1 / 10201] * 100
    assert res.wsol_v2.tolist() == [1 / 10201] * 100


def _float32_wsol_pipeline(cam, frame):
    r = cv2.resize(np.asarray(cam, np.float32), (frame, frame), interpolation=cv2.INTER_CUBIC)
    return (((r - r.min()) / (r.max() - r.min())) * np.float32(255)).astype(np.uint8)


def test_wsol_near_constant_map_keeps_its_only_structure():
    cam = np.full((64, 64), 0.7, np.float32)
    cam[20, 30] = np.nextafter(np.float32(0.7), np.float32(1))  # one pixel one float32 ulp higher
    u8 = prepare_wsol_cam(cam, 224)
    for t in (0.3, 0.5, 0.9):
        (x1, y1, x2, y2), = wsol_boxes(u8, t, True).tolist()  # exactly one contour
        # source pixel (30, 20) is centred at ((30 + 0.5) · 3.5 − 0.5, (20 + 0.5) · 3.5 − 0.5) = (106.25, 71.25)
        assert x1 <= 106 <= x2 and y1 <= 71 <= y2 and x2 - x1 <= 6 and y2 - y1 <= 6, (t, x1, y1, x2, y2)
    # a float32 resize has ripples as large as the bump: other boxes
    u8_32 = _float32_wsol_pipeline(cam, 224)
    assert wsol_boxes(u8_32, 0.5, True).tolist() != wsol_boxes(u8, 0.5, True).tolist()
    # GenPromp's pipeline stays float32, as its evaluation code computes it
    r = cv2.resize(cam, (96, 96))
    expected = (((r - r.min()) / (r.max() - r.min())) * 255.).astype(np.uint8)
    np.testing.assert_array_equal(prepare_tscam_cam(cam, 96), expected)


def test_wsol_bicubic_overshoot_is_absorbed_by_float64_minmax():
    cam = np.zeros((16, 16), np.float32)
    cam[4:12, 4:12] = 1.0
    r = cv2.resize(cam.astype(np.float64), (224, 224), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(r.min()), float(r.max())
    assert lo < -0.1 and hi > 1.1  # bicubic under- and overshoot around the step
    u8 = prepare_wsol_cam(cam, 224)
    assert u8.min() == 0 and u8.max() == 255
    assert u8[0, 0] == int((0.0 - lo) / (hi - lo) * 255) == 23  # the flat zero region sits above the undershoot
    # wsolevaluation's steps, literally: float64 in place min-max, then ×255 truncated
    ref = r.copy()
    ref -= ref.min()
    ref /= ref.max()
    np.testing.assert_array_equal(u8, (ref * 255).astype(np.uint8))
    assert not np.array_equal(u8, _float32_wsol_pipeline(cam, 224))  # float32 rounds 3 pixels to 255


def test_box_acc_percent_in_wsolevaluations_order():
    """wsolevaluation reports num_correct * 100. / cnt; hits / n * 100 differs in the last bit for 1 of 7."""
    ious = np.zeros((7, 2))
    ious[0, :] = 1.0
    assert box_acc_percent(box_acc_hits(ious, 0.5), 7).tolist() == [1 * 100.0 / 7] * 2
    assert box_acc_percent(box_acc_hits(ious, 0.5), 7).tolist() != [1 / 7 * 100.0] * 2  # the other order's last bit differs
    assert box_acc_percent([1, 0], 7).tolist() == [1 * 100.0 / 7, 0.0]
