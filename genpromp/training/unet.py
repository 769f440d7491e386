"""Stage 2: finetune the whole UNet on 0.5·f_r + 0.5·f_d conditioning (docs/method.md § Stage 2), resumable.

Concept tokens are loaded into the text encoder; the text encoder and VAE are frozen; the UNet is
trained in fp32 (``compute.mixed_precision`` only autocasts the forward). ``gradient_checkpointing``
(off by default, as the original) makes the UNet keep only its blocks' inputs in the forward and recompute
the rest in the backward: less activation memory, about one more forward of time, the same numbers. Each sample draws one
template; f_r is the text encoder's last hidden state for the concept-token caption and f_d for the
meta-token caption with the same template. Loss, timesteps, latents and AdamW as in stage 1.

Data order, augmentation, templates, latent samples, noise and timesteps are derived from
``(seed, micro-step, sample)`` (see :mod:`genpromp.training.data`), so a killed job resumes from
``<out>.partial/checkpoint`` (written every ``save_steps`` optimizer steps: ``unet/`` in diffusers
layout, optimizer state as safetensors, ``state.json``) and ends with the uninterrupted result.

Which UNet is the result (``final_unet``)
-----------------------------------------
The reference saves ``unet_s{g}`` inside its loop, after update g, whenever ``(g + 1) % save_steps
== 0`` — checked after the step counter is incremented and after the stop test, so never after the
last update — and saves nothing at the end. Its released ``unet/`` is therefore the UNet after
``floor(max_train_steps / save_steps) · save_steps − 1`` updates (CUB: 250 steps, every 40 → 239;
ImageNet: 600, every 100 → 599). ``final_unet: last_save`` reproduces that: training stops after
that update (what follows cannot change it) and that UNet is written; ``final_step`` (default)
writes the UNet after all ``max_train_steps`` updates.

With P processes (``accelerate launch``) training is data-parallel like the reference: each
micro-step takes ``batch_size × P`` items of the epoch's order and process r uses slice r; DDP
averages the gradients. The reference's extra ``unet_s{step}``/``unet_e{step}`` snapshots are not
kept (only the latest checkpoint, to bound disk use; SD's UNet is 3.4 GB).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .. import layout
from ..data.indexing import image_root_for
from ..errors import ConfigError, GenprompError, InputError
from ..io import atomic_dir, atomic_path
from ..prompts import TEMPLATES, add_concept_tokens, tokenize
from ..tracking import accelerator_kwargs, log_values, show_progress, start_tracking, tracking_spec
from .checkpoints import load_tokens
from .data import (STREAM_STEP, StepSchedule, derive_generator, draw_step_noise, latent_shape, load_training_table,
                   make_sample, read_image, resize_image)
from .resume import fingerprint, load_optimizer_state, optimizer_state_tensors

__all__ = ["Stage2Settings", "STAGE2_KEY", "FINAL_UNET_CHOICES", "last_save_step", "train_unet", "load_concept_tokens",
           "register_cli", "LOG_COLUMNS", "run_train_unet_job"]

log = logging.getLogger(__name__)
STAGE2_KEY = 1_000_000_007   # stream key of stage 2 (distinct from every class id)
LOG_COLUMNS = ("micro_step", "epoch", "opt_step", "loss", "lr")
FINAL_UNET_CHOICES = ("final_step", "last_save")


def last_save_step(max_train_steps, save_steps):
    """Updates done when the reference saves its last UNet: the largest g < max_train_steps with
    (g + 1) % save_steps == 0, i.e. floor(max / save) · save − 1; None when it never saves (g ≥ 1)."""
    g = (int(max_train_steps) // int(save_steps)) * int(save_steps) - 1
    return g if g >= 1 else None


@dataclass(frozen=True)
class Stage2Settings:
    """Hyper-parameters of stage 2 (config ``train_unet`` + ``seed`` + ``compute``)."""

    resolution: int = 512
    batch_size: int = 4
    gradient_accumulation_steps: int = 16
    max_train_steps: int = 250
    learning_rate: float = 5.0e-6
    scale_lr: bool = False
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1.0e-2
    adam_epsilon: float = 1.0e-8
    save_steps: int = 40
    final_unet: str = "final_step"
    seed: int = 0
    mixed_precision: str = "no"
    num_workers: int = 0
    gradient_checkpointing: bool = False

    def trained_steps(self):
        """Optimizer updates behind the written UNet: ``max_train_steps``, or with ``final_unet:
        last_save`` the reference's last saved step (:func:`last_save_step`)."""
        if self.final_unet == "final_step":
            return int(self.max_train_steps)
        if self.final_unet != "last_save":
            raise ConfigError(f"config key train_unet.final_unet: {self.final_unet!r} is not one of "
                              f"{', '.join(FINAL_UNET_CHOICES)}")
        steps = last_save_step(self.max_train_steps, self.save_steps)
        if steps is None:
            raise ConfigError(f"config key train_unet.final_unet: last_save with max_train_steps "
                              f"{self.max_train_steps} and save_steps {self.save_steps}: the reference never saves "
                              "a UNet (it saves after update g when (g + 1) % save_steps == 0, g < max_train_steps); "
                              "lower save_steps or use final_step")
        return steps

    @classmethod
    def from_config(cls, config):
        """Settings from a validated workflow config dict."""
        from ..config import settings_from_section

        return settings_from_section(cls, config, "train_unet")

    def effective_lr(self, num_processes=1):
        """lr × batch × grad_accum × processes when ``scale_lr``."""
        scale = self.batch_size * self.gradient_accumulation_steps * num_processes if self.scale_lr else 1
        return self.learning_rate * scale


