"""Attention-aligned pretraining of the tiny demo model: box rasterisation, object-word tokens, the
training processor against the production capture code and the default processor, and that a few steps
with the attention loss lower it."""

import math
import random
from dataclasses import replace

import pytest
import torch

from genpromp.cams.capture import CamGroup, capture_cross_attention, run_unet_capture
from genpromp.demo.pretrain import (
    PretrainSettings, _mirror_boxes, components_for, attention_alignment, attention_alignment_loss,
    corpus_boxes, encode_posteriors, load_corpus_images, object_token_ids, parse_object_kind, rasterise_boxes,
    read_corpus, scale_from_posteriors, short_caption, train_denoiser,
)
from genpromp.demo.world import write_corpus
from genpromp.prompts import TEMPLATES, token_index, tokenize

# resolution 128 -> latent 16: mid 2x2, down/up 4x4 (the demo's 4x4 / 8x8 at half size)
SMALL = PretrainSettings(
    resolution=128, block_out_channels=(8, 16, 16, 16), cross_attention_dim=16, text_hidden_size=16,
    text_layers=1, heads=2, vae_channels=(8, 8, 16, 16), batch_size=8, warmup_steps=1, seed=0,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus_attn") / "corpus", 16, resolution=128, seed=0)


def _components(tokenizer_dir, s=SMALL):
    return components_for(s, tokenizer_dir)


def test_rasterise_boxes_hand_computed():
    # box x in [0.25, 0.625), y in [0, 0.5) on a 4x4 grid: columns 1 full, 2 half; rows 0, 1 full
    m = rasterise_boxes([[0.25, 0.0, 0.625, 0.5]], 4, 4)[0]
    expected = torch.tensor([[0, 1, 0.5, 0], [0, 1, 0.5, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.allclose(m, expected)
    # area is preserved: sum of fractions / cells = box area
    m = rasterise_boxes([[0.1, 0.2, 0.7, 0.9]], 8, 8)[0]
    assert float(m.sum()) / 64 == pytest.approx(0.6 * 0.7, abs=1e-6)


def test_mirror_boxes():
    boxes = torch.tensor([[0.1, 0.2, 0.4, 0.9], [0.1, 0.2, 0.4, 0.9]])
    out = _mirror_boxes(boxes, torch.tensor([True, False]))
    assert torch.allclose(out[0], torch.tensor([0.6, 0.2, 0.9, 0.9]))
    assert torch.equal(out[1], boxes[1])
    # a mirrored mask equals the mask of the mirrored box
    assert torch.allclose(rasterise_boxes(out[:1], 8, 8), rasterise_boxes(boxes[:1], 8, 8).flip(-1))


def test_parse_object_kind_and_short_caption():
    assert parse_object_kind("a photo of a red striped triangle") == ("red", "striped", "triangle")
    assert parse_object_kind("a blue circle with dots") == ("blue", "dotted", "circle")
    assert parse_object_kind("a plain green cross") == ("green", "plain", "cross")
    assert parse_object_kind("a wavy orange shape") == ("orange", "wavy", "shape")
    assert parse_object_kind("a photo of two red striped triangles") is None
    rng = random.Random(0)
    seen = {short_caption(("red", "striped", "triangle"), rng) for _ in range(300)}
    assert "a photo of a triangle" in seen and "a rendition of a red striped triangle" in seen
    assert all(any(c == t.format(c[len(t.split("{}")[0]):]) for t in TEMPLATES) for c in seen)


def test_object_token_positions(tokenizer_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    ids = tokenize(tok, ["a photo of a red striped triangle", "a rendering of a circle with dots",
                         "a photo of two blue triangles", ""])
    hit = torch.isin(ids, object_token_ids(tok))
    assert hit[0].nonzero().flatten().tolist() == [5, 6, 7]
    assert hit[1].nonzero().flatten().tolist() == [5, 7]           # circle, dots
    assert hit[2, 5:7].all() and not hit[2, :5].any()               # blue, triangle(s) pieces
    assert not hit[3].any()


def test_alignment_processor_matches_capture_and_default(tokenizer_dir):
    tok, te, _, unet, _ = _components(tokenizer_dir)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.tensor([0, 99])
    with torch.no_grad():
        ids = tokenize(tok, ["a photo of a triangle", "a photo of a star"])
        cond = te(ids)[0]
        reference = unet(latents, t, cond).sample
        index = token_index(tok)
        groups = SMALL.cam_groups
        with capture_cross_attention(unet, index, groups, (16, 16)) as store:
            run_unet_capture(unet, latents, t, cond)
            captured = store._sums, store._counts
        with attention_alignment(unet, (16, 16), groups) as rec:
            rec.token_weights = torch.zeros(2, 77)
            rec.token_weights[:, index] = 1.0
            out = unet(latents, t, cond).sample
    assert torch.allclose(out, reference, atol=1e-5)      # same hidden states as the default processor
    by_size = {}
    for h, w, mass in rec.maps:
        by_size.setdefault((h, w), []).append(mass)
    sums, counts = captured
    for gi, g in enumerate(groups):
        size = (16 // g.downsample,) * 2
        if g.name == "mid":
            ours = by_size[size]
            assert len(ours) == 1 and torch.allclose(ours[0], sums[gi] / counts[gi], atol=1e-6)
    ours_ds4 = torch.stack(by_size[(4, 4)]).sum(0)
    theirs_ds4 = sum(sums[gi] for gi, g in enumerate(groups) if g.downsample == 4)
    assert torch.allclose(ours_ds4, theirs_ds4, atol=1e-5)
    # processors are restored afterwards
    assert all(type(m.processor).__name__ != "AttentionAlignProcessor" for m in unet.modules() if hasattr(m, "processor"))


def test_attention_loss_steps_lower_attention_loss(tokenizer_dir, corpus):
    tok, te, vae, unet, sch = _components(tokenizer_dir)
    items = read_corpus(corpus)
    images = load_corpus_images(items, SMALL.resolution)
    means, stds = encode_posteriors(vae, images)
    gen = torch.Generator().manual_seed(1)
    scale = scale_from_posteriors(means, stds, gen)
    boxes = corpus_boxes(items)
    captions = [it.caption for it in items]
    single = [i for i, c in enumerate(captions) if "two" not in c.split()][:8]
    latents = means[single] * scale
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.full((len(single),), 50)
    noisy = sch.add_noise(latents, noise, t)
    ids = tokenize(tok, [captions[i] for i in single])
    obj = object_token_ids(tok)

    def fixed_attn_loss():
        with torch.no_grad(), attention_alignment(unet, latents.shape[-2:], SMALL.cam_groups) as rec:
            rec.token_weights = torch.isin(ids, obj).float()
            unet(noisy, t, te(ids)[0])
            return float(attention_alignment_loss(rec.maps, boxes[single], torch.ones(len(single)))[0])

    before = fixed_attn_loss()
    settings = replace(SMALL, unet_steps=25, learning_rate=3e-3, caption_dropout=0.0, attention_loss_weight=5.0,
                       attention_loss_max_t=200, small_t_fraction=1.0, small_t_max=200, short_caption_prob=0.2)
    rows = []
    train_denoiser(unet, te, tok, sch, means, stds, captions, scale, settings, gen, rows, 0.0, boxes=boxes)
    assert len(rows) == 25 and all(math.isfinite(r[5]) for r in rows)    # attention loss logged every step
    assert all(r[2] == pytest.approx(r[3] + 5.0 * r[5], rel=1e-4) for r in rows)
    assert fixed_attn_loss() < 0.7 * before


def test_attention_loss_needs_boxes(tokenizer_dir, corpus):
    from genpromp.errors import GenprompError

    tok, te, vae, unet, sch = _components(tokenizer_dir)
    means = torch.zeros(4, 4, 16, 16)
    with pytest.raises(GenprompError, match="boxes"):
        train_denoiser(unet, te, tok, sch, means, means + 1, ["a red star"] * 4, 1.0,
                       replace(SMALL, unet_steps=1, attention_loss_weight=1.0), torch.Generator(), [], 0.0)
