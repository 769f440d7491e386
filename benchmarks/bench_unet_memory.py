"""Benchmark: peak memory of one stage-2 step at SD-1.4 size, with and without gradient checkpointing.

A stage-2 micro-step is: frozen VAE encode and text encoder (no grad), UNet forward in fp32, MSE to the
noise, backward; every ``gradient_accumulation_steps`` micro-steps an AdamW step. What it holds at its peak:

* persistent: UNet weights 4 B, gradients 4 B (kept across the accumulated micro-steps), AdamW's two
  moments 8 B per parameter (860M parameters), plus the frozen VAE and text encoder weights (4 B each);
* the micro-step's activations A(batch): what the forward saves for the backward plus the backward's
  transients. This is the part gradient checkpointing changes, and the part this script measures;
* during AdamW's step (the default multi-tensor implementation on a GPU) one temporary of 4 B per
  parameter (the square root of the second moment), while the activations are already freed.

Each measured point runs in a fresh process: the SD-1.4 UNet with random weights, gradients pre-set to
zero (the accumulation state), then one forward + backward on random latents / text states / timesteps;
A = peak RSS during it minus the RSS before it (sampled every 5 ms; glibc is told to return freed memory at
once, so the RSS follows the live tensors). Points that exceed ``--max-rss-gib`` are reported as not fitting.
Totals = analytic persistent bytes + A; A at batch sizes that do not fit on this machine is derived from
A(1) as c + batch · (A(1) - c), with the batch-independent part c (backward transients of the weights'
gradients) taken from a linear fit at a lower resolution where every batch size fits. Output: a table on
stdout and, with ``--json``, every figure with a ``measured`` / ``derived`` tag.

    nice -n 10 .venv/bin/python benchmarks/bench_unet_memory.py --json results/bench/unet_memory_cpu.json
    .venv/bin/python benchmarks/bench_unet_memory.py --tiny          # seconds: a small UNet, to check the script
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cams import GIB, PeakMemory  # noqa: E402

# Bytes per UNet parameter that stay for the whole training: weights, gradients, AdamW exp_avg and exp_avg_sq.
PERSISTENT_BYTES_PER_PARAM = 4 + 4 + 8
# AdamW's multi-tensor step allocates sqrt(exp_avg_sq) for all parameters at once (fp32).
FOREACH_TEMP_BYTES_PER_PARAM = 4
# Frozen fp32 models beside the UNet in stage 2: SD-1.4's VAE (83.65M) and CLIP-L text encoder (123.06M).
FROZEN_PARAMS_SD14 = 83_653_863 + 123_060_480
GPU_SIZES_GB = (16, 24, 40, 80)
# glibc: allocations above 64 KiB via mmap, so freed tensors leave the RSS at once.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def build_unet(tiny=False, device="cpu", seed=0):
    """The SD-1.4 UNet (stable-diffusion-v1-4's config) with random weights, fp32, in train mode; ``tiny``:
    the same block layout with narrow widths (for checking the script)."""
    from diffusers import UNet2DConditionModel

    from genpromp.rehearsal import SD14_UNET_CONFIG

    cfg = {k: v for k, v in SD14_UNET_CONFIG.items() if not k.startswith("_")}
    if tiny:
        cfg.update(block_out_channels=[16, 32, 32, 32], attention_head_dim=2, cross_attention_dim=32,
                   norm_num_groups=8, sample_size=8, layers_per_block=1)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg)
    return unet.train()


def step_inputs(unet, batch, resolution, device, seed=0):
    """Random noisy latents, noise, timesteps and text states for one micro-step (latent side = resolution / 8)."""
    gen = torch.Generator().manual_seed(seed)
    side = resolution // 8
    x = torch.randn(batch, unet.config.in_channels, side, side, generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    cond = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=gen)
    return [v.to(device) for v in (x, noise, t, cond)]


def micro_step(unet, inputs):
    """Forward, the stage-2 loss (MSE per sample, mean) and backward; returns the loss."""
    x, noise, t, cond = inputs
    pred = unet(x, t, cond).sample
    loss = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3)).mean()
    loss.backward()
    return loss.detach()


def measure_point(batch, resolution, checkpointing, tiny=False, cap_bytes=None):
    """One micro-step's activation memory on the CPU (bytes above weights + gradients) and its seconds."""
    device = torch.device("cpu")
    unet = build_unet(tiny, device)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    for p in unet.parameters():
        p.grad = torch.zeros_like(p)
    inputs = step_inputs(unet, batch, resolution, device)
    with PeakMemory(device, cap_bytes) as mem:
        t0 = time.perf_counter()
        micro_step(unet, inputs)
        seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in unet.parameters())
    return {"batch": batch, "resolution": resolution, "checkpointing": checkpointing, "params": params,
            "activation_bytes": mem.peak, "rss_before_bytes": mem.start, "seconds": seconds}


def run_point_subprocess(batch, resolution, checkpointing, args):
    """measure_point in a fresh interpreter; None when it exceeded the memory cap (or failed)."""
    cmd = [sys.executable, __file__, "--point", f"{batch},{resolution},{int(checkpointing)}",
           "--max-rss-gib", str(args.max_rss_gib), "--threads", str(args.threads)] + (["--tiny"] if args.tiny else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **MALLOC_ENV})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        print(f"  batch {batch} {resolution}px checkpointing {checkpointing}: did not fit / failed "
              f"(rc {proc.returncode}) {proc.stderr.strip().splitlines()[-1:] }", flush=True)
        return None
    point = json.loads(lines[-1])
    print(f"  batch {batch} {resolution}px checkpointing {checkpointing}: activations "
          f"{point['activation_bytes'] / GIB:.2f} GiB, {point['seconds']:.1f} s", flush=True)
    return point


