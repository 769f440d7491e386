"""What each heavy job needs: host memory, GPU memory and runtime, from the config.

Two kinds of numbers go in, and docs/cluster.md keeps them apart:

* **measured** on the project's 2-core CPU machine with the full-size SD-1.4 architecture at 512 px in
  fp32 (the rehearsal of ``tests/test_rehearsal.py`` records them again in ``logs/**/*.bench.tsv``):
  peak host memory of stage 1, stage 2, CAM extraction and embeddings, and seconds per CAM image
  (the training seconds per sample are provisional, see ``SD14``);
* **arithmetic**: fp32 bytes of SD-1.4's parameters (UNet 859.5 M, text encoder 123.1 M, VAE 83.7 M),
  of stage 2's gradients and AdamW moments, plus the activations per sample that the CPU measurement
  gives (a proxy for a GPU, where memory-efficient attention makes them smaller).

Demo-sized models (``demo.enabled``) need a fraction of this; their requests stay small constants.
Runtimes come from the CPU's seconds per unit times ``compute.runtime_scale`` (1 = this CPU; on a GPU
set it from a measured job: its ``s`` column in ``*.bench.tsv`` over the CPU estimate).

Every host-memory and runtime request grows with Snakemake's ``attempt`` (:func:`for_attempt`), so a job
that a profile with ``retries`` resubmits after running out of memory or time asks for more. CPUs per job
(:func:`job_threads`) follow the processes a job starts: data-loader workers and training processes.
"""

from __future__ import annotations

import math

__all__ = ["GB", "SD14", "for_attempt", "gpu_mem_mb", "job_resources", "job_threads", "per_attempt", "stage1_samples"]

GB = 1000  # MB per GB (Snakemake's mem_mb is in MB)

# fp32 sizes (GB) of SD-1.4's modules: parameters x 4 bytes.
UNET_PARAMS_GB = 859.52e6 * 4 / 1e9        # 3.44
TEXT_ENCODER_PARAMS_GB = 123.06e6 * 4 / 1e9  # 0.49
VAE_PARAMS_GB = 83.65e6 * 4 / 1e9          # 0.33
FROZEN_GB = UNET_PARAMS_GB + TEXT_ENCODER_PARAMS_GB + VAE_PARAMS_GB  # 4.26
# Stage 2 trains the UNet in fp32 with AdamW: weights + gradients + two moments = 4 x the weights.
STAGE2_STATE_GB = 4 * UNET_PARAMS_GB + TEXT_ENCODER_PARAMS_GB + VAE_PARAMS_GB  # 14.57
# PyTorch's multi-tensor AdamW step allocates one fp32 temporary per UNet parameter (sqrt of the second
# moment) after the activations are freed: the stage-2 peak at small batches.
ADAMW_STEP_GB = UNET_PARAMS_GB
CUDA_CONTEXT_GB = 1.0  # CUDA context, cuDNN / cuBLAS workspaces, allocator slack

