"""One-command performance check for an accelerator machine; writes every figure to one JSON file.

1. CAM extraction at SD-1.4 size (random weights, 512 px) in fp16 and in bf16: ours vs the original loop
   (``bench_cams.compare``: images/s of each side, their ratio, peak memory = max allocated above the start).
2. One stage-2 training step (frozen VAE encode + text encoder, UNet forward/backward in fp32, AdamW step)
   at batch 4, 512 px, with and without gradient checkpointing: seconds per step (mean of the timed steps
   after one warm-up step) and peak memory (max allocated, whole process).

Goals it reports against (top-1 mode, one H200): ours >= 20x the original loop and >= 200 images/s.
``--tiny`` (or GENPROMP_GPU_CHECK_TINY=1) runs the same code with narrow models at small sizes, which works
on the CPU in well under a minute (tests/test_gpu_check.py). The device comes from ``--device`` (``auto``:
the machine's accelerator when there is one, else the CPU).

    benchmarks/gpu_check.sh [OUT.json]                       # the whole check (< 8 minutes on one H100/H200)
    .venv/bin/python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_cams  # noqa: E402
import bench_unet_memory  # noqa: E402
from bench_cams import PeakMemory, pick_device, sync  # noqa: E402

from genpromp import layout  # noqa: E402
from genpromp.io import atomic_path  # noqa: E402

DEFAULT_OUT = Path(layout.RESULTS) / "bench" / "gpu_check.json"
GOALS = {"speedup": 20.0, "ours_images_per_s": 200.0}
# (full size, --tiny): images ours / baseline, our batch, warm-up images per side, stage-2 batch and
# resolution, timed stage-2 steps.
SIZES = {False: dict(images=128, baseline_images=16, batch=16, warmup=4, unet_batch=4, resolution=512, steps=3),
         True: dict(images=4, baseline_images=2, batch=4, warmup=1, unet_batch=2, resolution=64, steps=1)}
TINY_ENV = "GENPROMP_GPU_CHECK_TINY"


def cam_figures(device, dtype, size, tiny):
    """bench_cams.compare for one precision (SD-1.4 random weights, or the tiny model at ``size``)."""
    if tiny:
        comps = bench_cams.build_tiny(str(bench_cams.TOKENIZER), device, dtype)
        resolution = 128
    else:
        comps = bench_cams.build_sd14(str(bench_cams.TOKENIZER), device, dtype)
        comps.text_encoder.to(device)
        resolution = size["resolution"]
    work = bench_cams.make_workload(comps, size["images"], 20, resolution)
    with torch.no_grad():
        fig = bench_cams.compare(comps, work, resolution, device, dtype, size["batch"], 2, warmup=size["warmup"],
                                 baseline_images=size["baseline_images"], flops=not tiny and resolution == 512)
    del comps, work
    return fig


def frozen_models(tiny, device):
    """The frozen VAE and text encoder of stage 2 (SD-1.4 configs, random weights; narrow with ``tiny``)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from genpromp.rehearsal import SD14_TEXT_ENCODER_CONFIG, SD14_VAE_CONFIG

    vae_cfg = {k: v for k, v in SD14_VAE_CONFIG.items() if not k.startswith("_")}
    text_cfg = {k: v for k, v in SD14_TEXT_ENCODER_CONFIG.items() if k not in ("architectures", "model_type")}
    if tiny:
        vae_cfg.update(block_out_channels=[16, 32], down_block_types=["DownEncoderBlock2D"] * 2,
                       up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=8, layers_per_block=1)
        text_cfg.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        projection_dim=32)
    with torch.device(device):
        vae, text = AutoencoderKL(**vae_cfg), CLIPTextModel(CLIPTextConfig(**text_cfg))
    return vae.requires_grad_(False).eval(), text.requires_grad_(False).eval()


