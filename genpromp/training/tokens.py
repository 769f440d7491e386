"""Stage 1: learn one concept-token embedding per class (docs/method.md § Stage 1), sharded and resumable.

How this maps to the reference's loop
-------------------------------------
The reference trains the classes one after another, each with its own data loader (its own
images, shuffled), its own AdamW and its own step count, reloading nothing but re-creating the
Accelerator. Here a shard job loads the models once and trains up to ``concurrent_classes`` classes
*at the same time in one batched forward*: at every iteration each active class contributes its
own next micro-batch (its images, its order, its templates, its noise), the batch is concatenated,
and the loss is the **sum of the per-class losses** (each the reference's MSE mean over C, H, W
then over that class's micro-batch). Because every class's concept row appears only in its own
captions and everything else is frozen, the gradient reaching row c is exactly the gradient of
class c's own loss; each row is its own ``nn.Parameter`` with its own AdamW (so its own moments,
step count and decoupled weight decay), stepped on its own accumulation boundaries. When a class
finishes, the next class of the shard takes its slot. The result equals the one-class-at-a-time
loop up to floating-point summation order (``tests/test_tokens.py`` checks it against
:func:`train_class_plain`, a straightforward per-class loop with a fresh optimizer, loader and
Accelerator).

All randomness is derived from ``(seed, class id, epoch / micro-step / sample)`` (see
:mod:`genpromp.training.data`), so a class's token does not depend on the shard layout, on the
classes it shares a batch with, on the number of processes, or on a kill/resume.

Weight-decay defect (``reproduce_weight_decay_defect``)
-------------------------------------------------------
The reference gives AdamW the whole embedding matrix and zeroes the gradient of every row but the
class's own, so decoupled weight decay multiplies *every* row by ``(1 - lr·wd)`` at each step. By
default only the concept rows are parameters (the fix). With the option on, each class is trained
with the reference's mechanics (whole-matrix parameter, gradient rows zeroed), one class at a time,
and before class k the whole matrix is rescaled by ``Π_{j<k} (1 - lr·wd)^{steps_j}`` over all
earlier classes of the dataset — exactly the shrinkage the reference's sequential loop has applied
by then (the rows class k reads — template words, bos/eos, its own initial row — are all scaled
uniformly). This keeps shards independent: shard k does not need shard k-1's output, and the result
matches the reference's sequential run up to rounding of the accumulated factor (computed in
float64 instead of as thousands of float32 in-place multiplications). In this mode the shard
resumes at class granularity (a class interrupted mid-way is retrained from its start).

Processes and the learning rate
-------------------------------
Multiple processes (``accelerate launch``) split a shard's classes round-robin (class
parallelism); each class is trained on one process, so our results do not depend on the GPU count.
The reference instead runs each class data-parallel on its P GPUs, and its ``scale_lr`` is
``lr × batch_size × grad_accum × P``: every optimizer step sees P × the per-GPU batch, and its
two epochs take about P-times fewer steps. ``data_parallel_processes`` (P, default 1) replays that
run exactly on any number of devices: each class's micro-step takes ``P × batch_size`` items
(accelerate's sharding and ``even_batches`` padding, see :class:`~genpromp.training.data.StepSchedule`),
the loss is their mean (what DDP's gradient averaging of P equal per-GPU means gives), the lr is
multiplied by P as well, and the step budget is the reference's. With P = 1 the lr is
``lr × batch_size × grad_accum``, which is the reference's on one GPU.

Classes and shards
------------------
Only the class table's kept classes (``keep_class``) are trained; shards split them into
``min(shards, kept classes)`` contiguous ranges (:func:`planned_shards`). Every class's concept
token is still registered, so ``<prefix-i>`` keeps its original class id i and its token id.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import layout
from ..data.indexing import image_root_for
from ..errors import GenprompError
from ..io import atomic_path
from ..prompts import TEMPLATES, add_concept_tokens, tokenize
from ..tracking import accelerator_kwargs, log_values, show_progress, start_tracking, tracking_spec
from .checkpoints import merge_token_tables, save_tokens
from .data import (STREAM_STEP, MicroStep, StepSchedule, derive_generator, draw_step_noise, latent_shape,
                   load_training_table, make_pixel_batch, make_sample, read_image, resize_image)
from .resume import fingerprint, load_optimizer_state, optimizer_state_tensors, read_checkpoint, write_checkpoint
from .shards import planned_shards, token_shard_count

__all__ = [
    "Stage1Settings", "ConceptTokenEmbedding", "Stage1Models", "load_stage1_models", "class_schedule",
    "shard_classes", "planned_shards", "token_shard_count", "train_classes_concurrent", "train_class_plain",
    "train_token_shard", "register_cli", "LOG_COLUMNS", "run_train_token_job",
]

log = logging.getLogger(__name__)
LOG_COLUMNS = ("iteration", "class_id", "epoch", "micro_step", "opt_step", "loss", "lr")


@dataclass(frozen=True)
class Stage1Settings:
    """Hyper-parameters of stage 1 (config ``train_token`` + ``seed`` + ``compute``)."""

    resolution: int = 512
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    num_train_epochs: int = 2
    max_train_steps: int | None = None
    learning_rate: float = 5.0e-5
    scale_lr: bool = True
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1.0e-2
    adam_epsilon: float = 1.0e-8
    reproduce_weight_decay_defect: bool = False
    checkpoint_every: int = 20
    seed: int = 0
    mixed_precision: str = "no"
    concurrent_classes: int = 8
    data_parallel_processes: int = 1

    @classmethod
    def from_config(cls, config):
        """Settings from a validated workflow config dict."""
        from ..config import settings_from_section

        return settings_from_section(cls, config, "train_token")

    def effective_lr(self):
        """lr × batch × grad_accum × data_parallel_processes when ``scale_lr`` (the reference's rule)."""
        scale = (self.batch_size * self.gradient_accumulation_steps * self.data_parallel_processes
                 if self.scale_lr else 1)
        return self.learning_rate * scale

    def make_optimizer(self, params):
        return torch.optim.AdamW(params, lr=self.effective_lr(), betas=(self.adam_beta1, self.adam_beta2),
                                 weight_decay=self.adam_weight_decay, eps=self.adam_epsilon)


class ConceptTokenEmbedding(nn.Module):
    """A frozen token-embedding table whose concept rows come from separate trainable parameters.

    ``forward(ids int64 [B, L]) -> [B, L, D]``: rows of ``base`` except where ``ids`` is a registered
    concept token id, which read the matching parameter ``[D]``.
    """

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.rows = {}
        self._lut = None

    @property
    def weight(self):  # get_input_embeddings().weight keeps working for readers
        return self.base.weight

    def set_rows(self, rows):
        """``rows``: {token id: nn.Parameter [D]} — the concept rows currently trained."""
        self.rows = dict(rows)
        lut = torch.full((self.base.num_embeddings,), -1, dtype=torch.long)
        for slot, tok in enumerate(self.rows):
            lut[tok] = slot
        self._lut = lut.to(self.base.weight.device)

    def forward(self, ids):
        out = F.embedding(ids, self.base.weight)
        if not self.rows:
            return out
        slots = self._lut[ids]
        stacked = torch.stack(list(self.rows.values())).to(out.dtype)
        picked = stacked[slots.clamp_min(0)]
        return torch.where((slots >= 0).unsqueeze(-1), picked, out)


@dataclass
class Stage1Models:
    """Loaded, frozen components plus per-class caption ids and concept token ids."""

    tokenizer: object
    text_encoder: object
    vae: object
    unet: object
    scheduler: object
    token_ids: dict      # class_id -> concept token id
    caption_ids: dict    # class_id -> int64 [n_templates, L]
    initial_rows: dict   # class_id -> float32 [D] (copy of the meta-token row)


def load_stage1_models(pretrained, classes, device="cpu", weight_dtype=torch.float32):
    """Load the SD folder once, add every class's concept token (initialised from its meta word), freeze all.

    ``classes``: every class of the dataset (so token ids are the same in every shard).
    """
    from ..models.loading import load_components

    comps = load_components(pretrained)
    tok_ids = add_concept_tokens(comps.tokenizer, comps.text_encoder, [c.concept_token for c in classes],
                                 [c.meta_token for c in classes])
    for module in (comps.text_encoder, comps.vae, comps.unet):
        module.requires_grad_(False)
        module.eval()
    comps.text_encoder.to(device)
    for module in (comps.vae, comps.unet):
        module.to(device) if weight_dtype == torch.float32 else module.to(device, weight_dtype)
    weight = comps.text_encoder.get_input_embeddings().weight
    captions = {c.class_id: tokenize(comps.tokenizer, [t.format(c.concept_token) for t in TEMPLATES])
                for c in classes}
    return Stage1Models(comps.tokenizer, comps.text_encoder, comps.vae, comps.unet, comps.scheduler,
                        {c.class_id: t for c, t in zip(classes, tok_ids)}, captions,
                        {c.class_id: weight[t].detach().clone() for c, t in zip(classes, tok_ids)})


def class_schedule(settings, class_id, n_images):
    """The reference's per-class epochs × batches × accumulation schedule (on P data-parallel processes)."""
    return StepSchedule(n_images, settings.batch_size, settings.gradient_accumulation_steps,
                        settings.num_train_epochs, settings.max_train_steps, settings.seed, (int(class_id),),
                        settings.data_parallel_processes)


def shard_classes(class_ids, n_shards, shard):
    """Contiguous range of ``class_ids`` (sorted) for ``shard`` of ``planned_shards(n_shards, len(class_ids))``
    shards (sizes differ by ≤ 1, none empty)."""
    ids = sorted(int(c) for c in class_ids)
    planned = planned_shards(n_shards, len(ids))
    if not 0 <= shard < planned:
        capped = f" ({n_shards} capped at the {len(ids)} classes to train)" if planned < n_shards else ""
        raise GenprompError(f"shard {shard} out of range: there are {planned} shards{capped}")
    n_shards = planned
    base, extra = divmod(len(ids), n_shards)
    start = shard * base + min(shard, extra)
    return ids[start:start + base + (1 if shard < extra else 0)]


def _forward_loss(models, pixels, caption_ids, eps, noise, timesteps, accelerator):
    """Per-sample loss float32 [b]: MSE(noise_pred, noise) mean over C, H, W."""
    device = accelerator.device
    vae_dtype = next(models.vae.parameters()).dtype
    with torch.no_grad():
        dist = models.vae.encode(pixels.to(device, vae_dtype)).latent_dist
        latents = (dist.mean.float() + dist.std.float() * eps.to(device)) * models.vae.config.scaling_factor
    noise = noise.to(device)
    timesteps = timesteps.to(device)
    noisy = models.scheduler.add_noise(latents, noise, timesteps)
    with accelerator.autocast():
        cond = models.text_encoder(caption_ids.to(device))[0]
        pred = models.unet(noisy.to(next(models.unet.parameters()).dtype), timesteps, cond).sample
    return F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))