def load_concept_tokens(tokenizer, text_encoder, classes, tokens_path):
    """Add every class's concept token and set its row from ``tokens_path`` (ours or original dir).

    A class without a token, or a width mismatch, raises InputError naming the file.
    """
    table = load_tokens(tokens_path)
    missing = [c.concept_token for c in classes if c.concept_token not in table]
    if missing:
        raise InputError(tokens_path, f"no embedding for {len(missing)} class token(s), e.g. {missing[:5]}; "
                                      "train stage 1 for all classes or pass the matching tokens")
    ids = add_concept_tokens(tokenizer, text_encoder, [c.concept_token for c in classes],
                             [c.meta_token for c in classes])
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for info, tok_id in zip(classes, ids):
            vec = table[info.concept_token]
            if vec.shape != weight[tok_id].shape:
                raise InputError(tokens_path, f"{info.concept_token} has shape {tuple(vec.shape)}, the text encoder "
                                              f"expects {tuple(weight[tok_id].shape)}")
            weight[tok_id] = vec.to(weight.dtype)
    return ids


class _Stage2Dataset(torch.utils.data.Dataset):
    """Reads, resizes and augments one image per key (item, micro, slot); returns pixels + caption ids."""

    def __init__(self, items, settings, concept_ids, meta_ids):
        self.items, self.settings = items, settings
        self.concept_ids, self.meta_ids = concept_ids, meta_ids

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        item, micro, slot = key
        class_id, path = self.items[item]
        image = resize_image(read_image(path), self.settings.resolution)
        template, pixels = make_sample(image, self.settings.seed, (STAGE2_KEY,), micro, slot,
                                       self.settings.resolution, len(TEMPLATES))
        return {"img": pixels, "concept": self.concept_ids[class_id][template],
                "meta": self.meta_ids[class_id][template], "micro": micro, "slot": slot}


