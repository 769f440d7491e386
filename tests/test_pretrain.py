"""Pretraining of the tiny demo model: corpus reading, caption augmentation, loss goes down,
determinism, the written folder, and the localization diagnostic's scoring."""

import csv
import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genpromp.demo.diagnostic import box_ious, render_probe_set
from genpromp.demo.pretrain import (
    LOSS_COLUMNS, PretrainSettings, augment_caption, components_for, encode_posteriors, load_corpus_images,
    pretrain_tiny, read_corpus, scale_from_posteriors, train_denoiser, train_vae,
)
from genpromp.demo.world import write_corpus
from genpromp.errors import InputError
from genpromp.evaluation.metrics import threshold_list
from genpromp.models.loading import load_components
from genpromp.prompts import TEMPLATES, tokenize

TINY = PretrainSettings(
    resolution=64, block_out_channels=(8, 16, 16, 16), cross_attention_dim=16, text_hidden_size=16,
    text_layers=1, heads=2, vae_channels=(8, 8, 16, 16), vae_steps=4, vae_batch_size=4, vae_crop=32,
    unet_steps=4, batch_size=4, warmup_steps=1, holdout=4, probe_images=4, sample_steps=2, seed=0,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus", 16, resolution=64, seed=0)


def _components(tokenizer_dir, s=TINY):
    return components_for(s, tokenizer_dir)


# --- corpus -----------------------------------------------------------------------------------

def test_read_corpus_rows_and_images(corpus):
    items = read_corpus(corpus)
    assert len(items) == 16
    assert all(it.caption and len(it.box) == 4 for it in items)
    images = load_corpus_images(items[:3], 32)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8


def test_corpus_missing_column_names_the_file(tmp_path):
    (tmp_path / "captions.csv").write_text("file,caption,x1,y1,x2\nimages/a.png,a red star,1,2,3\n")
    with pytest.raises(InputError, match="captions.csv.*missing columns"):
        read_corpus(tmp_path)


def test_corpus_escaping_path_and_empty_caption(tmp_path):
    (tmp_path / "captions.csv").write_text("file,caption,x1,y1,x2,y2\n../x.png,a star,1,2,3,4\n")
    with pytest.raises(InputError, match="line 2"):
        read_corpus(tmp_path)
    (tmp_path / "captions.csv").write_text("file,caption,x1,y1,x2,y2\nimages/x.png,,1,2,3,4\n")
    with pytest.raises(InputError, match="empty caption"):
        read_corpus(tmp_path)


# --- caption augmentation ---------------------------------------------------------------------

def test_augment_caption_modes():
    rng = random.Random(0)
    caption = "a photo of a red striped triangle"
    none = replace(TINY, caption_dropout=0.0, word_dropout=0.0, template_prob=0.0)
    assert augment_caption(caption, rng, none) == caption
    assert augment_caption(caption, rng, replace(none, caption_dropout=1.0)) == ""
    # every word dropped -> exactly one word kept, opening untouched
    out = augment_caption(caption, rng, replace(none, word_dropout=1.0))
    assert out.startswith("a photo of a ") and out[len("a photo of a "):] in {"red", "striped", "triangle"}
    prefixes = {t.replace("{}", "") for t in TEMPLATES}
    seen = {augment_caption(caption, rng, replace(none, template_prob=1.0)).replace("red striped triangle", "")
            for _ in range(200)}
    assert seen == prefixes
    # captions without a known opening keep theirs
    assert augment_caption("two blue stars", rng, replace(none, template_prob=1.0)) == "two blue stars"


# --- training -----------------------------------------------------------------------------------

def test_vae_steps_lower_reconstruction_error(tokenizer_dir, corpus):
    _, _, vae, _, _ = _components(tokenizer_dir)
    images = load_corpus_images(read_corpus(corpus), 64)
    x = images[:4].float() / 127.5 - 1

    def recon_mse():
        with torch.no_grad():
            return float(((vae.decode(vae.encode(x).latent_dist.mean).sample - x) ** 2).mean())

    before = recon_mse()
    train_vae(vae, images, replace(TINY, vae_steps=25, vae_learning_rate=2e-3), torch.Generator().manual_seed(0),
              [], 0.0)
    assert recon_mse() < 0.7 * before


def test_denoiser_steps_lower_loss_on_fixed_batch(tokenizer_dir, corpus):
    tokenizer, text_encoder, vae, unet, scheduler = _components(tokenizer_dir)
    items = read_corpus(corpus)
    images = load_corpus_images(items, 64)
    means, stds = encode_posteriors(vae, images)
    gen = torch.Generator().manual_seed(1)
    scale = scale_from_posteriors(means, stds, gen)
    captions = [it.caption for it in items]
    latents = means[:8] * scale
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, 1000, (8,), generator=gen)
    noisy = scheduler.add_noise(latents, noise, t)
    ids = tokenize(tokenizer, captions[:8])

    def fixed_loss():
        with torch.no_grad():
            return float(((unet(noisy, t, text_encoder(ids)[0]).sample - noise) ** 2).mean())

    before = fixed_loss()
    settings = replace(TINY, unet_steps=30, batch_size=8, learning_rate=2e-3, caption_dropout=0.0,
                       attention_loss_weight=0.0)  # plain denoising (alignment: test_pretrain_attention.py)
    rows = []
    train_denoiser(unet, text_encoder, tokenizer, scheduler, means, stds, captions, scale, settings, gen, rows, 0.0)
    assert len(rows) == 30 and all(r[0] == "unet" for r in rows)
    assert fixed_loss() < 0.8 * before


