"""Pretrain the tiny SD-1.4-topology model on the captioned demo corpus (the demo's stand-in for SD-1.4).

Two phases, deterministic for a seed:

1. **VAE** (``AutoencoderKL``, 8x, 4 latent channels) for reconstruction: MSE + ``kl_weight`` · KL on
   random ``vae_crop``-pixel crops (the VAE is fully convolutional, so it is trained on crops and used
   on whole images). Afterwards the whole corpus is encoded once; the std of the sampled latents sets
   ``vae.config.scaling_factor = 1 / std`` so that scaled latents have unit variance — the way SD's
   0.18215 was derived.
2. **UNet + text encoder** jointly, for text-conditioned denoising: epsilon prediction on the SD
   DDPM schedule (scaled_linear, 1000 steps); timesteps uniform in [0, 1000) except a share
   ``small_t_fraction`` drawn from [0, ``small_t_max``) (GenPromp reads attention at t ∈ {0, 99});
   captions dropped (→ "") with ``caption_dropout`` (for guidance in the sample grid), single words
   dropped with ``word_dropout`` and a leading "a photo of a" / "a" replaced by one of the seven
   GenPromp templates' prefixes with ``template_prob`` (so every template prefix and short captions
   such as "a photo of a triangle" are seen in training). Latents are drawn from the stored posterior
   (mean, std) of each image (encoded once; half of the samples mirrored in latent space), so the VAE
   never runs in this phase. With ``short_caption_prob`` one-object captions become template captions of
   1–3 object words ("a photo of a triangle").
3. **Attention alignment** (``attention_loss_weight`` > 0, same phase): the demo's stand-in for web-scale
   pretraining. At the ``attn2`` layers the CAM reads, the object words' cross-attention mass (explicit
   softmax with gradients, :class:`AttentionAlignProcessor`) is pulled towards the corpus box by a BCE
   (:func:`attention_alignment_loss`). Boxes of the *pretraining corpus* only; GenPromp's stages never
   see boxes. See docs/demo_model.md.

Afterwards :func:`genpromp.demo.diagnostic.attention_localization_score` measures what GenPromp needs from
the model: on freshly rendered single-object probe images, the CAM of the class word of "a photo of a
{word}", from the CAM stage's extraction and the TS-CAM box rule, against the true box, per candidate meta
word (the shape noun, the colour, generic words such as "shape"). The layer groups it reads are the ones
the attention alignment trains (``cam_groups``).

Outputs: the model folder (diffusers layout, loadable by ``genpromp.models.loading.load_components``),
a loss log CSV (``phase, step, loss, mse, kl, attn, lr, seconds``), a sample grid PNG (rows: probe-free
held-out corpus images, their VAE reconstructions, samples generated from their captions) and a JSON
with the localization diagnostic.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .. import layout
from ..cams.capture import CamGroup, ExplicitAttentionProcessor, groups_from_config, select_group_layers
from ..errors import GenprompError, InputError
from ..io import atomic_path, resolve_inside, write_text_atomic
from ..prompts import TEMPLATES, tokenize
from ..tracking import show_progress, standalone_tracker, tracking_spec
from .diagnostic import DiagnosticSettings, attention_localization_score, render_probe_set
from .tiny import create_tiny_components, pixels_to_unit, save_components
from .parts import BODY_NOUN, BODY_PLURAL
from .world import (BODY_COLOURS, COLOURS, DEFAULT_OBJECT_SIZE, DEFAULT_OUTLINE, SHAPE_PLURALS, SHAPES, TEXTURE_NOUNS,
                    TEXTURES)

__all__ = [
    "DEFAULT_CAM_GROUPS", "PretrainSettings", "CorpusItem", "read_corpus", "load_corpus_images", "train_vae",
    "encode_posteriors", "scale_from_posteriors", "augment_caption", "train_denoiser", "corpus_boxes",
    "object_words", "object_token_ids", "parse_object_kind", "short_caption", "rasterise_boxes", "WordMapRecorder",
    "AttentionAlignProcessor", "attention_alignment", "attention_alignment_loss", "render_sample_grid",
    "localization_diagnostic", "pretrain_tiny", "settings_from_config", "components_for", "register_cli",
]

log = logging.getLogger(__name__)

LOSS_COLUMNS = ("phase", "step", "loss", "mse", "kl", "attn", "lr", "seconds")
# Caption openings that template augmentation may replace (longest first).
_CAPTION_OPENINGS = ("a photo of a ", "a ")
# The layer groups of the shipped test.cam_groups: mid at latent / 8, down and up at latent / 4.
DEFAULT_CAM_GROUPS = (CamGroup("mid", ("mid",), 8), CamGroup("down", ("down",), 4), CamGroup("up", ("up",), 4))


@dataclass
class PretrainSettings:
    """Everything that shapes the pretrained model; ``demo.tiny_model`` in the config.

    resolution: square image size (latent = resolution / 8). Model widths as in ``build_tiny_model``.
    cam_groups: the cross-attention layer groups the attention alignment trains and the diagnostic reads.
    probe_*: the diagnostic's probe set (image size, object size and outline from ``demo.*``, so the
    probes look like the demo datasets); diagnostic: how it reads and scores the maps.
    """

    resolution: int = 256
    block_out_channels: tuple = (16, 32, 64, 64)
    cross_attention_dim: int = 64
    text_hidden_size: int = 64
    text_layers: int = 2
    heads: tuple = (1, 4, 4, 4)
    vae_channels: tuple = (8, 16, 32, 64)
    vae_steps: int = 150
    vae_batch_size: int = 16
    vae_crop: int = 64
    vae_learning_rate: float = 2e-3
    kl_weight: float = 1e-5
    unet_steps: int = 250
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    caption_dropout: float = 0.1
    word_dropout: float = 0.1
    template_prob: float = 0.3
    small_t_fraction: float = 0.5
    small_t_max: int = 200
    short_caption_prob: float = 0.4
    attention_loss_weight: float = 1.0
    attention_loss_max_t: int = 500
    attention_loss_background_weight: float = 4.0
    holdout: int = 16
    probe_images: int = 48
    probe_image_size: tuple = (160, 256)
    probe_object_size: tuple = DEFAULT_OBJECT_SIZE
    probe_outline: float = DEFAULT_OUTLINE
    cam_groups: tuple = DEFAULT_CAM_GROUPS
    diagnostic: DiagnosticSettings = field(default_factory=DiagnosticSettings)
    sample_steps: int = 25
    guidance_scale: float = 3.0
    seed: int = 0


@dataclass
class CorpusItem:
    """One corpus row: image path (absolute), caption, union box [x1, y1, x2, y2] in pixels (x2 exclusive)."""

    path: Path
    caption: str
    box: tuple


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------

def read_corpus(root):
    """Rows of ``<root>/captions.csv`` (columns file, caption, x1, y1, x2, y2) as CorpusItems."""
    root = Path(root)
    path = root / "captions.csv"
    if not path.is_file():
        raise InputError(path, "corpus caption table not found; generate it with `genpromp demo-world --what corpus`")
    items = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"file", "caption", "x1", "y1", "x2", "y2"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(path, f"missing columns {sorted(missing)}; expected file,caption,x1,y1,x2,y2", 1)
        for line, row in enumerate(reader, start=2):
            caption = (row["caption"] or "").strip()
            if not caption:
                raise InputError(path, "empty caption", line)
            try:
                box = tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2"))
            except (TypeError, ValueError):
                raise InputError(path, "box columns x1,y1,x2,y2 must be numbers", line) from None
            items.append(CorpusItem(resolve_inside(root, row["file"], path, line), caption, box))
    if not items:
        raise InputError(path, "the corpus has no rows")
    return items


def load_corpus_images(items, resolution):
    """Decode every item's image, resized (bicubic) to ``resolution`` square: uint8 tensor [N, 3, R, R]."""
    from ..data.images import read_rgb

    out = torch.empty(len(items), 3, resolution, resolution, dtype=torch.uint8)
    for i, item in enumerate(items):
        arr = read_rgb(item.path)
        if arr.shape[0] != resolution or arr.shape[1] != resolution:
            arr = np.asarray(Image.fromarray(arr).resize((resolution, resolution), Image.BICUBIC))
        out[i] = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)
    return out


