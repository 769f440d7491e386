"""genpromp.evaluation.bootstrap: the vectorised resampling against a per-resample loop, hand-computed
intervals, determinism, and the paired difference."""

import numpy as np
import pandas as pd
import pytest

from genpromp.errors import ConfigError
from genpromp.evaluation.bootstrap import (
    align_common, bootstrap_blocks, bootstrap_settings, intervals, metric_blocks, paired_differences,
    percentile_interval, resample_indices, resample_means,
)

DELTAS = (0.3, 0.5, 0.7)


def _per_image(n, n_thr=11, seed=1, cls=True):
    """A per-image table with random IoUs (some exactly at δ) and hits."""
    rng = np.random.default_rng(seed)
    grid = np.array([0.0, 0.3, 0.5, 0.7, 0.9])
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)]})
    df["gt_known"] = rng.random(n) < 0.6
    if cls:
        df["top1_loc"] = rng.random(n) < 0.4
        df["cls1"] = rng.random(n) < 0.7
    for col in ("wsol_v1_ious", "wsol_v2_ious"):
        df[col] = [np.where(rng.random(n_thr) < 0.5, grid[rng.integers(0, 5, n_thr)], rng.random(n_thr))
                   for _ in range(n)]
    df["tscam_ious"] = [rng.random(5) for _ in range(n)]
    return df


def _loop_figures(df, idx):
    """Figures of every resample by the plain route: select the drawn rows, take means and maxima."""
    out = {"gt_known": [], "top1_loc": [], "max_box_acc_v2": [], "max_box_acc": [], "curve_top1_loc": []}
    v2 = np.stack(df["wsol_v2_ious"].to_list())
    v1 = np.stack(df["wsol_v1_ious"].to_list())
    ts = np.stack(df["tscam_ious"].to_list())
    for sel in idx:
        out["gt_known"].append(df["gt_known"].to_numpy()[sel].mean() * 100)
        out["top1_loc"].append(df["top1_loc"].to_numpy()[sel].mean() * 100)
        out["max_box_acc_v2"].append(np.mean([(v2[sel] >= d).mean(axis=0).max() * 100 for d in DELTAS]))
        out["max_box_acc"].append((v1[sel] >= 0.5).mean(axis=0).max() * 100)
        out["curve_top1_loc"].append(((ts[sel] > 0.5) & df["cls1"].to_numpy()[sel, None]).mean(axis=0) * 100)
    return {k: np.array(v) for k, v in out.items()}


def test_vectorised_equals_per_resample_loop():
    df = _per_image(37)
    idx = resample_indices(len(df), 150, seed=3)
    boot = bootstrap_blocks(metric_blocks(df, DELTAS), idx)
    ref = _loop_figures(df, idx)
    for k, values in ref.items():
        assert boot[k][1] == pytest.approx(values, rel=1e-12, abs=1e-12), k
    assert boot["gt_known"][0] == pytest.approx(df["gt_known"].mean() * 100)


def test_resample_means_counts_repeated_images():
    """An image drawn twice counts twice: the means of a hand-made index matrix."""
    values = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    idx = np.array([[0, 0, 0], [1, 1, 2], [2, 2, 2], [0, 1, 2]])
    assert resample_means(values, idx) == pytest.approx(np.array([[100, 0], [100 / 3, 100 / 3], [100, 100],
                                                                  [200 / 3, 100 / 3]]))


def test_all_hits_give_a_degenerate_interval():
    df = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "gt_known": [True] * 4, "cls1": [False] * 4})
    cis = intervals(bootstrap_blocks(metric_blocks(df), resample_indices(4, 200, 0)), 0.95)
    assert cis["gt_known"] == (100.0, 100.0, 100.0)
    assert cis["cls1"] == (0.0, 0.0, 0.0)


def test_two_images_have_the_known_resample_distribution():
    """One hit and one miss: a resample's mean is 0, 50 or 100 % with probabilities 1/4, 1/2, 1/4, so the
    95 % interval is [0, 100] and the 40 % interval (30th to 70th percentile) is [50, 50]."""
    df = pd.DataFrame({"image_id": ["hit", "miss"], "gt_known": [True, False]})
    idx = resample_indices(2, 4000, 0)
    _, stats = bootstrap_blocks(metric_blocks(df), idx)["gt_known"]
    freq = {v: np.mean(stats == v) for v in (0.0, 50.0, 100.0)}
    assert sum(freq.values()) == 1.0
    assert freq[0.0] == pytest.approx(0.25, abs=0.03) and freq[50.0] == pytest.approx(0.5, abs=0.03)
    assert percentile_interval(stats, 0.95) == (0.0, 100.0)
    assert percentile_interval(stats, 0.40) == (50.0, 50.0)