def _step_inputs(models, settings, class_id, images, step):
    """Pixels, caption ids and (eps, noise, timesteps) of one class micro-step (all derived RNG)."""
    pixels, templates = make_pixel_batch(images, step, settings.seed, (class_id,), settings.resolution,
                                         len(TEMPLATES))
    gen = derive_generator(settings.seed, STREAM_STEP, class_id, step.index)
    eps, noise, t = draw_step_noise(gen, len(step.items), latent_shape(models.vae, settings.resolution),
                                    models.scheduler.config.num_train_timesteps)
    return pixels, models.caption_ids[class_id][templates], eps, noise, t


@dataclass
class _ClassRun:
    class_id: int
    schedule: StepSchedule
    row: nn.Parameter
    optimizer: torch.optim.Optimizer
    steps: object = None
    current: MicroStep | None = None
    opt_steps: int = 0

    def advance(self):
        self.current = next(self.steps, None)
        return self.current


class _CsvLog:
    """Append-only CSV training log, truncated to a checkpoint's iteration on resume."""

    def __init__(self, path, resume_iteration=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if resume_iteration is not None and self.path.is_file():
            with open(self.path) as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["iteration"]) < resume_iteration]
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.fh = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.fh, LOG_COLUMNS)

    def write(self, **row):
        self.writer.writerow(row)

    def flush(self):
        self.fh.flush()

    def close(self):
        self.fh.close()