class _RankBatches:
    """Batches of one process: slice ``rank`` of each global micro-batch, from micro index ``start``."""

    def __init__(self, schedule, rank, world, per_rank, start):
        self.schedule, self.rank, self.world, self.per_rank, self.start = schedule, rank, world, per_rank, start

    def __iter__(self):
        for step in self.schedule.micro_steps(self.start):
            keys = [(item, step.index, j) for j, item in enumerate(step.items)]
            mine = keys[self.rank * self.per_rank:(self.rank + 1) * self.per_rank] or keys[:1]
            yield mine

    def __len__(self):
        return sum(1 for _ in self.schedule.micro_steps_light())


def _save_checkpoint(folder, unet, optimizer, state):
    with atomic_dir(folder) as tmp:
        unet.save_pretrained(Path(tmp) / "unet")
        tensors, meta = optimizer_state_tensors(optimizer)
        save_file(tensors, str(Path(tmp) / "optimizer.safetensors"))
        (Path(tmp) / "state.json").write_text(json.dumps({**state, "optimizer": meta}, indent=1))


def _load_checkpoint(folder, unet, optimizer, job_fp):
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        return None
    state = json.loads((folder / "state.json").read_text())
    if state.get("fingerprint") != job_fp:
        log.warning("%s: checkpoint made with other settings or inputs; starting from scratch", folder)
        return None
    weights = sorted((folder / "unet").glob("*.safetensors"))
    if not weights:
        raise InputError(folder, "checkpoint has no UNet weights; delete the folder to start over")
    sd = {}
    for w in weights:
        sd.update(load_file(str(w)))
    unet.load_state_dict(sd)
    load_optimizer_state(optimizer, load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
    return state


def _conditioning(text_encoder, concept, meta, device):
    """0.5 · f_r + 0.5 · f_d, float32 [b, L, D] (frozen text encoder)."""
    with torch.no_grad():
        return 0.5 * text_encoder(concept.to(device))[0] + 0.5 * text_encoder(meta.to(device))[0]


def _partial_dir(out_dir):
    """The resumable state of a job writing ``out_dir``: ``<out_dir>.partial/`` beside it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".partial")


def _load_stage2_models(pretrained, table, tokens_path, device, gradient_checkpointing=False):
    """SD components with the concept tokens installed, text encoder and VAE frozen, the UNet trainable in
    fp32 (with diffusers' gradient checkpointing when asked); plus the concept- and meta-caption ids of
    every class ({class_id: int64 [n_templates, L]})."""
    from ..models.loading import load_components

    comps = load_components(pretrained)
    load_concept_tokens(comps.tokenizer, comps.text_encoder, table.classes, tokens_path)
    for module in (comps.text_encoder, comps.vae):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    comps.unet.requires_grad_(True)
    comps.unet.train()
    if gradient_checkpointing:
        comps.unet.enable_gradient_checkpointing()
    comps.unet.to(device)  # loaded in fp32; kept fp32 (autocast only for mixed precision)
    concept_ids = {c.class_id: tokenize(comps.tokenizer, [t.format(c.concept_token) for t in TEMPLATES])
                   for c in table.classes}
    meta_ids = {c.class_id: tokenize(comps.tokenizer, [t.format(c.meta_token) for t in TEMPLATES])
                for c in table.classes}
    return comps, concept_ids, meta_ids


@dataclass
class _Stage2Job:
    """What one stage-2 training loop works with (``unet`` / ``optimizer`` as prepared by the accelerator)."""

    accelerator: object
    comps: object
    unet: object
    optimizer: torch.optim.Optimizer
    settings: Stage2Settings
    schedule: StepSchedule
    job_fp: str
    partial: Path
    tracking: object = None

    @property
    def world(self):
        return self.accelerator.num_processes


def _plan_stage2(settings, unet, items, n_updates, pretrained, tokens_path, world):
    """The step schedule over ``items``, the AdamW over the UNet and the job's fingerprint."""
    schedule = StepSchedule(len(items), settings.batch_size * world, settings.gradient_accumulation_steps,
                            None, n_updates, settings.seed, (STAGE2_KEY,))
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.effective_lr(world),
                                  betas=(settings.adam_beta1, settings.adam_beta2),
                                  weight_decay=settings.adam_weight_decay, eps=settings.adam_epsilon)
    # num_workers and gradient_checkpointing do not change the result: a checkpoint resumes across them
    kept = {k: v for k, v in asdict(settings).items() if k != "gradient_checkpointing"}
    job_fp = fingerprint({"settings": kept | {"num_workers": None}, "pretrained": str(pretrained),
                          "tokens": _file_digest(tokens_path), "items": [(c, str(p)) for c, p in items],
                          "world": world})
    return schedule, optimizer, job_fp


def _micro_loss(job, data, micro, sync, shape):
    """Forward and backward of one micro-batch of this process (``shape``: the latents' [C, h, w]); returns
    its loss (mean over samples)."""
    comps, accelerator, device = job.comps, job.accelerator, job.accelerator.device
    gen = derive_generator(job.settings.seed, STREAM_STEP, STAGE2_KEY, micro)
    # noise is drawn for the whole global micro-batch; each process takes its samples' slots
    eps, noise, t = draw_step_noise(gen, job.settings.batch_size * job.world, shape,
                                    comps.scheduler.config.num_train_timesteps)
    slots = data["slot"].long()
    eps, noise, t = eps[slots].to(device), noise[slots].to(device), t[slots].to(device)
    with torch.no_grad():
        dist = comps.vae.encode(data["img"].to(device)).latent_dist
        latents = (dist.mean + dist.std * eps) * comps.vae.config.scaling_factor
    noisy = comps.scheduler.add_noise(latents, noise, t)
    cond = _conditioning(comps.text_encoder, data["concept"], data["meta"], device)
    ctx = contextlib.nullcontext() if sync or job.world == 1 else accelerator.no_sync(job.unet)
    with ctx:
        with accelerator.autocast():
            pred = job.unet(noisy, t, cond).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3)).mean()
        accelerator.backward(loss)
    return loss