SD14 = {
    # Measured peak host RSS (GB) at 512 px, batch 1, CPU fp32.
    "stage1_peak_gb": 6.6,
    "stage2_peak_gb": 15.8,
    "cams_peak_gb": 5.5,
    "embeddings_peak_gb": 2.1,
    # Activations kept for the backward pass per 512-px sample: the stage-1 peak less the frozen
    # weights and ~0.3 GB of interpreter and libraries (6.6 - 4.26 - 0.3, rounded up).
    "train_activations_gb": 2.1,
    # Stage 2 activations per 512-px sample of one micro-step (forward + backward), measured with
    # benchmarks/bench_unet_memory.py: 1.78 GiB without train_unet.gradient_checkpointing, 0.45 GiB with it.
    "stage2_activations_gb": 1.78 * 2**30 / 1e9,
    "stage2_checkpointed_activations_gb": 0.45 * 2**30 / 1e9,
    # Activations per extra image in one no-grad CAM batch (two timesteps, up to two prompts).
    "cams_activations_gb": 0.6,
    # Seconds per unit on the 2-core CPU. Measured: CAM extraction (13-17 s per image; the top is used).
    # Provisional until a quiet-machine rehearsal replaces them (tests/test_rehearsal.py prints each
    # job's time): one stage-1 forward + backward of one sample took 131 s on the 2 cores while ~3
    # other processes competed for them; 30 s assumes the machine to itself. Stage 2 adds the UNet
    # weight gradients (x1.5) and an AdamW update of 860 M parameters; load_s covers reading the folder.
    "stage1_s_per_sample": 30.0,
    "stage2_s_per_sample": 45.0,
    "stage2_s_per_update": 60.0,
    "cams_s_per_image": 17.0,
    "load_s": 60.0,
}
# Typical images per class in the paper's datasets, to size stage-1 runtimes before the index exists.
TRAIN_IMAGES_PER_CLASS = {"cub": 30, "imagenet": 1281, "wsol": 100}
MARGIN = 1.25  # requests are the estimate times this
# CPUs of a job that starts no loader workers: the main process's torch operations use two threads.
MIN_THREADS = 2
# Rules whose jobs train under ``accelerate launch`` on compute.gpus processes when compute.gpus > 1.
TRAINING_RULES = ("train_token", "train_unet")
# Rules whose data loaders start compute.num_workers worker processes per training / CAM process
# (stage 1 loads its few images per class in the main process).
LOADER_RULES = ("train_unet", "extract_cams")


def for_attempt(value, attempt):
    """``value`` for Snakemake's try number ``attempt`` (1 = first): ``value x attempt``, rounded up.

    A job that ran out of memory or time is resubmitted (profile ``retries``) with twice the request on
    attempt 2, three times on attempt 3."""
    attempt = int(attempt)
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    return int(math.ceil(value * attempt))


def per_attempt(value):
    """A rule resource (``mem_mb=per_attempt(2000)``): ``value`` on the first try, more on each retry."""
    return lambda wildcards, attempt: for_attempt(value, attempt)


def job_threads(rule, config):
    """CPUs (Snakemake ``threads``, sbatch ``--cpus-per-task``) of one job of ``rule``.

    Each process of the job needs one CPU for itself plus one per data-loader worker
    (``compute.num_workers``, for the rules in LOADER_RULES); a training job with ``compute.gpus`` > 1
    runs that many processes (``accelerate launch --multi_gpu``). At least MIN_THREADS."""
    compute = config["compute"]
    workers = int(compute.get("num_workers", 0)) if rule in LOADER_RULES else 0
    processes = max(1, int(compute.get("gpus", 0))) if rule in TRAINING_RULES else 1
    return max(MIN_THREADS, processes * (1 + workers))


def stage1_samples(config):
    """Samples in one stage-1 forward: per-class batch x classes trained side by side."""
    t = config["train_token"]
    return int(t["batch_size"]) * int(t.get("concurrent_classes", 1))


def stage2_activations_gb(config):
    """Activations (GB) of one stage-2 micro-step: per-sample figure (with or without gradient
    checkpointing) x ``train_unet.batch_size``."""
    u = config["train_unet"]
    key = "stage2_checkpointed_activations_gb" if u.get("gradient_checkpointing") else "stage2_activations_gb"
    return SD14[key] * int(u["batch_size"])


def gpu_mem_mb(rule, config):
    """GPU memory (MB) a job of ``rule`` needs on one device (arithmetic; see the module docstring)."""
    act = SD14["train_activations_gb"]
    if rule == "train_token":
        gb = FROZEN_GB + act * stage1_samples(config)
    elif rule == "train_unet":
        gb = STAGE2_STATE_GB + max(stage2_activations_gb(config), ADAMW_STEP_GB)
    elif rule == "extract_cams":
        half = config["test"].get("inference_precision", "auto") in ("auto", "fp16")
        weights = (UNET_PARAMS_GB + VAE_PARAMS_GB) / (2 if half else 1) + TEXT_ENCODER_PARAMS_GB
        gb = weights + SD14["cams_activations_gb"] * int(config["test"]["batch_size"])
    elif rule == "embeddings":
        gb = TEXT_ENCODER_PARAMS_GB
    else:
        raise ValueError(f"no GPU memory model for rule {rule!r}")
    return int(math.ceil((gb + CUDA_CONTEXT_GB) * GB))