def _progress(total, accelerator, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not (accelerator.is_local_main_process and show_progress()),
                mininterval=1.0)


class _ConcurrentTrainer:
    """One concurrent training job: the finished rows, the active classes, the queue and the iteration count.

    ``checkpoint_dir`` / ``job_fingerprint`` / ``tracking`` as in :func:`train_classes_concurrent`.
    """

    def __init__(self, models, images, settings, accelerator, checkpoint_dir, job_fingerprint, tracking):
        self.models, self.images, self.settings, self.accelerator = models, images, settings, accelerator
        self.checkpoint_dir, self.job_fingerprint, self.tracking = checkpoint_dir, job_fingerprint, tracking
        self.finished, self.active, self.queue, self.iteration = {}, [], [], 0
        self.logger = self.bar = None

    def total_steps(self, cid):
        return class_schedule(self.settings, cid, len(self.images[cid])).total_steps

    def new_run(self, cid, tensors=None, cstate=None):
        """A class's run: a fresh row and optimizer, or both restored from a checkpoint's ``tensors``."""
        device = self.accelerator.device
        schedule = class_schedule(self.settings, cid, len(self.images[cid]))
        init = self.models.initial_rows[cid] if tensors is None else tensors[f"row.{cid}"]
        row = nn.Parameter(init.clone().to(device, torch.float32))
        opt = self.settings.make_optimizer([row])
        run = _ClassRun(cid, schedule, row, opt)
        start = 0
        if cstate is not None:
            load_optimizer_state(opt, tensors, cstate["optimizer"], prefix=f"opt.{cid}")
            if f"grad.{cid}" in tensors:
                row.grad = tensors[f"grad.{cid}"].to(device)
            start, run.opt_steps = cstate["micro"], cstate["opt_steps"]
        run.steps = schedule.micro_steps(start)
        run.advance()
        return run

    def resume(self, order):
        """Restore the last checkpoint (if any) and queue the classes of ``order`` still to train."""
        ckpt = read_checkpoint(self.checkpoint_dir, self.job_fingerprint) if self.checkpoint_dir else None
        if ckpt is not None:
            tensors, state = ckpt
            self.iteration = state["iteration"]
            self.finished = {int(c): tensors[f"row.{c}"] for c in state["finished"]}
            self.active = [self.new_run(int(c), tensors, state["classes"][str(c)]) for c in state["active"]]
            log.info("resuming at iteration %d (%d classes finished, %d in progress)", self.iteration,
                     len(self.finished), len(self.active))
        running = {r.class_id for r in self.active}
        self.queue = [c for c in order if c not in self.finished and c not in running]

    def open_outputs(self, order, log_path, progress):
        """The CSV log (truncated to the resumed iteration) and the progress bar (at the resumed step)."""
        self.logger = _CsvLog(log_path, self.iteration) if log_path else None
        if not progress:
            return
        self.bar = _progress(sum(self.total_steps(c) for c in order), self.accelerator, "train_token")
        self.bar.update(sum(r.opt_steps for r in self.active) + sum(self.total_steps(c) for c in self.finished))

    def refill(self):
        while len(self.active) < self.settings.concurrent_classes and self.queue:
            self.active.append(self.new_run(self.queue.pop(0)))

    def save_checkpoint(self):
        tensors = {f"row.{c}": v for c, v in self.finished.items()}
        classes = {}
        for run in self.active:
            tensors[f"row.{run.class_id}"] = run.row.detach()
            if run.row.grad is not None:
                tensors[f"grad.{run.class_id}"] = run.row.grad.detach()
            opt_t, opt_meta = optimizer_state_tensors(run.optimizer, prefix=f"opt.{run.class_id}")
            tensors.update(opt_t)
            classes[str(run.class_id)] = {"micro": run.current.index, "opt_steps": run.opt_steps,
                                          "optimizer": opt_meta}
        write_checkpoint(self.checkpoint_dir, tensors, {
            "fingerprint": self.job_fingerprint, "iteration": self.iteration, "finished": sorted(self.finished),
            "active": [r.class_id for r in self.active], "classes": classes})
        if self.logger:
            self.logger.flush()

    def class_losses(self, embed):
        """One batched forward of every active class's micro-step and the backward of their summed losses."""
        models, settings = self.models, self.settings
        embed.set_rows({models.token_ids[r.class_id]: r.row for r in self.active})
        parts = [_step_inputs(models, settings, r.class_id, self.images[r.class_id], r.current) for r in self.active]
        sizes = [p[0].shape[0] for p in parts]
        per_sample = _forward_loss(models, *(torch.cat([p[i] for p in parts]) for i in range(5)),
                                   accelerator=self.accelerator)
        losses = [chunk.mean() for chunk in per_sample.split(sizes)]
        self.accelerator.backward(torch.stack(losses).sum())
        return losses

    def update(self, run, loss):
        """Step ``run``'s optimizer on its accumulation boundary, log, advance; False once the class is done."""
        step = run.current
        if step.sync:
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.opt_steps += 1
            if self.bar is not None:
                self.bar.update(1)
        if self.logger:
            self.logger.write(iteration=self.iteration, class_id=run.class_id, epoch=step.epoch,
                              micro_step=step.index, opt_step=run.opt_steps, loss=f"{loss.item():.6f}",
                              lr=self.settings.effective_lr())
        if run.advance() is None:
            self.finished[run.class_id] = run.row.detach().to("cpu").clone()
            return False
        return True

    def iterate(self, embed):
        """One iteration over the active classes, then refill and (every ``checkpoint_every`` steps) save."""
        self.refill()
        losses = self.class_losses(embed)
        still = [run for run, loss in zip(self.active, losses) if self.update(run, loss)]
        log_values(self.accelerator, self.tracking,
                   {**{f"loss/class_{r.class_id}": loss.item() for r, loss in zip(self.active, losses)},
                    "lr": self.settings.effective_lr()}, self.iteration)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{torch.stack(losses).mean().item():.4f}", classes=len(self.finished))
        self.active = still
        self.iteration += 1
        self.refill()
        every = self.settings.checkpoint_every * self.settings.gradient_accumulation_steps
        if self.checkpoint_dir and self.active and self.iteration % every == 0:
            self.save_checkpoint()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.logger:
            self.logger.close()