def _train_loop(job, loader, start, opt_steps, log_path, progress):
    """Run the micro-steps of ``loader`` from micro-step ``start``: optimizer steps on accumulation
    boundaries, one log row per micro-step, a checkpoint every ``save_steps`` optimizer steps."""
    from tqdm.auto import tqdm

    settings, accelerator, schedule = job.settings, job.accelerator, job.schedule
    sync_of = {s.index: (s.sync, s.epoch) for s in _micro_meta(schedule, start)}
    shape = latent_shape(job.comps.vae, settings.resolution)
    lr = settings.effective_lr(job.world)
    writer_fh = _open_log(log_path, start)
    writer = csv.DictWriter(writer_fh, LOG_COLUMNS)
    bar = tqdm(total=schedule.total_steps, initial=opt_steps, desc="train_unet",
               disable=not (progress and accelerator.is_local_main_process and show_progress()), mininterval=1.0)
    for data in loader:
        micro = int(data["micro"][0])
        sync, epoch = sync_of[micro]
        loss = _micro_loss(job, data, micro, sync, shape)
        if sync:
            job.optimizer.step()
            job.optimizer.zero_grad(set_to_none=True)
            opt_steps += 1
            bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        writer.writerow(dict(micro_step=micro, epoch=epoch, opt_step=opt_steps, loss=f"{loss.item():.6f}", lr=lr))
        log_values(accelerator, job.tracking, {"loss": loss.item(), "lr": lr}, micro)
        if sync and opt_steps % settings.save_steps == 0 and opt_steps < schedule.total_steps:
            writer_fh.flush()
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _save_checkpoint(job.partial / "checkpoint", accelerator.unwrap_model(job.unet), job.optimizer,
                                 {"fingerprint": job.job_fp, "micro": micro + 1, "opt_steps": opt_steps})
    bar.close()
    writer_fh.close()