def corpus_boxes(items):
    """Union boxes of the items as fractions of their image's width / height: float32 [N, 4]
    (image sizes from the file headers)."""
    out = torch.empty(len(items), 4, dtype=torch.float32)
    for i, item in enumerate(items):
        with Image.open(item.path) as im:
            w, h = im.size
        x1, y1, x2, y2 = item.box
        out[i] = torch.tensor([x1 / w, y1 / h, x2 / w, y2 / h])
    return out.clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Phase 1: VAE
# ---------------------------------------------------------------------------------------------

def _random_crops(images_u8, batch, crop, gen):
    """A batch of random ``crop``-square crops with random horizontal flips: float32 [B, 3, crop, crop]."""
    n, _, h, w = images_u8.shape
    idx = torch.randint(0, n, (batch,), generator=gen)
    ys = torch.randint(0, h - crop + 1, (batch,), generator=gen)
    xs = torch.randint(0, w - crop + 1, (batch,), generator=gen)
    flips = torch.rand(batch, generator=gen) < 0.5
    out = torch.stack([images_u8[i, :, y:y + crop, x:x + crop] for i, y, x in zip(idx, ys, xs)])
    out[flips] = out[flips].flip(-1)
    return pixels_to_unit(out)


def _set_lr(opt, lr):
    """Set every parameter group's learning rate to ``lr``; returns lr."""
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