def train_classes_concurrent(models, class_ids, images, settings, accelerator, checkpoint_dir=None,
                             log_path=None, job_fingerprint=None, progress=True, tracking=None):
    """Train the concept rows of ``class_ids`` with up to ``settings.concurrent_classes`` classes per batch.

    ``images``: {class_id: list of uint8 [R, R, 3] resized images, sorted by image id}.
    ``checkpoint_dir``: resumable state (every ``checkpoint_every × grad_accum`` iterations).
    ``tracking``: a :class:`~genpromp.tracking.TrackingSpec` whose tracker the accelerator was built with;
    each iteration then logs ``loss/class_<id>`` of the classes trained in it and ``lr``.
    Returns {class_id: float32 [D] learned row}.
    """
    order = [int(c) for c in class_ids]
    embed = models.text_encoder.get_input_embeddings()
    if not isinstance(embed, ConceptTokenEmbedding):
        embed = ConceptTokenEmbedding(embed)
        models.text_encoder.set_input_embeddings(embed)
    trainer = _ConcurrentTrainer(models, images, settings, accelerator, checkpoint_dir, job_fingerprint, tracking)
    trainer.resume(order)
    trainer.open_outputs(order, log_path, progress)
    trainer.refill()
    while trainer.active:
        trainer.iterate(embed)
    trainer.close()
    return {c: trainer.finished[c] for c in order}