def _write_outputs(job, out_dir, log_csv, log_path):
    """Write the trained UNet and the log (main process), then drop the job's resumable state."""
    accelerator = job.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_dir(out_dir) as tmp:
            accelerator.unwrap_model(job.unet).save_pretrained(tmp)
        if log_csv:
            with atomic_path(log_csv) as tmp:
                shutil.copyfile(log_path, tmp)
        shutil.rmtree(job.partial, ignore_errors=True)


def train_unet(pretrained, train_parquet, classes_parquet, image_root, tokens_path, out_dir, settings=None,
               log_csv=None, progress=True, tracking=None):
    """Finetune the UNet and write it to ``out_dir`` in diffusers layout (``config.json`` + safetensors).

    ``tracking``: a :class:`~genpromp.tracking.TrackingSpec`; when on, every micro-step logs ``loss``
    and ``lr`` at its micro-step number. The progress bar is drawn only on a terminal."""
    from accelerate import Accelerator

    settings = settings or Stage2Settings()
    n_updates = settings.trained_steps()  # refuses a final_unet the settings cannot give before any work
    if n_updates != settings.max_train_steps:
        log.info("final_unet %s: the written UNet is the one after update %d of %d (the reference's last save)",
                 settings.final_unet, n_updates, settings.max_train_steps)
    out_dir = Path(out_dir)
    partial = _partial_dir(out_dir)
    accelerator = Accelerator(mixed_precision=settings.mixed_precision,
                              gradient_accumulation_steps=settings.gradient_accumulation_steps,
                              **accelerator_kwargs(tracking))
    start_tracking(accelerator, tracking, asdict(settings))
    table = load_training_table(train_parquet, classes_parquet, image_root)
    comps, concept_ids, meta_ids = _load_stage2_models(pretrained, table, tokens_path, accelerator.device,
                                                       settings.gradient_checkpointing)
    items = sorted(((c, p) for c, paths in table.images.items() for p in paths), key=lambda x: str(x[1]))
    world = accelerator.num_processes
    schedule, optimizer, job_fp = _plan_stage2(settings, comps.unet, items, n_updates, pretrained, tokens_path,
                                               world)
    state = _load_checkpoint(partial / "checkpoint", comps.unet, optimizer, job_fp)
    start, opt_steps = (state["micro"], state["opt_steps"]) if state else (0, 0)
    if state:
        log.info("resuming stage 2 at optimizer step %d", opt_steps)
    unet, optimizer = accelerator.prepare(comps.unet, optimizer)
    job = _Stage2Job(accelerator, comps, unet, optimizer, settings, schedule, job_fp, partial, tracking)
    loader = torch.utils.data.DataLoader(
        _Stage2Dataset(items, settings, concept_ids, meta_ids),
        batch_sampler=_RankBatches(schedule, accelerator.process_index, world, settings.batch_size, start),
        num_workers=settings.num_workers)
    log_path = partial / f"log-rank{accelerator.process_index}.csv"
    _train_loop(job, loader, start, opt_steps, log_path, progress)
    _write_outputs(job, out_dir, log_csv, log_path)
    accelerator.end_training()
    return out_dir


def _micro_meta(schedule, start):
    """Light iterator of (index, sync, epoch) records (no permutations)."""
    @dataclass
    class _M:
        index: int
        sync: bool
        epoch: int
    index = 0
    for epoch, _b, sync in schedule.micro_steps_light():
        if index >= start:
            yield _M(index, sync, epoch)
        index += 1