def test_scaling_factor_makes_latents_unit_variance():
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(64, 4, 4, 4, generator=gen) * 3.0
    stds = torch.full_like(means, 0.5)
    scale = scale_from_posteriors(means, stds, gen)
    assert scale == pytest.approx(1 / np.sqrt(9.0 + 0.25), rel=0.05)


# --- the whole driver ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained_twice(tmp_path_factory, tokenizer_dir, corpus):
    base = tmp_path_factory.mktemp("pretrain")
    runs = []
    for name in ("a", "b"):
        runs.append(dict(folder=base / name / "tiny-sd", loss=base / name / "loss.csv",
                         samples=base / name / "samples.png", diag=base / name / "diag.json"))
        r = runs[-1]
        r["report"] = pretrain_tiny(corpus, tokenizer_dir, r["folder"], r["loss"], r["samples"], r["diag"], TINY)
    return runs


def test_pretrained_folder_loads_with_scaling_factor(pretrained_twice):
    run = pretrained_twice[0]
    comps = load_components(run["folder"])
    assert comps.scaling_factor == pytest.approx(run["report"]["scaling_factor"])
    assert comps.scaling_factor != pytest.approx(0.18215)
    assert comps.unet.config.sample_size == TINY.resolution // 8


def test_loss_log_samples_and_diagnostic(pretrained_twice):
    run = pretrained_twice[0]
    with open(run["loss"]) as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == LOSS_COLUMNS
    assert [r["phase"] for r in rows] == ["vae"] * TINY.vae_steps + ["unet"] * TINY.unet_steps
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    from PIL import Image
    grid = Image.open(run["samples"])
    assert grid.size == (4 * 64, 3 * 64)   # holdout columns x (image, reconstruction, sample) rows
    diag = json.loads(run["diag"].read_text())
    assert {"{shape}", "{colour}", "shape", "center_box"} <= set(diag["localization"])


def test_same_seed_gives_identical_weights(pretrained_twice, tmp_path, tokenizer_dir, corpus):
    a, b = pretrained_twice
    for sub in ("unet", "vae", "text_encoder"):
        fa = next((a["folder"] / sub).glob("*.safetensors"))
        wa, wb = load_file(fa), load_file(b["folder"] / sub / fa.name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), sub
    other = pretrain_tiny(corpus, tokenizer_dir, tmp_path / "c", settings=replace(TINY, seed=1, probe_images=0))
    wc = load_file(next((tmp_path / "c" / "unet").glob("*.safetensors")))
    wa = load_file(next((a["folder"] / "unet").glob("*.safetensors")))
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert other["scaling_factor"] != a["report"]["scaling_factor"]


# --- diagnostic scoring -------------------------------------------------------------------------

def test_score_cams_hand_computed():
    # A 64x64 CAM that is 1 exactly on the box's cells, frame 512, image 256: box [64, 64, 192, 192)
    cam = torch.zeros(1, 64, 64)
    cam[0, 16:48, 16:48] = 1.0
    at_thr = box_ious(cam, [(64.0, 64.0, 192.0, 192.0)], 256, 512, [0.5])[:, 0]
    best = box_ious(cam, [(64.0, 64.0, 192.0, 192.0)], 256, 512, threshold_list(0.05, 0.95, 0.05)).max(axis=1)
    assert at_thr[0] > 0.9 and best[0] > 0.9
    # The same CAM against a box in the other corner: no overlap.
    at_thr = box_ious(cam, [(200.0, 200.0, 256.0, 256.0)], 256, 512, [0.5])[:, 0]
    assert at_thr[0] == 0.0


def test_probe_set_boxes_inside_frame():
    probes = render_probe_set(6, 64, seed=0)
    assert len(probes) == 6 and len({(p.colour, p.texture, p.shape) for p in probes}) == 6
    for p in probes:
        x1, y1, x2, y2 = p.box
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        assert p.image.shape == (3, 64, 64)
