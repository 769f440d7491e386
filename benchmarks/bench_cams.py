"""Benchmark: our CAM extraction vs a faithful re-implementation of the original loop, in one process.

Baseline (``genpromp.cams.reference``): store-everything processor on every attention layer, full UNet,
text encoder on every template per batch and role, batch ``--baseline-batch`` (the original's 2), one UNet
pass per timestep.
Ours (``genpromp.cams.extract``): class embeddings of the classes the timed images need, computed once
(timed, included), capture of the token column only, truncated UNet, all timesteps and prompts in one
batch, batch ``--batch-size``.
Both get the same model, the same images (random pixels, no decode: this measures the model path), the
same latents/noise stream and the same labels / top-5 (mode top1, ~70 % top-1 agreement).

Prints images/s of each, the speed-up ratio, peak memory of each side and the max |difference| of the CAMs.
Peak memory: on the CPU the process RSS, sampled every 5 ms, both absolute and above the RSS at the start of
the side (the model, shared by both sides, is loaded before); on an accelerator the allocator's maximum
(torch.accelerator.max_memory_allocated) above the start. Ours runs first so its figure does not
include memory the baseline left behind. ``--json PATH`` writes the figures.

    .venv/bin/python benchmarks/bench_cams.py                 # tiny model at 128 px, CPU fp32
    nice -n 10 .venv/bin/python benchmarks/bench_cams.py --sd14 --images 2 --baseline-batch 1
                                                              # SD-1.4 size, random weights, 512 px, CPU fp32
    .venv/bin/python benchmarks/bench_cams.py --sd14 --precision fp16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
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
    CamSettings, compute_pair_cams, encode_latents_and_noise, place_module, plan_prompts, resolve_precision,
)
from genpromp.cams.reference import reference_batch_cams  # noqa: E402
from genpromp.models.loading import SDComponents, load_components  # noqa: E402
from genpromp.prompts import token_index  # noqa: E402

GROUPS = [{"name": "mid", "blocks": ["mid"], "downsample": 8}, {"name": "down", "blocks": ["down"], "downsample": 4},
          {"name": "up", "blocks": ["up"], "downsample": 4}]
TOKENIZER = REPO / "resources/assets/clip_tokenizer"
# Benchmark precisions: the extraction's own values plus bf16 (measured on accelerators only).
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GIB = 2 ** 30
# Forward GFLOPs per sample of SD-1.4 at 512 px (torch.utils.flop_counter.FlopCounterMode, fp32): VAE encode,
# full UNet, our truncated UNet (stops after the last 16 x 16 up-block cross-attention), one 77-token caption.
GFLOPS_SD14_512 = {"vae_encode": 1117.0, "unet_full": 803.0, "unet_truncated": 803.0 - 364.0, "text_caption": 13.0}


def pick_device(name="auto"):
    """torch.device for ``--device``: ``auto`` = the machine's accelerator when there is one, else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


def pick_dtype(precision, device):
    """VAE/UNet dtype for ``--precision``: auto as test.inference_precision, else fp32 / fp16 / bf16."""
    return resolve_precision("auto", device) if precision == "auto" else DTYPES[precision]


def sync(device):
    if device.type != "cpu":
        torch.accelerator.synchronize()


class PeakMemory:
    """Peak memory of a code block in bytes: ``peak`` above the start, ``absolute`` (CPU: process RSS).

    On the CPU a thread samples the RSS every 5 ms; when ``cap_bytes`` is given and the RSS exceeds it
    the process exits at once with a message (a guard for shared machines). On an accelerator:
    torch.accelerator.max_memory_allocated.
    """

    def __init__(self, device, cap_bytes=None):
        self.device, self.cap, self.peak, self.absolute = device, cap_bytes, 0, 0

    def __enter__(self):
        if self.device.type != "cpu":
            sync(self.device)
            torch.accelerator.reset_peak_memory_stats()
            self.start = torch.accelerator.memory_allocated()
            return self
        proc, self._stop = psutil.Process(), False
        self.start = proc.memory_info().rss

        def sample():
            while not self._stop:
                rss = proc.memory_info().rss
                self.absolute = max(self.absolute, rss)
                if self.cap and rss > self.cap:
                    print(f"memory guard: RSS {rss / GIB:.1f} GiB exceeds {self.cap / GIB:.1f} GiB; stopping",
                          file=sys.stderr, flush=True)
                    os._exit(3)
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type != "cpu":
            sync(self.device)
            self.absolute = torch.accelerator.max_memory_allocated()
        else:
            self._stop = True
            self._thread.join()
        self.peak = max(self.absolute - self.start, 0)