def measure_main(res, batches, args):
    """{(batch, checkpointing): point} at the main resolution, batch sizes in increasing order, skipping those
    whose predicted RSS (RSS before + batch x A(1), +10 %) exceeds the cap."""
    points, cap = {}, args.max_rss_gib * GIB
    for ck in (False, True):
        for b in sorted(batches):
            one = points.get((1, ck))
            if one and (one["rss_before_bytes"] + 1.1 * b * one["activation_bytes"]) > cap:
                print(f"  batch {b} {res}px checkpointing {ck}: predicted above the {args.max_rss_gib} GiB cap; "
                      "derived", flush=True)
                break
            point = run_point_subprocess(b, res, ck, args)
            if point is None:
                break  # larger batches need more memory still
            points[(b, ck)] = point
    return points


def linearity(points):
    """Per-checkpointing least-squares fit A = slope · batch + intercept over ``points`` (one resolution)."""
    fits = {}
    for ck in (False, True):
        pts = [(p["batch"], p["activation_bytes"]) for p in points if p and p["checkpointing"] == ck]
        if len(pts) < 2:
            continue
        n = len(pts)
        mb, ma = sum(b for b, _ in pts) / n, sum(a for _, a in pts) / n
        slope = sum((b - mb) * (a - ma) for b, a in pts) / sum((b - mb) ** 2 for b, _ in pts)
        fits[ck] = {"slope_bytes_per_sample": slope, "intercept_bytes": ma - slope * mb,
                    "points": [{"batch": b, "activation_bytes": a} for b, a in pts]}
    return fits


def table(params, frozen_params, measured, batches, fits=None):
    """Rows of the memory table at the main resolution: A measured where possible, else derived: the line
    through the measured batch sizes when there are two or more, else c + batch · (A(1) - c) with c the
    intercept of the lower-resolution check's fit (``fits``; 0 without one)."""
    rows, fits, main = [], fits or {}, linearity(list(measured.values()))
    persistent = params * PERSISTENT_BYTES_PER_PARAM + frozen_params * 4
    optimizer_peak = persistent + params * FOREACH_TEMP_BYTES_PER_PARAM
    for ck in (False, True):
        one = measured.get((1, ck))
        for b in batches:
            got = measured.get((b, ck))
            if got is None and one is None:
                continue
            if ck in main:
                c, slope = main[ck]["intercept_bytes"], main[ck]["slope_bytes_per_sample"]
            else:
                c = max(fits.get(ck, {}).get("intercept_bytes", 0.0), 0.0)
                slope = one["activation_bytes"] - c
            act = got["activation_bytes"] if got else c + b * slope
            total = max(persistent + act, optimizer_peak)
            rows.append({"batch": b, "checkpointing": ck, "activation_bytes": act,
                         "activations": "measured" if got else "derived (linear in batch)",
                         "persistent_bytes": persistent, "optimizer_step_peak_bytes": optimizer_peak,
                         "total_bytes": total, "fits_gpu_gb": [g for g in GPU_SIZES_GB if total <= g * 1e9]})
    return rows


def print_table(rows):
    print(f"{'batch':>5} {'ckpt':>5} {'activations GiB':>16} {'source':>24} {'total GiB':>10}  fits (GB)")
    for r in rows:
        print(f"{r['batch']:>5} {str(r['checkpointing']):>5} {r['activation_bytes'] / GIB:>16.2f} "
              f"{r['activations']:>24} {r['total_bytes'] / GIB:>10.2f}  {r['fits_gpu_gb']}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=512, help="main resolution of the table (px)")
    p.add_argument("--batches", default="1,2,4", help="batch sizes of the table")
    p.add_argument("--check-resolution", type=int, default=256, help="resolution of the linearity check (px)")
    p.add_argument("--check-batches", default="1,2,4", help="batch sizes of the linearity check")
    p.add_argument("--max-rss-gib", type=float, default=12.0, help="a point whose RSS exceeds this is stopped")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--tiny", action="store_true", help="narrow UNet, 64 / 32 px: checks the script in seconds")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.add_argument("--point", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.point:
        b, r, ck = (int(v) for v in args.point.split(","))
        print(json.dumps(measure_point(b, r, bool(ck), args.tiny, int(args.max_rss_gib * GIB))))
        return None
    res, check_res = (64, 32) if args.tiny else (args.resolution, args.check_resolution)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"stage-2 micro-step memory, {'tiny UNet' if args.tiny else 'SD-1.4 UNet'} fp32, CPU RSS, "
          f"torch threads {args.threads}, cap {args.max_rss_gib} GiB")
    check = [run_point_subprocess(b, check_res, ck, args) for ck in (False, True)
             for b in [int(v) for v in args.check_batches.split(",")]]
    main_pts = measure_main(res, batches, args)
    params = next(p["params"] for p in [*main_pts.values(), *check] if p)
    fits = linearity(check)
    rows = table(params, 0 if args.tiny else FROZEN_PARAMS_SD14, main_pts, batches, fits)
    print_table(rows)
    out = {"resolution": res, "params": params, "frozen_params": 0 if args.tiny else FROZEN_PARAMS_SD14,
           "measured": [p for p in main_pts.values()], "linearity_check": {"resolution": check_res,
           "fits": {str(k): v for k, v in fits.items()}}, "table": rows, "threads": args.threads}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
