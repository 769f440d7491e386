"""Benchmark: the CAM part of a multi-variant workflow with and without the VAE latent cache, in one run.

Baseline (what every CAM job did before the cache, and what the original does for each setting): each CAM
cache (run × variant) decodes its test images and encodes them through the VAE, then runs the UNet passes
(``extract_cams`` on the images). Ours: one ``encode_latents`` pass per image writes a latent shard, and each
CAM cache reads it and runs the UNet passes only (``extract_cams(latents=...)``). Both produce the same maps
(checked here: bit-identical); the noise is regenerated in both.

Two settings:

* ``tiny``: the demo model's architecture (config/config.yaml demo.tiny_model, random weights) at the demo's
  test.resolution, the demo's test-set size and its variant set (every run × eval_modes at combine_ratio,
  plus the main run's gtk combine-ratio sweep): the whole DAG is timed both ways.
* ``sd14``: SD-1.4's VAE and UNet (random weights) at 512 px, a paper-like variant set (2 runs × (gtk, top1)
  + 5 more gtk ratios). On a CPU the whole DAG takes too long, so one VAE encode and one UNet pass of one
  prompt are timed and the DAG's time is these unit times × the DAG's counts (printed as such).

FLOPs (torch.utils.flop_counter.FlopCounterMode, plus a formula for the CPU's fused attention kernel, which
it does not count) are counted for one image's VAE encode and one prompt's UNet pass (all timesteps) and
multiplied by the DAG's image and prompt counts. Model loading is left out of both sides.

    .venv/bin/python benchmarks/bench_latent_cache.py                  # tiny then sd14 (CPU: sd14 takes minutes)
    .venv/bin/python benchmarks/bench_latent_cache.py --only tiny
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from genpromp.cams.embeddings import ClassEmbeddings  # noqa: E402
from genpromp.cams.extract import (  # noqa: E402
    ImageRecord, choose_device, compute_pair_cams, encode_latents_and_noise, extract_cams, place_module,
    plan_prompts, settings_from_config,
)
from genpromp.cams.latents import encode_records, read_latent_shard, write_latent_shard  # noqa: E402
from genpromp.config import load_config  # noqa: E402
from genpromp.layout import Variant  # noqa: E402
from genpromp.models.loading import SDComponents  # noqa: E402

N_CLASSES = 4
TOKEN_INDEX = 5


def dag_variants(config):
    """The test-split CAM caches of a config's default target: (run, Variant), as workflow/rules/common.smk
    lists them (every run × eval_modes at combine_ratio, plus the main run's gtk combine-ratio sweep)."""
    test, runs = config["test"], list(config["runs"])
    main = [Variant(m, test["combine_ratio"], test["timesteps"]) for m in test["eval_modes"]]
    sweep = [Variant("gtk", w, test["timesteps"]) for w in test["combine_ratios"]]
    return list(dict.fromkeys([(r, v) for r in runs for v in main] + [(runs[0], v) for v in sweep]))


def sd14_variants(config):
    """2 runs × (gtk, top1) at w = 0.6 and 5 more gtk ratios on the main run: 9 caches."""
    main = [Variant(m, 0.6, config["test"]["timesteps"]) for m in ("gtk", "top1")]
    sweep = [Variant("gtk", w, config["test"]["timesteps"]) for w in (0.0, 0.2, 0.4, 0.8, 1.0)]
    return [(r, v) for r in ("genpromp", "no_stage2") for v in main] + [("genpromp", v) for v in sweep]


def write_images(folder, n, seed=0):
    """``n`` random JPEG test images (odd sizes, so decoding and the bicubic resize do real work) and their
    ImageRecords: labels cycle over the classes, top-1 agrees with the label for about 70 % of them."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        h, w = int(rng.integers(300, 500)), int(rng.integers(300, 500))
        path = Path(folder) / f"img_{i}.jpg"
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path, quality=92)
        label = i % N_CLASSES
        order = [c for c in rng.permutation(N_CLASSES).tolist() if c != label]
        top5 = ([label] + order if rng.random() < 0.7 else order[:1] + [label] + order[1:]) + [label]
        records.append(ImageRecord(f"img_{i}", str(path), label, tuple(top5[:5])))
    return records


def random_embeddings(dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    f_r, f_d = torch.randn(N_CLASSES, 77, dim, generator=g), torch.randn(N_CLASSES, 77, dim, generator=g)
    return ClassEmbeddings(f_r, f_d, torch.arange(N_CLASSES))


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs):
    """softmax(Q Kᵀ) V: two matrix products (the counter passes shapes)."""
    b, h, lq, d = query
    return 2 * b * h * lq * key[-2] * (d + value[-1])


# The counter has no formula for the CPU's fused attention kernel; without one it counts attention as 0.
SDPA_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def count_flops(fn, *args, **kw):
    mapping = {SDPA_CPU: _sdpa_flops} if SDPA_CPU is not None else {}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn(*args, **kw)
    return counter.get_total_flops()


def unit_costs(comps, records, settings, device, dtype, emb, timed=True):
    """FLOPs and seconds of one image's VAE encode and of one prompt's UNet pass (all timesteps)."""
    pixels = torch.rand(1, 3, settings.resolution, settings.resolution) * 2 - 1
    vae = place_module(comps.vae, device, dtype)
    place_module(comps.unet, device, dtype)
    ids = [records[0].image_id]
    vae_flops = count_flops(encode_latents_and_noise, vae, pixels.to(device, dtype), ids, settings.seed)
    latents, noise = encode_latents_and_noise(vae, pixels.to(device, dtype), ids, settings.seed)
    cond = emb.f_r[:1]
    args = (comps.unet, comps.scheduler, latents, noise, cond, np.zeros(1, np.int64), settings, dtype)
    unet_flops = count_flops(compute_pair_cams, *args)
    out = {"vae_flops": vae_flops, "unet_flops": unet_flops}
    if timed:
        out["vae_s"] = _seconds(encode_latents_and_noise, vae, pixels.to(device, dtype), ids, settings.seed)
        out["unet_s"] = _seconds(compute_pair_cams, *args)
    return out


def _seconds(fn, *args):
    t0 = time.perf_counter()
    with torch.no_grad():
        fn(*args)
    return time.perf_counter() - t0


def dag_counts(records, variants):
    """(images encoded without the cache, images encoded with it, UNet prompts) of the DAG's CAM jobs."""
    prompts = 0
    for _, v in variants:
        _, pairs, _ = plan_prompts(v.mode, [r.label for r in records], [r.top5 for r in records])
        prompts += len(pairs)
    return len(records) * len(variants), len(records), prompts


def settings_for(config, variant):
    return settings_from_config(config, variant.mode, variant.ratio, variant.timesteps, TOKEN_INDEX)


def run_dag(comps, emb, records, variants, config, device, dtype, folder):
    """Every CAM cache of ``variants`` both ways, the two alternating cache by cache (so a load change on a
    shared machine hits both alike). Returns (baseline s, ours s, of which encode s, all maps identical)."""
    test, ids = config["test"], [r.image_id for r in records]
    t0 = time.perf_counter()
    latents = encode_records(comps.vae, records, test["resolution"], test["batch_size"], config["seed"], device, dtype)
    path = write_latent_shard(Path(folder) / "shard-00000.safetensors", ids, latents, config["seed"],
                              test["resolution"])
    encode_s = time.perf_counter() - t0
    baseline_s, ours_s, same = 0.0, encode_s, True
    for n, (_, v) in enumerate(variants):
        settings = settings_for(config, v)
        for side in ((0, 1) if n % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            if side == 0:
                direct = extract_cams(comps, emb, records, settings, device, dtype)[2]
                baseline_s += time.perf_counter() - t0
            else:
                shard = read_latent_shard(path, ids, dtype, config["seed"], test["resolution"])
                cached = extract_cams(comps, emb, records, settings, device, dtype, latents=shard.latents)[2]
                ours_s += time.perf_counter() - t0
        same = same and np.array_equal(direct, cached)
    return baseline_s, ours_s, encode_s, same


def report_flops(name, units, counts):
    enc_base, enc_ours, prompts = counts
    base = enc_base * units["vae_flops"] + prompts * units["unet_flops"]
    ours = enc_ours * units["vae_flops"] + prompts * units["unet_flops"]
    print(f"[{name}] per image: VAE encode {units['vae_flops'] / 1e9:.1f} GFLOP; per prompt: UNet pass (all "
          f"timesteps, early exit) {units['unet_flops'] / 1e9:.1f} GFLOP")
    print(f"[{name}] DAG: {enc_base} VAE encodes without the cache, {enc_ours} with it; {prompts} UNet prompts")
    print(f"[{name}] DAG FLOPs: baseline {base / 1e12:.2f} TFLOP, ours {ours / 1e12:.2f} TFLOP, "
          f"ratio {base / ours:.2f}x")
    return base, ours


def tiny_setting(args):
    from genpromp.demo.tiny import create_tiny_components

    config = load_config(REPO / "config" / "config.yaml")
    arch = {k: config["demo"]["tiny_model"][k] for k in ("resolution", "block_out_channels", "heads",
                                                        "cross_attention_dim", "text_hidden_size", "text_layers",
                                                        "vae_channels")}
    tok, _, vae, unet, sched = create_tiny_components(args.tokenizer, **arch)
    comps = SDComponents(tok, None, vae.eval(), unet.eval(), sched)
    device, dtype = choose_device(config["test"]["inference_precision"])
    demo = config["demo"]
    n = args.images or demo["n_classes"] * demo["test_per_class"]
    variants = dag_variants(config)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        records = write_images(tmp, n)
        emb = random_embeddings(arch["cross_attention_dim"])
        settings = settings_for(config, variants[0][1])
        units = unit_costs(comps, records, settings, device, dtype, emb, timed=False)
        extract_cams(comps, emb, records[:2], settings, device, dtype)  # warm-up
        base_s, ours_s, enc_s, same = run_dag(comps, emb, records, variants, config, device, dtype, tmp)
    print(f"[tiny] {device} {str(dtype).removeprefix('torch.')}, {settings.resolution} px, {n} images, "
          f"{len(variants)} CAM caches: {', '.join(f'{r}/{v}' for r, v in variants)}")
    report_flops("tiny", units, dag_counts(records, variants))
    print(f"[tiny] DAG wall time (measured): baseline {base_s:.1f} s, ours {ours_s:.1f} s (of which encode_latents "
          f"{enc_s:.1f} s), ratio {base_s / ours_s:.2f}x; maps bit-identical: {same}")


def sd14_components():
    """SD-1.4's VAE and UNet with random weights (the rehearsal's configs); no text encoder is needed."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from genpromp.demo.tiny import SD14_SCHEDULER
    from genpromp.rehearsal import SD14_UNET_CONFIG, SD14_VAE_CONFIG

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{k: v for k, v in SD14_UNET_CONFIG.items() if not k.startswith("_")})
    vae = AutoencoderKL(**{k: v for k, v in SD14_VAE_CONFIG.items() if not k.startswith("_")})
    return SDComponents(None, None, vae.eval(), unet.eval(), DDPMScheduler(**SD14_SCHEDULER))


def sd14_setting(args):
    config = load_config(REPO / "config" / "cub.yaml")
    config["test"].update(resolution=512, batch_size=args.images or 3)
    comps = sd14_components()
    device, dtype = choose_device(config["test"]["inference_precision"])
    n = args.images or 3
    variants = sd14_variants(config)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        records = write_images(tmp, n)
        emb = random_embeddings(768)
        units = unit_costs(comps, records, settings_for(config, variants[0][1]), device, dtype, emb)
    counts = dag_counts(records, variants)
    print(f"[sd14] {device} {str(dtype).removeprefix('torch.')}, 512 px, {n} images, {len(variants)} CAM caches: "
          f"{', '.join(f'{r}/{v}' for r, v in variants)}")
    report_flops("sd14", units, counts)
    enc_base, enc_ours, prompts = counts
    base_s = enc_base * units["vae_s"] + prompts * units["unet_s"]
    ours_s = enc_ours * units["vae_s"] + prompts * units["unet_s"]
    print(f"[sd14] measured units: VAE encode {units['vae_s']:.1f} s/image, UNet pass {units['unet_s']:.1f} s/prompt")
    print(f"[sd14] DAG wall time (units x counts, not the whole DAG run): baseline {base_s:.0f} s, ours {ours_s:.0f} s, "
          f"ratio {base_s / ours_s:.2f}x")
    side = 512 // 8
    print(f"[sd14] latent cache: 4x{side}x{side} per image = {4 * side * side * 2 // 1024} KiB in float16 "
          f"({4 * side * side * 4 // 1024} KiB in float32)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("tiny", "sd14"), default=None, help="run one setting only")
    p.add_argument("--images", type=int, default=None, help="test images (default: the demo's test set / 3)")
    p.add_argument("--tokenizer", default=str(REPO / "resources" / "assets" / "clip_tokenizer"),
                   help="CLIP tokenizer folder (the tiny model's vocabulary)")
    p.add_argument("--scratch", default=None, help="folder for the temporary images and latent shard")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.only in (None, "tiny"):
        tiny_setting(args)
    if args.only in (None, "sd14"):
        sd14_setting(args)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