def build_sd14(tokenizer_dir, device, dtype, seed=0):
    """SD-1.4 architecture (stable-diffusion-v1-4's configs) with random weights; VAE/UNet in ``dtype``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from genpromp.demo.tiny import SD14_SCHEDULER
    from genpromp.rehearsal import SD14_TEXT_ENCODER_CONFIG, SD14_UNET_CONFIG, SD14_VAE_CONFIG

    def arch(cfg, drop=()):
        return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in drop}

    torch.manual_seed(seed)
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    with torch.device(device):
        text = CLIPTextModel(CLIPTextConfig(**arch(SD14_TEXT_ENCODER_CONFIG, ("architectures", "model_type"))))
        vae = AutoencoderKL(**arch(SD14_VAE_CONFIG))
        unet = UNet2DConditionModel(**arch(SD14_UNET_CONFIG))
    return SDComponents(tok, text.eval(), vae.to(dtype).eval(), unet.to(dtype).eval(), DDPMScheduler(**SD14_SCHEDULER))


def build_tiny(tokenizer_dir, device, dtype):
    """The demo's tiny model (SD-1.4 block layout, small widths) at 128 px."""
    from genpromp.demo.tiny import build_tiny_model

    tmp = tempfile.mkdtemp(prefix="bench-cams-")
    comps = load_components(build_tiny_model(Path(tmp) / "tiny", tokenizer_dir, resolution=128))
    place_module(comps.vae, device, dtype), place_module(comps.unet, device, dtype)
    comps.text_encoder.to(device)
    return comps


def make_workload(comps, n, n_classes, resolution, seed=0):
    """Install ``n_classes`` concept tokens; return (classes table, pixels, ids, labels, top5)."""
    import pandas as pd

    classes = pd.DataFrame({"class_id": range(n_classes), "meta_token": ["bird"] * n_classes,
                            "concept_token": [f"<bench-{i}>" for i in range(n_classes)]})
    dim = comps.text_encoder.get_input_embeddings().weight.shape[1]
    gen = torch.Generator().manual_seed(seed)
    install_concept_tokens(comps.tokenizer, comps.text_encoder, classes,
                           {t: torch.randn(dim, generator=gen) * 0.01 for t in classes["concept_token"]})
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n).tolist()
    top5 = [[lab if rng.random() < 0.7 else int((lab + 1 + rng.integers(0, n_classes - 1)) % n_classes)]
            + list(range(4)) for lab in labels]
    pixels = torch.rand(n, 3, resolution, resolution, generator=gen) * 2 - 1
    return classes, pixels, [f"bench/{i}" for i in range(n)], labels, top5


def ours_embeddings(comps, work):
    """Class embeddings of the classes the workload needs (labels and top-1), computed once."""
    classes, _, _, labels, top5 = work
    needed = sorted(set(labels) | {t[0] for t in top5})
    return compute_class_embeddings(comps.tokenizer, comps.text_encoder, classes[classes["class_id"].isin(needed)])


def ours_cams(comps, settings, emb, work, device, dtype):
    """Our extraction of the workload in batches of settings.batch_size. CAMs [N, K, S, S]."""
    _, pixels, ids, labels, top5 = work
    out = []
    for s in range(0, len(ids), settings.batch_size):
        sl = slice(s, s + settings.batch_size)
        lat, noise = encode_latents_and_noise(comps.vae, pixels[sl].to(device, dtype), ids[sl], settings.seed)
        _, pairs, slot_pair = plan_prompts("top1", labels[sl], top5[sl])
        cond = combine_embeddings(emb, settings.ratio, emb.rows(pairs[:, 1]))
        cams = compute_pair_cams(comps.unet, comps.scheduler, lat, noise, cond, pairs[:, 0], settings, dtype)
        out.append(cams.cpu()[torch.from_numpy(slot_pair)].numpy())
    return np.concatenate(out)