class _PlainDataset(torch.utils.data.Dataset):
    """The reference's per-class dataset: reads and augments one image per (item, micro, slot) key."""

    def __init__(self, paths, settings, class_id, caption_ids):
        self.paths, self.settings, self.class_id, self.caption_ids = paths, settings, class_id, caption_ids

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        item, micro, slot = key
        image = resize_image(read_image(self.paths[item]), self.settings.resolution)
        template, pixels = make_sample(image, self.settings.seed, (self.class_id,), micro, slot,
                                       self.settings.resolution, len(TEMPLATES))
        return {"img": pixels, "caption_ids": self.caption_ids[template], "micro": micro}


class _EpochBatchSampler:
    """Yields one epoch of the schedule's batches per ``iter`` (keys ``(item, micro, slot)``)."""

    def __init__(self, schedule):
        self.schedule, self.epoch = schedule, 0

    def __len__(self):
        return self.schedule.micro_per_epoch

    def __iter__(self):
        order = self.schedule.epoch_order(self.epoch)
        base = self.epoch * self.schedule.micro_per_epoch
        self.epoch += 1
        size = self.schedule.items_per_micro
        for b in range(self.schedule.micro_per_epoch):
            yield [(item, base + b, j) for j, item in enumerate(order[b * size:(b + 1) * size])]