def stage2_step(vae, text, unet, opt, scheduler, batch, resolution, device, seed):
    """One stage-2 step as training runs it (accumulation 1): latents from the frozen VAE, 0.5 f_r + 0.5 f_d
    from the frozen text encoder, UNet forward/backward, AdamW step."""
    gen = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(batch, 3, resolution, resolution, generator=gen) * 2 - 1).to(device)
    ids = torch.randint(0, text.config.vocab_size, (2, batch, 77), generator=gen).to(device)
    with torch.no_grad():
        dist = vae.encode(pixels).latent_dist
        latents = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen).to(device)) * 0.18215
        cond = 0.5 * text(ids[0])[0] + 0.5 * text(ids[1])[0]
    noise = torch.randn(latents.shape, generator=gen).to(device)
    t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    noisy = scheduler.add_noise(latents, noise, t)
    bench_unet_memory.micro_step(unet, (noisy, noise, t, cond))
    opt.step()
    opt.zero_grad(set_to_none=True)


def stage2_figures(device, size, tiny, checkpointing):
    """Seconds per stage-2 step and the peak memory of the whole process (models, AdamW state, one step;
    on the CPU the peak RSS, interpreter included)."""
    from diffusers import DDPMScheduler

    from genpromp.demo.tiny import SD14_SCHEDULER

    scheduler = DDPMScheduler(**SD14_SCHEDULER)
    vae, text = frozen_models(tiny, device)
    unet = bench_unet_memory.build_unet(tiny, device)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-6, weight_decay=1e-2)
    batch, resolution = size["unet_batch"], size["resolution"]
    with PeakMemory(device) as mem:
        stage2_step(vae, text, unet, opt, scheduler, batch, resolution, device, 0)  # warm-up; creates AdamW's state
        sync(device)
        t0 = time.perf_counter()
        for s in range(size["steps"]):
            stage2_step(vae, text, unet, opt, scheduler, batch, resolution, device, s + 1)
        sync(device)
        seconds = (time.perf_counter() - t0) / size["steps"]
    del vae, text, unet, opt
    return {"batch": batch, "resolution": resolution, "seconds_per_step": seconds,
            "peak_bytes": mem.absolute}


def run_check(device, tiny, precisions):
    size = SIZES[tiny]
    out = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
           "python": platform.python_version(), "tiny": tiny, "torch_threads": torch.get_num_threads(),
           "goals": GOALS, "cams": {}, "stage2": {}}
    for name in precisions:
        out["cams"][name] = cam_figures(device, bench_cams.DTYPES[name], size, tiny)
        empty_cache(device)
    for ck in (False, True):
        out["stage2"][f"checkpointing_{'on' if ck else 'off'}"] = stage2_figures(device, size, tiny, ck)
        empty_cache(device)
    out["goals_met"] = {name: {k: out["cams"][name][k] >= v for k, v in GOALS.items()} for name in out["cams"]}
    return out


def device_name(device):
    if device.type == "cpu":
        return platform.processor() or "cpu"
    backend = getattr(torch, device.type, None)
    return backend.get_device_name(device) if hasattr(backend, "get_device_name") else device.type


def empty_cache(device):
    if device.type != "cpu":
        torch.accelerator.empty_cache()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file of all figures (default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device; auto = the accelerator if any, else cpu")
    p.add_argument("--tiny", action="store_true", default=os.environ.get(TINY_ENV) == "1",
                   help=f"narrow models, small sizes: a quick run that works on the CPU (or {TINY_ENV}=1)")
    p.add_argument("--precisions", default="fp16,bf16", help="CAM benchmark precisions (fp16, bf16, fp32)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    start = time.perf_counter()
    out = run_check(device, args.tiny, args.precisions.split(","))
    out["total_seconds"] = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(out, indent=2) + "\n")
    for name, fig in out["cams"].items():
        print(f"CAMs {name}: ours {fig['ours_images_per_s']:.2f} images/s, original loop "
              f"{fig['baseline_images_per_s']:.2f} images/s, {fig['speedup']:.2f}x; peak "
              f"{fig['ours_peak_bytes'] / 2**30:.2f} / {fig['baseline_peak_bytes'] / 2**30:.2f} GiB")
    for name, fig in out["stage2"].items():
        print(f"stage 2 {name}: {fig['seconds_per_step']:.3f} s/step, peak {fig['peak_bytes'] / 2**30:.2f} GiB")
    print(f"wrote {args.out} ({out['total_seconds']:.0f} s)")
    return out


if __name__ == "__main__":
    main()
