"""benchmarks/gpu_check.sh end to end on the CPU at tiny size: one JSON file with every figure."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CAM_FIGURES = ("ours_images_per_s", "baseline_images_per_s", "speedup", "ours_seconds", "baseline_seconds",
               "ours_peak_absolute_bytes", "baseline_peak_absolute_bytes")
# Memory above the start of a side: on the CPU the RSS can stay flat when freed memory is reused.
ABOVE_START = ("ours_peak_bytes", "baseline_peak_bytes")
STAGE2_FIGURES = ("seconds_per_step", "peak_bytes", "batch", "resolution")


def _positive(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_gpu_check_runs_on_cpu_at_tiny_size(tmp_path):
    out = tmp_path / "bench" / "check.json"
    env = {**os.environ, "GENPROMP_GPU_CHECK_TINY": "1", "PYTHON": sys.executable}
    proc = subprocess.run([str(REPO / "benchmarks/gpu_check.sh"), str(out), "--device", "cpu"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fig = json.loads(out.read_text())
    assert fig["tiny"] is True and fig["device"] == "cpu"
    assert set(fig["cams"]) == {"fp16", "bf16"}
    assert set(fig["stage2"]) == {"checkpointing_off", "checkpointing_on"}
    for name, cam in fig["cams"].items():
        assert cam["dtype"] == {"fp16": "float16", "bf16": "bfloat16"}[name]
        bad = {k: cam.get(k) for k in CAM_FIGURES if not _positive(cam.get(k))}
        assert not bad, f"{name}: {bad}"
        assert all(cam[k] >= 0 for k in ABOVE_START)
        assert math.isclose(cam["speedup"], (cam["baseline_seconds"] / cam["baseline_images"])
                            / (cam["ours_seconds"] / cam["images"]))
        # half-precision maps of the two paths agree to a few float16/bfloat16 steps of a [0, 1] map
        assert 0 <= cam["max_abs_cam_difference"] < 0.05
        assert set(fig["goals_met"][name]) == set(fig["goals"])
    for name, step in fig["stage2"].items():
        bad = {k: step.get(k) for k in STAGE2_FIGURES if not _positive(step.get(k))}
        assert not bad, f"{name}: {bad}"
    assert _positive(fig["total_seconds"])