def _plain_params(models, settings, token_id, class_id, decay_factor, device):
    """The parameters of :func:`train_class_plain` and the mask of rows whose gradient is zeroed (None when
    only the concept row is a parameter)."""
    embed = models.text_encoder.get_input_embeddings()
    if settings.reproduce_weight_decay_defect:
        if isinstance(embed, ConceptTokenEmbedding):
            embed = embed.base
            models.text_encoder.set_input_embeddings(embed)
        if decay_factor != 1.0:
            with torch.no_grad():
                embed.weight.mul_(decay_factor)
        embed.weight.requires_grad_(True)
        others = torch.ones(embed.weight.shape[0], dtype=torch.bool)
        others[token_id] = False
        return [embed.weight], others
    if not isinstance(embed, ConceptTokenEmbedding):
        embed = ConceptTokenEmbedding(embed)
        models.text_encoder.set_input_embeddings(embed)
    row = nn.Parameter(models.initial_rows[class_id].clone().to(device))
    embed.set_rows({token_id: row})
    return [row], None


def train_class_plain(pretrained, class_info, image_paths, all_classes, settings, components=None,
                      decay_factor=1.0):
    """The reference's loop for one class: fresh Accelerator, optimizer and data loader (and, unless
    ``components`` is given, freshly loaded models). Returns float32 [D].

    Default mode: only the concept row is a parameter. With ``reproduce_weight_decay_defect`` the
    whole embedding matrix is the parameter, other rows' gradients are zeroed after each backward,
    and the matrix is first multiplied by ``decay_factor`` (earlier classes' shrinkage).
    """
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=settings.mixed_precision,
                              gradient_accumulation_steps=settings.gradient_accumulation_steps)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(settings.mixed_precision, torch.float32)
    models = components or load_stage1_models(pretrained, all_classes, accelerator.device, weight_dtype)
    cid = class_info.class_id
    token_id = models.token_ids[cid]
    params, others = _plain_params(models, settings, token_id, cid, decay_factor, accelerator.device)
    optimizer = settings.make_optimizer(params)
    schedule = class_schedule(settings, cid, len(image_paths))
    dataset = _PlainDataset(image_paths, settings, cid, models.caption_ids[cid])
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=_EpochBatchSampler(schedule), num_workers=0)
    optimizer, loader = accelerator.prepare(optimizer, loader)
    global_step = 0
    shape = latent_shape(models.vae, settings.resolution)
    for _epoch in range(settings.num_train_epochs):
        for data in loader:
            with accelerator.accumulate(models.text_encoder):
                micro = int(data["micro"][0])
                gen = derive_generator(settings.seed, STREAM_STEP, cid, micro)
                eps, noise, t = draw_step_noise(gen, data["img"].shape[0], shape,
                                                models.scheduler.config.num_train_timesteps)
                loss = _forward_loss(models, data["img"], data["caption_ids"], eps, noise, t, accelerator).mean()
                accelerator.backward(loss)
                if others is not None:
                    params[0].grad[others.to(params[0].grad.device)] = 0
                optimizer.step()
                optimizer.zero_grad()
                if accelerator.sync_gradients:
                    global_step += 1
            if global_step >= schedule.step_budget:
                break  # leaves the epoch only, as the reference's loop
    result = params[0].detach()
    if settings.reproduce_weight_decay_defect:
        result = result[token_id]
        params[0].requires_grad_(False)
    accelerator.end_training()
    return result.to("cpu", torch.float32).clone()


def _decay_factors(settings, table):
    """{class_id: Π over earlier trained classes j of (1 - lr·wd)^steps_j} — the reference's shrinkage
    (float64; its loop runs over the kept classes only, so only those decay the matrix)."""
    per_step = 1.0 - settings.effective_lr() * settings.adam_weight_decay
    factors, log_total = {}, 0.0
    for info in table.classes:
        factors[info.class_id] = math.exp(log_total) if per_step > 0 else 0.0
        steps = class_schedule(settings, info.class_id, len(table.images[info.class_id])).total_steps
        log_total += steps * math.log(per_step) if per_step > 0 else 0.0
    return factors