def test_percentile_interval_by_hand():
    """Linear-interpolation percentiles of 0..100 are the percentages themselves."""
    lo, hi = percentile_interval(np.arange(101.0), 0.9)
    assert (lo, hi) == pytest.approx((5.0, 95.0))


def test_the_seed_fixes_the_interval():
    df = _per_image(25)
    blocks = metric_blocks(df, DELTAS)
    a = intervals(bootstrap_blocks(blocks, resample_indices(25, 300, 7)), 0.95)
    b = intervals(bootstrap_blocks(blocks, resample_indices(25, 300, 7)), 0.95)
    c = intervals(bootstrap_blocks(blocks, resample_indices(25, 300, 8)), 0.95)
    assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)
    assert any(not np.array_equal(np.asarray(a[k]), np.asarray(c[k])) for k in a)
    assert np.array_equal(resample_indices(25, 300, 7), resample_indices(25, 300, 7))


def test_max_box_acc_rechooses_tau_per_resample():
    """Two images, each a hit at a different τ only: on all images the best τ scores 50 %, but a resample
    of one image twice scores 100 % at that image's τ."""
    df = pd.DataFrame({"image_id": ["a", "b"], "wsol_v2_ious": [np.array([0.9, 0.0]), np.array([0.0, 0.9])],
                       "wsol_v1_ious": [np.array([0.9, 0.0]), np.array([0.0, 0.9])]})
    boot = bootstrap_blocks(metric_blocks(df, (0.5,)), np.array([[0, 0], [1, 1], [0, 1]]))
    assert boot["max_box_acc_v2"][0] == 50.0
    assert boot["max_box_acc_v2"][1].tolist() == [100.0, 100.0, 50.0]
    assert boot["max_box_acc"][1].tolist() == [100.0, 100.0, 50.0]


def test_paired_difference_uses_the_same_resamples():
    """b is a copy of a with one hit turned into a miss: every resample's difference is 100/N times the
    count of that image, never negative; against itself the difference is exactly 0."""
    a = _per_image(20, cls=False)
    b = a.copy()
    first_hit = int(np.flatnonzero(a["gt_known"])[0])
    b.loc[first_hit, "gt_known"] = False
    idx = resample_indices(20, 500, 0)
    d = paired_differences(metric_blocks(a, DELTAS), metric_blocks(b, DELTAS), idx, 0.95, ["gt_known", "top1_loc"])
    assert set(d) == {"gt_known"}  # neither side has top1_loc
    va, vb, diff, lo, hi = d["gt_known"]
    assert diff == pytest.approx(5.0) and va - vb == pytest.approx(5.0)
    counts = (idx == first_hit).sum(axis=1) * 100 / 20
    assert (lo, hi) == pytest.approx(percentile_interval(counts, 0.95))
    same = paired_differences(metric_blocks(a, DELTAS), metric_blocks(a, DELTAS), idx, 0.95, ["max_box_acc_v2"])
    assert same["max_box_acc_v2"][2:] == (0.0, 0.0, 0.0)


def test_align_common_keeps_shared_images_in_the_first_order():
    a = pd.DataFrame({"image_id": ["x", "y", "z"], "gt_known": [True, False, True]})
    b = pd.DataFrame({"image_id": ["z", "w", "x"], "gt_known": [False, True, True]})
    ra, rb = align_common(a, b)
    assert ra["image_id"].tolist() == rb["image_id"].tolist() == ["x", "z"]
    assert rb["gt_known"].tolist() == [True, False]


def test_gtk_tables_have_no_classifier_figures():
    df = pd.DataFrame({"image_id": ["a", "b"], "gt_known": [True, False], "top1_loc": [None, None],
                       "cls1": [None, None], "wsol_v2_ious": [[], []]})
    assert set(metric_blocks(df, DELTAS)) == {"gt_known"}


def test_settings_defaults_and_bad_values():
    s = bootstrap_settings()
    assert (s.samples, s.seed, s.level) == (1000, 0, 0.95)
    assert bootstrap_settings({"samples": 10}).samples == 10 and bootstrap_settings({"samples": 10}).level == 0.95
    for bad in ({"samples": 0}, {"level": 1.0}):
        with pytest.raises(ConfigError, match="evaluation.bootstrap"):
            bootstrap_settings(bad)
