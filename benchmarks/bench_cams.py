"""Benchmark: our CAM extraction vs a faithful re-implementation of the original loop, in one process.

Baseline (``genpromp.cams.reference``): store-everything processor on every attention layer, full UNet,
text encoder on every template per batch and role, batch 2, one UNet pass per timestep.
Ours (``genpromp.cams.extract``): class embeddings computed once (timed, included), capture of the token
column only, truncated UNet, all timesteps and prompts in one batch, batch ``--batch-size``.
Both get the same model, the same images (random pixels, no decode: this measures the model path), the
same latents/noise stream and the same labels / top-5 (mode top1, ~70 % top-1 agreement).

Prints images/s of each, the speed-up ratio, peak memory (RSS above the start on CPU, sampled every 5 ms;
torch.cuda.max_memory_allocated on GPU) and the max |difference| of the CAMs.

    .venv/bin/python benchmarks/bench_cams.py                # tiny model at 128 px, CPU fp32
    .venv/bin/python benchmarks/bench_cams.py --sd14         # SD-1.4 architecture, random weights, 512 px fp16 (GPU)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from genpromp.cams.capture import groups_from_config  # noqa: E402
from genpromp.cams.embeddings import combine_embeddings, compute_class_embeddings, install_concept_tokens  # noqa: E402
from genpromp.cams.extract import (  # noqa: E402
    CamSettings, choose_device, compute_pair_cams, encode_latents_and_noise, place_module, plan_prompts,
)
from genpromp.cams.reference import reference_batch_cams  # noqa: E402
from genpromp.models.loading import SDComponents, load_components  # noqa: E402
from genpromp.prompts import token_index  # noqa: E402

GROUPS = [{"name": "mid", "blocks": ["mid"], "downsample": 8}, {"name": "down", "blocks": ["down"], "downsample": 4},
          {"name": "up", "blocks": ["up"], "downsample": 4}]


class PeakMemory:
    """Peak memory of a code block: RSS above the start (CPU, sampled) or CUDA max allocated."""

    def __init__(self, device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            proc, self.start, self._stop = psutil.Process(), psutil.Process().memory_info().rss, False

            def sample():
                while not self._stop:
                    self.peak = max(self.peak, proc.memory_info().rss - self.start)
                    time.sleep(0.005)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self._stop = True
            self._thread.join()


def build_sd14(tokenizer_dir, device, dtype):
    """SD-1.4 architecture with random weights: UNet 320/640/1280/1280, CLIP-L text (768, 12 layers), SD VAE."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from genpromp.demo.tiny import SD14_SCALING_FACTOR, SD14_SCHEDULER

    torch.manual_seed(0)
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    with torch.device(device):
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                            hidden_act="quick_gelu", projection_dim=768))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
                            scaling_factor=SD14_SCALING_FACTOR)
        unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280),
                                    cross_attention_dim=768, attention_head_dim=8, layers_per_block=2)
    comps = SDComponents(tok, text.eval(), vae.to(dtype).eval(), unet.to(dtype).eval(), DDPMScheduler(**SD14_SCHEDULER))
    return comps, 512


def run_ours(comps, settings, pixels, ids, labels, top5, device, dtype, classes):
    """Embeddings once, then batches of settings.batch_size. Returns CAMs [N, K, S, S]."""
    emb = compute_class_embeddings(comps.tokenizer, comps.text_encoder, classes)
    out = []
    for s in range(0, len(ids), settings.batch_size):
        sl = slice(s, s + settings.batch_size)
        lat, noise = encode_latents_and_noise(comps.vae, pixels[sl].to(device, dtype), ids[sl], settings.seed)
        _, pairs, slot_pair = plan_prompts("top1", labels[sl], top5[sl])
        cond = combine_embeddings(emb, settings.ratio, emb.rows(pairs[:, 1]))
        cams = compute_pair_cams(comps.unet, comps.scheduler, lat, noise, cond, pairs[:, 0], settings, dtype)
        out.append(cams.cpu()[torch.from_numpy(slot_pair)].numpy())
    return np.concatenate(out)