def _train_defect_sequential(models, pretrained, table, class_ids, settings, partial_dir, job_fp):
    """Defect mode: one class at a time with the reference's mechanics; resumable per finished class."""
    done_path = Path(partial_dir) / "defect-done"
    ckpt = read_checkpoint(done_path, job_fp)
    rows = {int(k.split(".")[1]): v for k, v in ckpt[0].items()} if ckpt else {}
    base = models.text_encoder.get_input_embeddings()
    base = base.base if isinstance(base, ConceptTokenEmbedding) else base
    initial = base.weight.detach().clone()
    factors = _decay_factors(settings, table)
    infos = {c.class_id: c for c in table.classes}
    for cid in class_ids:
        if cid in rows:
            continue
        with torch.no_grad():
            base.weight.copy_(initial)
        rows[cid] = train_class_plain(pretrained, infos[cid], table.images[cid], table.all_classes, settings,
                                      components=models, decay_factor=factors[cid])
        write_checkpoint(done_path, {f"row.{c}": v for c, v in rows.items()},
                         {"fingerprint": job_fp, "finished": sorted(rows)})
    return {c: rows[c] for c in class_ids}


def _job_fingerprint(settings, table, class_ids, pretrained, num_processes):
    return fingerprint({"settings": asdict(settings) | {"concurrent_classes": None}, "pretrained": str(pretrained),
                        "classes": class_ids, "processes": num_processes,
                        "images": {c: [str(p) for p in table.images[c]] for c in class_ids}})


def train_token_shard(pretrained, train_parquet, classes_parquet, image_root, out_path, shard=0, n_shards=1,
                      settings=None, log_csv=None, progress=True, tracking=None):
    """Train the concept tokens of class shard ``shard`` and write our token table.

    The class table's kept classes are split into ``planned_shards(n_shards, kept)`` shards.
    Resumable: state lives in ``<out>.partial/`` (not a Snakemake output, so it survives a killed
    job) and the rerun continues from the last checkpoint with an identical result.
    ``tracking``: a :class:`~genpromp.tracking.TrackingSpec` (None or kind None = no tracker).
    """
    from accelerate import Accelerator

    settings = settings or Stage1Settings()
    out_path = Path(out_path)
    partial = _partial_dir(out_path)
    accelerator = Accelerator(mixed_precision=settings.mixed_precision,
                              gradient_accumulation_steps=settings.gradient_accumulation_steps,
                              **accelerator_kwargs(tracking))
    start_tracking(accelerator, tracking, {**asdict(settings), "shard": shard})
    full = load_training_table(train_parquet, classes_parquet, image_root)
    ids = shard_classes(full.class_ids, n_shards, shard)
    mine = ids[accelerator.process_index::accelerator.num_processes]
    table = full.subset(mine) if not settings.reproduce_weight_decay_defect else full
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(settings.mixed_precision, torch.float32)
    rank_dir = partial / f"rank-{accelerator.process_index}-of-{accelerator.num_processes}"
    job_fp = _job_fingerprint(settings, full, mine, pretrained, accelerator.num_processes)
    models = load_stage1_models(pretrained, full.all_classes, accelerator.device, weight_dtype)
    log.info("shard %d/%d: classes %s (this process: %d) on %s", shard, planned_shards(n_shards, len(full.classes)),
             ids, len(mine), accelerator.device)
    if settings.reproduce_weight_decay_defect:
        rows = _train_defect_sequential(models, pretrained, table, mine, settings, rank_dir, job_fp)
        _write_plain_log(rank_dir / "log.csv")
    else:
        images = {c: [resize_image(read_image(p), settings.resolution) for p in table.images[c]] for c in mine}
        models.text_encoder.set_input_embeddings(ConceptTokenEmbedding(models.text_encoder.get_input_embeddings()))
        rows = train_classes_concurrent(models, mine, images, settings, accelerator, rank_dir / "checkpoint",
                                        rank_dir / "log.csv", job_fp, progress, tracking)
    infos = {c.class_id: c for c in full.classes}
    part = rank_dir / "result.safetensors"
    width = models.text_encoder.get_input_embeddings().weight.shape[1]
    save_tokens(part, mine, [infos[c].concept_token for c in mine],
                torch.stack([rows[c] for c in mine]) if mine else torch.zeros(0, width),
                [infos[c].meta_token for c in mine], source="train_token")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        parts = [partial / f"rank-{r}-of-{accelerator.num_processes}" for r in range(accelerator.num_processes)]
        merge_token_tables([p / "result.safetensors" for p in parts], out_path)
        if log_csv:
            _merge_logs([p / "log.csv" for p in parts], log_csv)
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    if tracking is not None and tracking.kind:
        accelerator.end_training()  # closes the tracker's files
    return out_path