def run_ours(comps, settings, work, device, dtype):
    """Embeddings once, then batches of settings.batch_size. CAMs [N, K, S, S]."""
    return ours_cams(comps, settings, ours_embeddings(comps, work), work, device, dtype)


def run_baseline(comps, settings, work, device, dtype, batch=2):
    """The original loop over batches of ``batch``. CAMs [N, K, S, S]."""
    classes, pixels, ids, labels, top5 = work
    out = []
    for s in range(0, len(ids), batch):
        sl = slice(s, s + batch)
        lat, noise = encode_latents_and_noise(comps.vae, pixels[sl].to(device, dtype), ids[sl], settings.seed)
        out.append(reference_batch_cams(comps, lat, noise, labels[sl], top5[sl], settings,
                                        classes["concept_token"].tolist(), classes["meta_token"].tolist(), dtype))
    return np.concatenate(out)


class WorkCounter:
    """Counts the samples that go through the VAE encoder, the UNet and the text encoder (forward pre-hooks)."""

    def __init__(self, comps):
        self.mods = {"vae_images": comps.vae.encoder, "unet_samples": comps.unet, "text_captions": comps.text_encoder}

    def __enter__(self):
        self.counts = dict.fromkeys(self.mods, 0)

        def hook(name):
            def count(module, args, kwargs):
                first = args[0] if args else next(iter(kwargs.values()))
                self.counts[name] += int(first.shape[0])
            return count

        self.handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in self.mods.items()]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    @staticmethod
    def gflops_of(c, truncated):
        """Forward GFLOPs of counted work ``c`` at SD-1.4 / 512 px."""
        g = GFLOPS_SD14_512
        return (c["vae_images"] * g["vae_encode"] + c["text_captions"] * g["text_caption"]
                + c["unet_samples"] * g["unet_truncated" if truncated else "unet_full"])


def timed(fn, device, cap_bytes, *args, **kwargs):
    """(result, wall seconds, process CPU seconds, PeakMemory) of one call."""
    with PeakMemory(device, cap_bytes) as mem:
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn(*args, **kwargs)
        sync(device)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return result, elapsed, cpu, mem


def cam_settings(comps, resolution, batch_size):
    return CamSettings(resolution=resolution, timesteps=(0, 99), cam_size=64, groups=groups_from_config(GROUPS),
                       token_index=token_index(comps.tokenizer), mode="top1", ratio=0.6,
                       batch_size=batch_size, max_pairs=2 * batch_size)


def _subset(work, k, start=0):
    classes, pixels, ids, labels, top5 = work
    sl = slice(start, start + k)
    return classes, pixels[sl], ids[sl], labels[sl], top5[sl]


class _Side:
    """Accumulated wall seconds, CPU seconds, peak memory, work counts and CAMs of one side."""

    def __init__(self):
        self.wall, self.cpu, self.peak, self.absolute, self.cams, self.counts = 0.0, 0.0, 0, 0, [], {}

    def run(self, comps, device, cap_bytes, fn, *args, **kwargs):
        with WorkCounter(comps) as work:
            result, wall, cpu, mem = timed(fn, device, cap_bytes, *args, **kwargs)
        self.wall, self.cpu = self.wall + wall, self.cpu + cpu
        self.peak, self.absolute = max(self.peak, mem.peak), max(self.absolute, mem.absolute)
        self.counts = {k: self.counts.get(k, 0) + v for k, v in work.counts.items()}
        self.cams.append(result)
        return result