def run_baseline(comps, settings, pixels, ids, labels, top5, device, dtype, classes, batch=2):
    out = []
    for s in range(0, len(ids), batch):
        sl = slice(s, s + batch)
        lat, noise = encode_latents_and_noise(comps.vae, pixels[sl].to(device, dtype), ids[sl], settings.seed)
        out.append(reference_batch_cams(comps, lat, noise, labels[sl], top5[sl], settings,
                                        classes["concept_token"].tolist(), classes["meta_token"].tolist(), dtype))
    return np.concatenate(out)


def timed(fn, device, *args):
    with PeakMemory(device) as mem:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    return result, elapsed, mem.peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sd14", action="store_true", help="SD-1.4 architecture, random weights, 512 px (GPU, fp16)")
    p.add_argument("--images", type=int, default=None, help="images to time (default 24 tiny / 16 sd14)")
    p.add_argument("--batch-size", type=int, default=8, help="our batch size (the baseline uses 2)")
    p.add_argument("--resolution", type=int, default=None,
                   help="image side with --sd14 (default 512; e.g. 128 for a quick CPU smoke run)")
    p.add_argument("--classes", type=int, default=20, help="classes (concept tokens)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16"],
                   help="VAE/UNet precision, as test.inference_precision (default auto: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--tokenizer", default=str(REPO / "resources/assets/clip_tokenizer"), help="CLIPTokenizer folder")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    device, dtype = choose_device(args.precision)
    if args.sd14:
        comps, resolution = build_sd14(args.tokenizer, device, dtype)
        resolution = args.resolution or resolution
    else:
        from genpromp.demo.tiny import build_tiny_model
        tmp = tempfile.mkdtemp(prefix="bench-cams-")
        comps, resolution = load_components(build_tiny_model(Path(tmp) / "tiny", args.tokenizer, resolution=128)), 128
        place_module(comps.vae, device, dtype), place_module(comps.unet, device, dtype)
    comps.text_encoder.to(device)
    import pandas as pd
    C = args.classes
    classes = pd.DataFrame({"class_id": range(C), "meta_token": ["bird"] * C,
                            "concept_token": [f"<bench-{i}>" for i in range(C)]})
    dim = comps.text_encoder.get_input_embeddings().weight.shape[1]
    install_concept_tokens(comps.tokenizer, comps.text_encoder, classes,
                           {t: torch.randn(dim) * 0.01 for t in classes["concept_token"]})
    n = args.images or (16 if args.sd14 else 24)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, n).tolist()
    top5 = [[lab if rng.random() < 0.7 else int((lab + 1 + rng.integers(0, C - 1)) % C)] + list(range(4))
            for lab in labels]
    pixels = torch.rand(n, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ids = [f"bench/{i}" for i in range(n)]
    settings = CamSettings(resolution=resolution, timesteps=(0, 99), cam_size=64, groups=groups_from_config(GROUPS),
                           token_index=token_index(comps.tokenizer), mode="top1", ratio=0.6,
                           batch_size=args.batch_size, max_pairs=2 * args.batch_size)
    warm = slice(0, 2)
    run_ours(comps, settings, pixels[warm], ids[warm], labels[warm], top5[warm], device, dtype, classes)
    run_baseline(comps, settings, pixels[warm], ids[warm], labels[warm], top5[warm], device, dtype, classes)
    base, t_base, m_base = timed(run_baseline, device, comps, settings, pixels, ids, labels, top5, device, dtype, classes)
    ours, t_ours, m_ours = timed(run_ours, device, comps, settings, pixels, ids, labels, top5, device, dtype, classes)
    print(f"device {device} dtype {dtype} model {'sd14-random' if args.sd14 else 'tiny'} {resolution}px "
          f"images {n} mode top1 torch threads {torch.get_num_threads()}")
    print(f"baseline (original loop, batch 2): {n / t_base:8.2f} images/s  peak memory {m_base / 2**20:8.1f} MiB")
    print(f"ours (batch {args.batch_size}):                 {n / t_ours:8.2f} images/s  peak memory {m_ours / 2**20:8.1f} MiB")
    print(f"speed-up: {t_base / t_ours:.2f}x   max |CAM difference|: {np.abs(base - ours).max():.2e}")


if __name__ == "__main__":
    main()