def _write_plain_log(path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not Path(path).is_file():
        Path(path).write_text(",".join(LOG_COLUMNS) + "\n")


def _merge_logs(paths, dest):
    with atomic_path(dest) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.DictWriter(out, LOG_COLUMNS)
        writer.writeheader()
        for p in paths:
            if Path(p).is_file():
                with open(p) as fh:
                    writer.writerows(csv.DictReader(fh))


def _partial_dir(out):
    """The resumable state of a shard job writing ``out``: ``<out stem>.partial/`` beside it."""
    out = Path(out)
    return out.with_name(out.stem + ".partial")


def _train_shard_job(config, dataset, shard, train, classes, out, log_csv, settings=None):
    """Train shard ``shard`` in this process from the config's settings (or ``settings``)."""
    return train_token_shard(config["pretrained"], train, classes, image_root_for(config["datasets"][dataset]),
                             out, shard, config["train_token"]["shards"],
                             settings or Stage1Settings.from_config(config), log_csv,
                             tracking=tracking_spec(config, dataset, "train_token", f"shard-{shard}"))


def run_train_token_job(config, dataset, shard, train, classes, out, log_csv):
    """What the ``train_token`` rule runs: in-process, or under ``accelerate launch`` when compute.gpus > 1.

    ``train`` / ``classes``: the index tables (train.parquet, classes.parquet); ``out``: the shard's token
    table; ``log_csv``: its training log. ``dataset`` names the config entry (image root, tracking run).
    """
    from .resume import launch_if_multi_gpu

    out = Path(out)
    if launch_if_multi_gpu(["train-token", "--dataset", dataset, "--shard", str(shard), "--train", str(train),
                            "--classes", str(classes), "--out", str(out), "--log-csv", str(log_csv)],
                           config, _partial_dir(out)):
        return out
    return _train_shard_job(config, dataset, shard, train, classes, out, log_csv)


def _run_cli(args):
    from ..config import load_config

    overrides = json.loads(args.config_json) if args.config_json else None
    config = load_config(args.config, overrides)
    if args.dataset not in config["datasets"]:
        raise GenprompError(f"dataset {args.dataset!r} is not in the config's datasets ({', '.join(config['datasets'])})")
    settings = Stage1Settings.from_config(config)
    if args.concurrent_classes:
        settings = Stage1Settings(**{**asdict(settings), "concurrent_classes": args.concurrent_classes})
    out = Path(args.out or layout.token_shard(args.dataset, args.shard))
    _train_shard_job(config, args.dataset, args.shard, args.train or layout.index_table(args.dataset, "train"),
                     args.classes or layout.index_table(args.dataset, "classes"), out,
                     args.log_csv or out.with_suffix(".log.csv"), settings)


def register_cli(sub):
    ds, k = "<dataset>", "<k>"
    p = sub.add_parser("train-token", help="stage 1: train the concept tokens of one class shard",
                       description="Train one concept-token embedding per class (docs/method.md § Stage 1) for the classes "
                                   f"of one shard and write {layout.token_shard(ds, k)}. "
                                   "Killed runs resume from <out>.partial/. Launch with `accelerate launch -m "
                                   "genpromp.cli train-token ...` to split the shard's classes over GPUs.")
    p.add_argument("--config", default="config/config.yaml", help="workflow config YAML (default: %(default)s)")
    p.add_argument("--config-json", default=None, help="JSON object merged over the config (like --config in Snakemake)")
    p.add_argument("--dataset", required=True, help="dataset name (a key of `datasets` in the config)")
    p.add_argument("--shard", type=int, default=0, help="class shard number k, 0 <= k < min(train_token.shards, kept classes)")
    p.add_argument("--train", default=None, help=f"training index (default: {layout.index_table(ds, 'train')})")
    p.add_argument("--classes", default=None, help=f"class table (default: {layout.index_table(ds, 'classes')})")
    p.add_argument("--out", default=None, help=f"output token table (default: {layout.token_shard(ds, k)})")
    p.add_argument("--log-csv", default=None, help="training log (default: <out> with suffix .log.csv)")
    p.add_argument("--concurrent-classes", type=int, default=None,
                   help="classes trained together in one batched forward (default 8; memory grows linearly)")
    p.set_defaults(func=_run_cli)