def _open_log(path, start):
    """Open the CSV log for appending, dropping rows at or after micro-step ``start`` (resume)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if start and path.is_file():
        with open(path) as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["micro_step"]) < start]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, LOG_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return open(path, "a", newline="")


def _file_digest(path):
    path = Path(path)
    if path.is_file():
        import hashlib
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return str(path)


def _copy_given_unet(given, out_dir, log_csv):
    """``train_unet.load_unet_path``: validate that diffusers UNet folder and copy it; an empty log."""
    from ..models.loading import load_unet

    load_unet(given)  # validates: a diffusers unet/ folder
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(given, tmp, dirs_exist_ok=True)
    with atomic_path(log_csv) as tmp:
        Path(tmp).write_text(",".join(LOG_COLUMNS) + "\n")
    return out_dir


def _train_job(config, dataset, train, classes, tokens, out_dir, log_csv):
    """Train in this process with the config's settings."""
    return train_unet(config["pretrained"], train, classes, image_root_for(config["datasets"][dataset]), tokens,
                      out_dir, Stage2Settings.from_config(config), log_csv,
                      tracking=tracking_spec(config, dataset, "train_unet"))


def run_train_unet_job(config, dataset, train, classes, tokens, out_dir, log_csv):
    """What the ``train_unet`` rule runs: copy ``load_unet_path``, or train (``accelerate launch`` if gpus > 1).

    ``train`` / ``classes``: the index tables (train.parquet, classes.parquet); ``tokens``: the merged token
    table (or an original tokens/ folder); ``out_dir``: the UNet folder; ``log_csv``: the training log.
    ``dataset`` names the config entry (image root, tracking run).
    """
    out_dir = Path(out_dir)
    given = config["train_unet"].get("load_unet_path")
    if given:
        return _copy_given_unet(given, out_dir, log_csv)
    from .resume import launch_if_multi_gpu

    if launch_if_multi_gpu(["train-unet", "--dataset", dataset, "--train", str(train), "--classes", str(classes),
                            "--tokens", str(tokens), "--out", str(out_dir), "--log-csv", str(log_csv)],
                           config, _partial_dir(out_dir)):
        return out_dir
    return _train_job(config, dataset, train, classes, tokens, out_dir, log_csv)


def _run_cli(args):
    from ..config import load_config

    config = load_config(args.config, json.loads(args.config_json) if args.config_json else None)
    ds = args.dataset
    if ds not in config["datasets"]:
        raise GenprompError(f"dataset {ds!r} is not in the config's datasets ({', '.join(config['datasets'])})")
    out = args.out or layout.unet_dir(ds)
    _train_job(config, ds, args.train or layout.index_table(ds, "train"),
               args.classes or layout.index_table(ds, "classes"), args.tokens or layout.tokens(ds), Path(out),
               args.log_csv or (layout.unet_log(ds) if args.out is None else f"{out}.log.csv"))


def register_cli(sub):
    ds = "<dataset>"
    p = sub.add_parser("train-unet", help="stage 2: finetune the UNet with the learned concept tokens",
                       description="Finetune the full UNet (fp32) on 0.5*f_r + 0.5*f_d conditioning (docs/method.md § Stage 2) "
                                   f"and write {layout.unet_dir(ds)}/ in diffusers layout. Killed runs resume from "
                                   "<out>.partial/checkpoint. Use `accelerate launch` for several GPUs.")
    p.add_argument("--config", default="config/config.yaml", help="workflow config YAML (default: %(default)s)")
    p.add_argument("--config-json", default=None, help="JSON object merged over the config")
    p.add_argument("--dataset", required=True, help="dataset name (a key of `datasets` in the config)")
    p.add_argument("--train", default=None, help=f"training index (default: {layout.index_table(ds, 'train')})")
    p.add_argument("--classes", default=None, help=f"class table (default: {layout.index_table(ds, 'classes')})")
    p.add_argument("--tokens", default=None,
                   help=f"token table or original tokens/ dir (default: {layout.tokens(ds)})")
    p.add_argument("--out", default=None, help=f"output unet/ folder (default: {layout.unet_dir(ds)})")
    p.add_argument("--log-csv", default=None,
                   help=f"training log (default: {layout.unet_log(ds)}, or <out>.log.csv with --out)")
    p.set_defaults(func=_run_cli)