def _time_sides(comps, settings, work, device, dtype, baseline_batch, nb, cap_bytes, interleave):
    """(ours, baseline, embedding seconds): ours = class embeddings once, then the images; the baseline
    on the first ``nb`` images. ``interleave``: alternate the sides every ``baseline_batch`` images."""
    ours, base = _Side(), _Side()
    emb = ours.run(comps, device, cap_bytes, ours_embeddings, comps, work)
    ours.cams.clear()
    t_emb = ours.wall
    n = len(work[2])
    chunks = [(s, min(baseline_batch, nb - s)) for s in range(0, nb, baseline_batch)] if interleave else [(0, nb)]
    done = 0
    for s, k in chunks:
        part = _subset(work, k, s)
        if interleave:
            done = s + k
            ours.run(comps, device, cap_bytes, ours_cams, comps, settings, emb, part, device, dtype)
        base.run(comps, device, cap_bytes, run_baseline, comps, settings, part, device, dtype, batch=baseline_batch)
    if done < n:
        ours.run(comps, device, cap_bytes, ours_cams, comps, settings, emb, _subset(work, n - done, done), device,
                 dtype)
    return ours, base, t_emb


def compare(comps, work, resolution, device, dtype, batch_size=8, baseline_batch=2, warmup=1, cap_bytes=None,
            baseline_images=None, flops=False, interleave=False):
    """Time ours on the workload and the baseline on its first ``baseline_images`` images (default: all).

    Returns a dict of figures (seconds, bytes). The speed-up is the ratio of per-image wall times; on the
    CPU the ratio of per-image process CPU times is reported too. ``interleave`` alternates the sides every
    ``baseline_batch`` images (ours then runs at that batch), so both see the same load on a shared machine;
    otherwise ours runs first, in full batches. ``speedup_embeddings_amortised`` leaves out our class
    embeddings, which a run computes once for all its test images. ``flops`` (SD-1.4 at 512 px): forward
    GFLOPs per image of the counted work."""
    settings = cam_settings(comps, resolution, batch_size)
    n = len(work[2])
    nb = min(baseline_images or n, n)
    if warmup:
        run_ours(comps, settings, _subset(work, warmup), device, dtype)
        run_baseline(comps, settings, _subset(work, warmup), device, dtype, baseline_batch)
    ours, base, t_emb = _time_sides(comps, settings, work, device, dtype, baseline_batch, nb, cap_bytes, interleave)
    ours_maps, base_maps = np.concatenate(ours.cams), np.concatenate(base.cams)
    fig = {"images": n, "baseline_images": nb, "resolution": resolution, "dtype": str(dtype).removeprefix("torch."),
           "device": device.type, "batch_size": batch_size, "baseline_batch": baseline_batch, "interleaved": interleave,
           "ours_seconds": ours.wall, "baseline_seconds": base.wall,
           "ours_images_per_s": n / ours.wall, "baseline_images_per_s": nb / base.wall,
           "speedup": (base.wall / nb) / (ours.wall / n),
           "ours_peak_bytes": ours.peak, "baseline_peak_bytes": base.peak,
           "ours_peak_absolute_bytes": ours.absolute, "baseline_peak_absolute_bytes": base.absolute,
           "max_abs_cam_difference": float(np.abs(base_maps - ours_maps[:nb]).max()),
           "ours_embedding_seconds": t_emb,
           "speedup_embeddings_amortised": (base.wall / nb) / ((ours.wall - t_emb) / n),
           "ours_work": ours.counts, "baseline_work": base.counts}
    if device.type == "cpu":
        fig.update(ours_cpu_seconds=ours.cpu, baseline_cpu_seconds=base.cpu,
                   speedup_cpu_time=(base.cpu / nb) / (ours.cpu / n))
    if flops:
        fig["ours_gflops_per_image"] = WorkCounter.gflops_of(ours.counts, settings.early_exit) / n
        fig["baseline_gflops_per_image"] = WorkCounter.gflops_of(base.counts, False) / nb
        fig["flop_ratio"] = fig["baseline_gflops_per_image"] / fig["ours_gflops_per_image"]
    return fig