def _minutes(seconds, config):
    scale = float(config["compute"].get("runtime_scale", 1.0))
    return max(10, int(math.ceil(seconds * scale * MARGIN / 60)))


def _stage1_classes_per_shard(config, dataset):
    ds = config["datasets"][dataset]
    keep = ds.get("keep_class")
    n_classes = (keep[1] - keep[0] + 1 if len(keep) == 2 else len(keep)) if keep else (
        1000 if ds["layout"] == "imagenet" else 200)
    return math.ceil(n_classes / max(1, min(int(config["train_token"]["shards"]), n_classes)))


def _stage1_seconds(config, dataset):
    t = config["train_token"]
    per_class = TRAIN_IMAGES_PER_CLASS.get(config["datasets"][dataset]["layout"], 100)
    steps = math.ceil(per_class * int(t["num_train_epochs"]) / (int(t["batch_size"]) * int(t["gradient_accumulation_steps"])))
    if t.get("max_train_steps"):
        steps = min(steps, int(t["max_train_steps"]))
    samples = steps * int(t["batch_size"]) * int(t["gradient_accumulation_steps"])
    return SD14["load_s"] + _stage1_classes_per_shard(config, dataset) * samples * SD14["stage1_s_per_sample"]


def _stage2_seconds(config):
    u = config["train_unet"]
    steps = int(u["max_train_steps"])
    samples = steps * int(u["batch_size"]) * int(u["gradient_accumulation_steps"])
    return SD14["load_s"] + samples * SD14["stage2_s_per_sample"] + steps * SD14["stage2_s_per_update"]


def job_resources(rule, config, dataset=None, attempt=1):
    """``{"mem_mb", "runtime", "gpu_mem_mb"}`` of try ``attempt`` of one job of ``rule`` (runtime in minutes).

    mem_mb is the measured CPU peak at batch 1 plus the activations of the extra samples of a bigger
    batch: what the job needs when it falls back to the CPU (on a GPU they live in GPU memory, so the
    request is generous there); gpu_mem_mb is :func:`gpu_mem_mb`. mem_mb and runtime grow with
    ``attempt`` (:func:`for_attempt`); gpu_mem_mb is a property of the model and does not."""
    first = _first_attempt_resources(rule, config, dataset)
    return first | {"mem_mb": for_attempt(first["mem_mb"], attempt), "runtime": for_attempt(first["runtime"], attempt)}


def _first_attempt_resources(rule, config, dataset):
    if config["demo"]["enabled"]:
        return {"mem_mb": 4 * GB, "runtime": 60, "gpu_mem_mb": 2 * GB}
    act = SD14["train_activations_gb"]
    if rule == "train_token":
        peak = SD14["stage1_peak_gb"] + act * (stage1_samples(config) - 1)
        seconds = _stage1_seconds(config, dataset)
    elif rule == "train_unet":
        peak = SD14["stage2_peak_gb"] + act * (int(config["train_unet"]["batch_size"]) - 1)
        seconds = _stage2_seconds(config)
    elif rule == "extract_cams":
        peak = SD14["cams_peak_gb"] + SD14["cams_activations_gb"] * (int(config["test"]["batch_size"]) - 1)
        seconds = SD14["load_s"] + int(config["test"]["shard_size"]) * SD14["cams_s_per_image"]
    elif rule == "embeddings":
        peak, seconds = SD14["embeddings_peak_gb"], SD14["load_s"]
    else:
        raise ValueError(f"no resource model for rule {rule!r}")
    return {"mem_mb": int(math.ceil(peak * MARGIN * GB)), "runtime": _minutes(seconds, config),
            "gpu_mem_mb": gpu_mem_mb(rule, config)}