def _optimizer_step(opt, loss, params, grad_clip):
    """Backward, clip the gradient norm of ``params`` to ``grad_clip``, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


def train_vae(vae, images_u8, settings, gen, log_rows, t0, tracker=None):
    """Train ``vae`` for ``settings.vae_steps`` steps on random crops; append loss rows; return vae.
    ``tracker``: an accelerate tracker (:func:`genpromp.tracking.standalone_tracker`) that also gets
    ``vae/loss``, ``vae/mse``, ``vae/kl`` and ``vae/lr`` per step."""
    if settings.vae_steps == 0:
        return vae
    crop = min(settings.vae_crop, images_u8.shape[-1])
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.vae_learning_rate, weight_decay=0.0)
    vae.train()
    for step in tqdm(range(1, settings.vae_steps + 1), desc="pretrain VAE", mininterval=5, disable=not show_progress()):
        x = _random_crops(images_u8, settings.vae_batch_size, crop, gen)
        lr = _set_lr(opt, settings.vae_learning_rate * _lr_factor(step, settings.warmup_steps, settings.vae_steps))
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean() / z[0].numel()  # per latent element
        loss = mse + settings.kl_weight * kl
        _optimizer_step(opt, loss, vae.parameters(), settings.grad_clip)
        log_rows.append(("vae", step, loss.item(), mse.item(), kl.item(), float("nan"), lr,
                         time.perf_counter() - t0))
        if tracker is not None:
            tracker.log({"vae/loss": loss.item(), "vae/mse": mse.item(), "vae/kl": kl.item(), "vae/lr": lr}, step=step)
    vae.eval()
    return vae


@torch.no_grad()
def encode_posteriors(vae, images_u8, batch=32):
    """Posterior mean and std of every image: float32 [N, 4, R/8, R/8] each (the VAE in eval mode)."""
    means, stds = [], []
    for start in range(0, len(images_u8), batch):
        post = vae.encode(pixels_to_unit(images_u8[start:start + batch])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def scale_from_posteriors(means, stds, gen):
    """1 / std of latents sampled from the posteriors (SD's ``scaling_factor`` rule): float."""
    sample = means + stds * torch.randn(means.shape, generator=gen)
    std = float(sample.std())
    if not math.isfinite(std) or std <= 0:
        raise GenprompError(f"VAE latents have std {std}; VAE pretraining diverged (lower vae_learning_rate)")
    return 1.0 / std


# ---------------------------------------------------------------------------------------------
# Phase 2: UNet + text encoder
# ---------------------------------------------------------------------------------------------

def _lr_factor(step, warmup, total):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10 % at ``total``."""
    if step <= warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def augment_caption(caption, rng, settings):
    """Caption for one training sample (``rng``: ``random.Random``).

    With ``caption_dropout`` → "" (unconditional). Else each word after the opening is dropped with
    ``word_dropout`` (at least one word is kept), and with ``template_prob`` an opening "a photo of a " /
    "a " is replaced by a random GenPromp template prefix ("a rendering of a ", "a photo of my ", ...).
    """
    if rng.random() < settings.caption_dropout:
        return ""
    opening = next((o for o in _CAPTION_OPENINGS if caption.startswith(o)), "")
    words = caption[len(opening):].split()
    kept = ([w for w in words if rng.random() >= settings.word_dropout] or [rng.choice(words)]) if words else []
    if opening and rng.random() < settings.template_prob:
        opening = rng.choice(TEMPLATES).replace("{}", "")
    return (opening + " ".join(kept)).strip()


def _sample_timesteps(batch, settings, num_train, gen):
    """int64 [B]: uniform in [0, num_train), a ``small_t_fraction`` share uniform in [0, small_t_max)."""
    t = torch.randint(0, num_train, (batch,), generator=gen)
    small = torch.rand(batch, generator=gen) < settings.small_t_fraction
    t_small = torch.randint(0, max(1, settings.small_t_max), (batch,), generator=gen)
    return torch.where(small, t_small, t)


# ---------------------------------------------------------------------------------------------
# Attention alignment (stand-in for web-scale pretraining; see docs/demo_model.md)
# ---------------------------------------------------------------------------------------------

def object_words():
    """Every corpus word that names the object: colours, textures, texture nouns, shapes, plurals, "shape(s)",
    and the part world's body colours and body noun (singular and plural)."""
    return (tuple(COLOURS) + TEXTURES + tuple(TEXTURE_NOUNS.values()) + SHAPES + tuple(SHAPE_PLURALS.values())
            + ("shape", "shapes") + tuple(BODY_COLOURS) + (BODY_NOUN, BODY_PLURAL))


def object_token_ids(tokenizer):
    """int64 [K]: sorted ids of every token of every :func:`object_words` word (no other caption word
    of the corpus or the templates shares these ids)."""
    ids = set()
    for word in object_words():
        ids.update(tokenizer(word, add_special_tokens=False).input_ids)
    return torch.tensor(sorted(ids), dtype=torch.long)


def parse_object_kind(caption):
    """(colour, texture, shape) words of a one-object corpus caption; None for a two-object caption
    ("two ...") or when no shape / colour word is present. Texture nouns ("stripes") map back to their
    adjective; a missing texture is "plain"; the generic "shape" stands in for a missing shape noun."""
    words = caption.split()
    if not words or "two" in words:
        return None
    nouns = {v: k for k, v in TEXTURE_NOUNS.items()}
    colour = next((w for w in words if w in COLOURS or w in BODY_COLOURS), None)
    texture = next((w if w in TEXTURES else nouns[w] for w in words if w in TEXTURES or w in nouns), "plain")
    shape = next((w for w in words if w in SHAPES or w == BODY_NOUN), "shape" if "shape" in words else None)
    if colour is None or shape is None:
        return None
    return colour, texture, shape


def short_caption(kind, rng):
    """A GenPromp-template caption with 1–3 object words (``rng``: ``random.Random``):
    "a photo of a triangle", "a rendering of a red triangle", "the photo of a striped triangle", ..."""
    colour, texture, shape = kind
    words = rng.choice([(shape,), (shape,), (colour, shape), (texture, shape), (colour, texture, shape)])
    return rng.choice(TEMPLATES).format(" ".join(words))


def rasterise_boxes(boxes, h, w):
    """Area fraction of each cell of an h×w grid covered by each box: float32 [N, h, w].

    boxes: float [N, 4] ``[x1, y1, x2, y2]`` as fractions of the image width / height (x2 exclusive).
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float32)

    def cover(lo, hi, n):
        edges = torch.arange(n + 1, dtype=torch.float32) / n
        return (torch.minimum(hi[:, None], edges[None, 1:]) - torch.maximum(lo[:, None], edges[None, :-1])).clamp_min(0) * n

    return cover(boxes[:, 1], boxes[:, 3], h)[:, :, None] * cover(boxes[:, 0], boxes[:, 2], w)[:, None, :]


class WordMapRecorder:
    """Collects, per forward, ``Σ_{object tokens} softmax(Q Kᵀ·scale)`` averaged over heads, with gradients.

    ``token_weights``: float32 [B, 77], 1 at the object-word positions of each caption (set before the
    forward). ``maps``: list of (h, w, float32 [B, h*w]) in execution order; ``reset()`` clears it.
    """

    def __init__(self, latent_hw):
        self.latent_hw = tuple(latent_hw)
        self.token_weights = None
        self.maps = []

    def reset(self):
        self.maps = []


class AttentionAlignProcessor(ExplicitAttentionProcessor):
    """Training processor for one ``attn2``: explicit softmax (float32, differentiable), records the
    object-word probability mass per query into a :class:`WordMapRecorder`, returns the same hidden
    states as the default processor (shares the computation with ``capture.TokenCaptureProcessor``)."""

    def __init__(self, recorder, downsample):
        self.recorder = recorder
        self.downsample = int(downsample)

    def record(self, probs, length):
        rec = self.recorder
        mass = (probs.mean(dim=1) * rec.token_weights[:, None, :]).sum(-1)  # [B, L]
        lh, lw = rec.latent_hw
        rec.maps.append((lh // self.downsample, lw // self.downsample, mass))


@contextlib.contextmanager
def attention_alignment(unet, latent_hw, groups):
    """Install :class:`AttentionAlignProcessor` on the ``attn2`` layers the CAM reads (the layers of
    ``groups``, a sequence of CamGroup, found by ``capture.select_group_layers``); restore the original
    processors on exit. Yields the :class:`WordMapRecorder`."""
    chosen = select_group_layers(unet, groups)
    recorder = WordMapRecorder(latent_hw)
    originals = [(layer.module, layer.module.processor) for layer, _ in chosen]
    try:
        for layer, gi in chosen:
            layer.module.set_processor(AttentionAlignProcessor(recorder, groups[gi].downsample))
        yield recorder
    finally:
        for module, proc in originals:
            module.set_processor(proc)


def attention_alignment_loss(maps, boxes, weights, background_weight=1.0, eps=1e-4):
    """Binary cross-entropy between each layer's object-word mass and the box mask, averaged over layers
    and cells, then over samples with ``weights``; the outside-the-box term is multiplied by
    ``background_weight`` (> 1 pushes the mass outside the box down harder: the TS-CAM box rule
    thresholds at a fraction of the map's maximum, so background level decides the box).

    maps: list of (h, w, float32 [B, h*w]); boxes: float32 [B, 4] as image fractions (already mirrored
    with the latents); weights: float32 [B] (0 = no object words / two objects / t too large).
    Returns (scalar loss, float32 [B] per-sample loss).
    """
    per_sample = []
    for h, w, mass in maps:
        target = rasterise_boxes(boxes, h, w).reshape(len(boxes), h * w)
        p = mass.clamp(eps, 1 - eps)
        per_sample.append(-(target * p.log() + background_weight * (1 - target) * (1 - p).log()).mean(-1))
    per_sample = torch.stack(per_sample).mean(0)
    total = (per_sample * weights).sum() / weights.sum().clamp_min(1.0)
    return total, per_sample.detach()


def _mirror_boxes(boxes, flip):
    """Boxes [B, 4] (fractions) with x mirrored where ``flip`` [B] bool."""
    mirrored = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
    return torch.where(flip[:, None], mirrored, boxes)


def _training_caption(caption, rng, settings):
    """Corpus caption → training caption: with ``short_caption_prob`` a template caption of the object's
    words (one-object captions only), else :func:`augment_caption`."""
    if settings.short_caption_prob > 0 and rng.random() < settings.short_caption_prob:
        kind = parse_object_kind(caption)
        if kind is not None:
            return short_caption(kind, rng)
    return augment_caption(caption, rng, settings)


def _denoiser_batch(means, stds, captions, scale, settings, num_train, gen, rng):
    """One training batch drawn from ``gen`` (and ``rng`` for the captions): (idx [B], flip bool [B],
    scaled latents [B, 4, h, w] mirrored where ``flip``, noise, timesteps int64 [B], captions)."""
    idx = torch.randint(0, means.shape[0], (settings.batch_size,), generator=gen)
    flip = torch.rand(settings.batch_size, generator=gen) < 0.5
    latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
    latents = torch.where(flip.view(-1, 1, 1, 1), latents.flip(-1), latents)  # mirror in latent space
    noise = torch.randn(latents.shape, generator=gen)
    t = _sample_timesteps(settings.batch_size, settings, num_train, gen)
    texts = [_training_caption(captions[i], rng, settings) for i in idx.tolist()]
    return idx, flip, latents, noise, t, texts


def _alignment_term(recorder, boxes, flip, single, t, settings):
    """Attention-alignment loss of a batch: samples with object words, one object and t < attention_loss_max_t."""
    weights = ((recorder.token_weights.sum(1) > 0) & single & (t < settings.attention_loss_max_t)).float()
    loss, _ = attention_alignment_loss(recorder.maps, _mirror_boxes(boxes, flip), weights,
                                       settings.attention_loss_background_weight)
    return loss


def train_denoiser(unet, text_encoder, tokenizer, scheduler, means, stds, captions, scale, settings,
                   gen, log_rows, t0, boxes=None, tracker=None):
    """Jointly train UNet and text encoder for epsilon prediction; append loss rows.

    means / stds: posteriors [N, 4, h, w]; captions: list of N strings. Half the samples are mirrored
    (in latent space). boxes: float32 [N, 4] union boxes as image fractions; with
    ``attention_loss_weight`` > 0 the loss adds that weight × :func:`attention_alignment_loss` over the
    object words of one-object captions at timesteps < ``attention_loss_max_t``, at the layers of
    ``settings.cam_groups``. ``tracker``: an accelerate tracker that also gets ``unet/loss``,
    ``unet/mse``, ``unet/lr`` (and ``unet/attn``) per step.
    """
    if settings.unet_steps == 0:
        return
    align = settings.attention_loss_weight > 0
    if align and boxes is None:
        raise GenprompError("attention_loss_weight > 0 needs the corpus boxes (pass boxes=)")
    rng = random.Random(settings.seed)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    obj_ids = object_token_ids(tokenizer)
    single = torch.tensor(["two" not in c.split() for c in captions])  # one-object corpus captions
    unet.train()
    text_encoder.train()
    ctx = attention_alignment(unet, means.shape[-2:], settings.cam_groups) if align else contextlib.nullcontext()
    with ctx as recorder:
        for step in tqdm(range(1, settings.unet_steps + 1), desc="pretrain UNet+text", mininterval=5,
                         disable=not show_progress()):
            idx, flip, latents, noise, t, texts = _denoiser_batch(
                means, stds, captions, scale, settings, scheduler.config.num_train_timesteps, gen, rng)
            a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
            ids = tokenize(tokenizer, texts)
            cond = text_encoder(ids)[0]
            lr = _set_lr(opt, settings.learning_rate * _lr_factor(step, settings.warmup_steps, settings.unet_steps))
            if align:
                recorder.reset()
                recorder.token_weights = torch.isin(ids, obj_ids).float()
            mse = F.mse_loss(unet(noisy, t, cond).sample, noise)
            attn = _alignment_term(recorder, boxes[idx], flip, single[idx], t, settings) if align else None
            loss = mse if attn is None else mse + settings.attention_loss_weight * attn
            _optimizer_step(opt, loss, params, settings.grad_clip)
            attn_value = float("nan") if attn is None else attn.item()
            log_rows.append(("unet", step, loss.item(), mse.item(), float("nan"), attn_value, lr,
                             time.perf_counter() - t0))
            if tracker is not None:
                tracker.log({"unet/loss": loss.item(), "unet/mse": mse.item(), "unet/lr": lr,
                             **({"unet/attn": attn_value} if align else {})}, step=step)
    unet.eval()
    text_encoder.eval()


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def _generate(components, captions, steps, guidance, seed):
    """DDIM samples for ``captions`` with classifier-free guidance: uint8 [N, 3, R, R]."""
    from diffusers import DDIMScheduler

    tokenizer, text_encoder, vae, unet, scheduler = components
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    n, size = len(captions), unet.config.sample_size
    latents = torch.randn(n, unet.config.in_channels, size, size, generator=gen)
    cond = text_encoder(tokenize(tokenizer, list(captions)))[0]
    uncond = text_encoder(tokenize(tokenizer, [""] * n))[0]
    for t in ddim.timesteps:
        eps = unet(torch.cat([latents, latents]), t, torch.cat([uncond, cond])).sample
        e_u, e_c = eps.chunk(2)
        latents = ddim.step(e_u + guidance * (e_c - e_u), t, latents).prev_sample
    images = vae.decode(latents / vae.config.scaling_factor).sample
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def render_sample_grid(components, images_u8, captions, settings, path):
    """PNG grid: row 1 held-out images, row 2 VAE reconstructions, row 3 samples from their captions."""
    _, _, vae, _, _ = components
    with torch.no_grad():
        post = vae.encode(pixels_to_unit(images_u8)).latent_dist
        recon = ((vae.decode(post.mean).sample.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    samples = _generate(components, captions, settings.sample_steps, settings.guidance_scale, settings.seed)
    rows = [torch.cat(list(r), dim=-1) for r in (images_u8, recon, samples)]
    grid = torch.cat(rows, dim=-2).permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def _write_loss_log(rows, path):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LOSS_COLUMNS)
    for r in rows:
        writer.writerow([r[0], r[1]] + [f"{v:.6g}" for v in r[2:]])
    write_text_atomic(path, buf.getvalue())


def components_for(settings, tokenizer_dir):
    """A freshly initialised tiny model with the architecture of ``settings`` (seeded with its seed):
    (tokenizer, text_encoder, vae, unet, scheduler)."""
    return create_tiny_components(
        tokenizer_dir, settings.resolution, tuple(settings.block_out_channels), settings.cross_attention_dim,
        settings.text_hidden_size, settings.text_layers, settings.heads, tuple(settings.vae_channels),
        seed=settings.seed)


def _pretrain(components, items, settings, t0, tracker):
    """Both training phases on the corpus minus its held-out tail. Returns (loss rows, the held-out images
    uint8 [holdout, 3, R, R], report dict of settings, scaling factor, timings and final losses)."""
    tokenizer, text_encoder, vae, unet, scheduler = components
    gen = torch.Generator().manual_seed(settings.seed)
    images = load_corpus_images(items, settings.resolution)
    train_images = images[:-settings.holdout or None]
    captions = [it.caption for it in items[:len(train_images)]]
    log.info("corpus: %d images (%d held out) at %d px; loaded in %.1f s", len(items), settings.holdout,
             settings.resolution, time.perf_counter() - t0)
    rows = []
    train_vae(vae, train_images, settings, gen, rows, t0, tracker)
    t_vae = time.perf_counter() - t0
    means, stds = encode_posteriors(vae, train_images)
    scale = scale_from_posteriors(means, stds, gen)
    vae.register_to_config(scaling_factor=scale)
    log.info("VAE done at %.1f s; latent std %.4f -> scaling_factor %.5f", t_vae, 1 / scale, scale)
    boxes = corpus_boxes(items[:len(train_images)]) if settings.attention_loss_weight > 0 else None
    train_denoiser(unet, text_encoder, tokenizer, scheduler, means, stds, captions, scale, settings, gen, rows, t0,
                   boxes=boxes, tracker=tracker)
    report = {"settings": asdict(settings), "scaling_factor": scale, "seconds_vae": t_vae,
              "seconds_train": time.perf_counter() - t0, "final_vae_loss": _tail_mean(rows, "vae"),
              "final_unet_loss": _tail_mean(rows, "unet"), "final_unet_mse": _tail_mean(rows, "unet", 3),
              "final_attention_loss": _tail_mean(rows, "unet", 5)}
    return rows, images[len(images) - settings.holdout:], report


def localization_diagnostic(components, settings):
    """The diagnostic's report on ``settings.probe_images`` probes rendered with the run's seed + 1."""
    probes = render_probe_set(settings.probe_images, settings.resolution, settings.probe_image_size,
                              settings.seed + 1, settings.probe_object_size, settings.probe_outline)
    return attention_localization_score(components, probes, settings.cam_groups, settings.diagnostic, settings.seed)


def pretrain_tiny(corpus_dir, tokenizer_dir, out_dir, loss_csv=None, samples_png=None, diagnostic_json=None,
                  settings=None, tracking=None):
    """Build the tiny model, pretrain it on the corpus and write it to ``out_dir`` (atomically).

    ``tracking``: a :class:`~genpromp.tracking.TrackingSpec`; when on, both phases log their losses and
    learning rates to that tracker.

    Returns the diagnostic dict (timings, losses, scaling factor, localization scores).
    """
    settings = settings or PretrainSettings()
    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    items = read_corpus(corpus_dir)
    if len(items) <= settings.holdout:
        raise InputError(Path(corpus_dir) / "captions.csv",
                         f"{len(items)} rows; need more than demo.tiny_model.holdout = {settings.holdout}")
    components = components_for(settings, tokenizer_dir)
    tracker = standalone_tracker(tracking)
    rows, held_images, report = _pretrain(components, items, settings, t0, tracker)
    if tracker is not None:
        tracker.finish()
    if settings.probe_images:
        report["localization"] = localization_diagnostic(components, settings)
        log.info("localization: %s", json.dumps(report["localization"]))
    if samples_png:
        n = min(8, settings.holdout)
        held_captions = [it.caption for it in items[len(items) - settings.holdout:]]
        render_sample_grid(components, held_images[:n], held_captions[:n], settings, samples_png)
    save_components(out_dir, *components)
    report["seconds_total"] = time.perf_counter() - t0
    if loss_csv:
        _write_loss_log(rows, loss_csv)
    if diagnostic_json:
        write_text_atomic(diagnostic_json, json.dumps(report, indent=2) + "\n")
    log.info("pretrained model written to %s in %.1f s", out_dir, report["seconds_total"])
    return report


def _tail_mean(rows, phase, column=2, k=20):
    """Mean of the last ``k`` finite values of a loss-row column (2 loss, 3 mse, 5 attn) for ``phase``."""
    vals = [r[column] for r in rows if r[0] == phase and math.isfinite(r[column])][-k:]
    return float(np.mean(vals)) if vals else None


def _diagnostic_settings(section):
    """DiagnosticSettings from ``demo.tiny_model.diagnostic``: lists as tuples, the oracle sweep as
    (start, stop, step)."""
    unknown = sorted(set(section) - set(DiagnosticSettings.__dataclass_fields__))
    if unknown:
        raise GenprompError(f"config key demo.tiny_model.diagnostic: unknown keys {unknown}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
    if "oracle_sweep" in values:
        values["oracle_sweep"] = tuple(float(section["oracle_sweep"][k]) for k in ("start", "stop", "step"))
    return DiagnosticSettings(**values)


def settings_from_config(config):
    """PretrainSettings from a validated config (``demo.tiny_model`` + ``seed``; the probes' image size,
    object size and outline from ``demo``)."""
    tm = dict(config["demo"]["tiny_model"])
    unknown = sorted(set(tm) - set(PretrainSettings.__dataclass_fields__))
    if unknown:
        raise GenprompError(f"config key demo.tiny_model: unknown keys {unknown}")
    for key in ("block_out_channels", "vae_channels", "heads"):
        if key in tm:
            tm[key] = tuple(tm[key])
    if "cam_groups" in tm:
        tm["cam_groups"] = groups_from_config(tm["cam_groups"])
    tm["diagnostic"] = _diagnostic_settings(tm.get("diagnostic", {}))
    tm["probe_image_size"] = tuple(config["demo"]["image_size"])
    tm["probe_object_size"] = tuple(config["demo"]["object_size"])
    tm["probe_outline"] = float(config["demo"]["outline"])
    return PretrainSettings(seed=int(config["seed"]), **tm)


def _cli(args):
    from ..config import load_config

    config = load_config(args.config)
    settings = settings_from_config(config)
    corpus = args.corpus or str(Path(config["demo"]["root"]) / "corpus")
    pretrain_tiny(corpus, args.tokenizer, args.out or config["pretrained"], args.loss_csv, args.samples,
                  args.diagnostic, settings, tracking_spec(config, "demo_model", "pretrain_tiny"))


def register_cli(sub):
    p = sub.add_parser("pretrain-tiny", help="build and pretrain the tiny SD-1.4-topology demo model",
                       description="Build the tiny SD-1.4-topology model and pretrain it on the captioned demo "
                                   "corpus (VAE, then UNet + text encoder), with settings from the config's "
                                   "demo.tiny_model block. Writes the model folder (diffusers layout), a loss "
                                   "log, a sample grid and a localization diagnostic.")
    p.add_argument("--config", default="config/config.yaml", help="workflow config YAML (default: %(default)s)")
    p.add_argument("--corpus", default=None, help="corpus folder with captions.csv (default: <demo.root>/corpus)")
    p.add_argument("--tokenizer", default="resources/assets/clip_tokenizer",
                   help="CLIPTokenizer folder (default: %(default)s)")
    p.add_argument("--out", default=None, help="model folder to write (default: the config's `pretrained`)")
    p.add_argument("--loss-csv", default=f"{layout.demo_model_dir()}/pretrain_loss.csv",
                   help="loss log CSV (default: %(default)s)")
    p.add_argument("--samples", default=f"{layout.demo_model_dir()}/samples.png", help="sample grid PNG (default: %(default)s)")
    p.add_argument("--diagnostic", default=f"{layout.demo_model_dir()}/diagnostic.json",
                   help="timings, losses and localization scores as JSON (default: %(default)s)")
    p.set_defaults(func=_cli)