def report(fig, model, threads):
    mib = 2 ** 20
    print(f"device {fig['device']} dtype {fig['dtype']} model {model} {fig['resolution']}px images {fig['images']} "
          f"(baseline {fig['baseline_images']}) mode top1 torch threads {threads}")
    print(f"baseline (original loop, batch {fig['baseline_batch']}): {fig['baseline_images_per_s']:9.4f} images/s  "
          f"peak memory {fig['baseline_peak_bytes'] / mib:9.1f} MiB above start "
          f"({fig['baseline_peak_absolute_bytes'] / mib:9.1f} MiB absolute)")
    print(f"ours (batch {fig['batch_size']}):                     {fig['ours_images_per_s']:9.4f} images/s  "
          f"peak memory {fig['ours_peak_bytes'] / mib:9.1f} MiB above start "
          f"({fig['ours_peak_absolute_bytes'] / mib:9.1f} MiB absolute)")
    print(f"our class embeddings (once per run): {fig['ours_embedding_seconds']:.2f} s; speed-up without them: "
          f"{fig['speedup_embeddings_amortised']:.2f}x")
    if "flop_ratio" in fig:
        print(f"forward GFLOPs per image: baseline {fig['baseline_gflops_per_image']:.0f}, ours "
              f"{fig['ours_gflops_per_image']:.0f}, ratio {fig['flop_ratio']:.2f}x")
    print(f"work: baseline {fig['baseline_work']}  ours {fig['ours_work']}")
    cpu = f"  (process CPU time: {fig['speedup_cpu_time']:.2f}x)" if "speedup_cpu_time" in fig else ""
    print(f"speed-up: {fig['speedup']:.2f}x{cpu}   max |CAM difference|: {fig['max_abs_cam_difference']:.2e}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sd14", action="store_true", help="SD-1.4 architecture, random weights, 512 px")
    p.add_argument("--images", type=int, default=None, help="images to time (default 24 tiny / 16 sd14)")
    p.add_argument("--baseline-images", type=int, default=None, help="images the baseline times (default: --images)")
    p.add_argument("--batch-size", type=int, default=8, help="our batch size")
    p.add_argument("--baseline-batch", type=int, default=2,
                   help="the baseline's batch (the original's 2; 1 where its stored attention does not fit)")
    p.add_argument("--warmup", type=int, default=None, help="images run once untimed per side (default 2 tiny / 1 sd14)")
    p.add_argument("--resolution", type=int, default=None, help="image side with --sd14 (default 512)")
    p.add_argument("--classes", type=int, default=20, help="classes (concept tokens)")
    p.add_argument("--device", default="auto", help="torch device; auto = the accelerator if any, else cpu")
    p.add_argument("--precision", default="auto", choices=["auto", *DTYPES],
                   help="VAE/UNet precision (auto: fp16 on an accelerator, fp32 on the CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--interleave", action="store_true",
                   help="alternate the sides every --baseline-batch images (fair timing on a shared machine)")
    p.add_argument("--max-rss-gib", type=float, default=None, help="CPU: exit when the process RSS exceeds this")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--tokenizer", default=str(TOKENIZER), help="CLIPTokenizer folder")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    device = pick_device(args.device)
    dtype = pick_dtype(args.precision, device)
    if args.sd14:
        comps, resolution = build_sd14(args.tokenizer, device, dtype), args.resolution or 512
        comps.text_encoder.to(device)
    else:
        comps, resolution = build_tiny(args.tokenizer, device, dtype), 128
    n = args.images or (16 if args.sd14 else 24)
    work = make_workload(comps, n, args.classes, resolution)
    warmup = args.warmup if args.warmup is not None else (1 if args.sd14 else 2)
    cap = int(args.max_rss_gib * GIB) if args.max_rss_gib else None
    fig = compare(comps, work, resolution, device, dtype, args.batch_size, args.baseline_batch, warmup, cap,
                  args.baseline_images, flops=args.sd14 and resolution == 512, interleave=args.interleave)
    fig["torch_threads"] = torch.get_num_threads()
    report(fig, "sd14-random" if args.sd14 else "tiny", torch.get_num_threads())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(fig, indent=2) + "\n")
    return fig


if __name__ == "__main__":
    main()
