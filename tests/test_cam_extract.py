"""CAM extraction: equivalence with the reference loop, embeddings cache, determinism, shards, overlays."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from cam_fixtures import (  # noqa: F401  (fixtures)
    LABELS, N_CLASSES, TOP5, cam_config, cam_world, fresh_components, load_tiny_components, tiny_model_dir,
)
from genpromp.cams.cache import CamCache, read_cam_shard, roles_for_mode, write_cam_index
from genpromp.cams.capture import groups_from_config
from genpromp.cams.embeddings import (
    build_run_embeddings, combine_embeddings, compute_class_embeddings, install_concept_tokens, read_classes,
    read_embeddings,
)
from genpromp.cams.extract import (
    CamSettings, encode_latents_and_noise, extract_cams, extract_shard, image_generator,
    plan_prompts, compute_pair_cams, resolve_precision, settings_from_config, shard_records, read_top5,
)
from genpromp.cams.overlay import draw_overlay, write_overlays
from genpromp.cams.reference import reference_batch_cams
from genpromp.data.indexing import image_root_for
from genpromp.layout import Variant
from genpromp.errors import ConfigError, GenprompError, InputError
from genpromp.prompts import TEMPLATES, token_index, tokenize

GROUPS = groups_from_config([{"name": "mid", "blocks": ["mid"], "downsample": 8},
                             {"name": "down", "blocks": ["down"], "downsample": 4},
                             {"name": "up", "blocks": ["up"], "downsample": 4}])


def _settings(mode, **kw):
    base = dict(resolution=128, timesteps=(0, 99), cam_size=64, groups=GROUPS, token_index=5, mode=mode,
                ratio=0.6, seed=0, batch_size=3, max_pairs=6)
    return CamSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def prepared(tiny_model_dir, cam_world):
    """Components with the concept tokens installed, and the run's class embeddings (shared by the module;
    the tests only swap attention processors, which the context managers restore)."""
    comps = load_tiny_components(tiny_model_dir)
    classes = read_classes(cam_world["classes"])
    install_concept_tokens(comps.tokenizer, comps.text_encoder, classes, cam_world["vectors"])
    return comps, compute_class_embeddings(comps.tokenizer, comps.text_encoder, classes)


def test_parse_variant_round_trips_variant_name():
    v = Variant.parse(Variant("top1", 0.6, [0, 99]).name)
    assert (v.mode, v.ratio, v.timesteps) == ("top1", 0.6, (0, 99))
    v = Variant.parse("top5_w1.00_t0-50-99")
    assert (v.mode, v.ratio, v.timesteps) == ("top5", 1.0, (0, 50, 99))
    with pytest.raises(GenprompError, match="variant"):
        Variant.parse("top3_w0.6_t0")


def test_plan_prompts_dedupes_by_image_and_class():
    slots, pairs, slot_pair = plan_prompts("top1", [0, 1], [[0, 2, 3, 1, 4], [2, 1, 0, 3, 4]])
    assert slots.tolist() == [[0, 0], [2, 1]]
    assert pairs.tolist() == [[0, 0], [1, 2], [1, 1]]  # image 0 needs one pass for both roles
    assert slot_pair.tolist() == [[0, 0], [1, 2]]
    slots, pairs, slot_pair = plan_prompts("top5", [3], [[3, 1, 2, 0, 4]])
    assert slots.tolist() == [[3, 1, 2, 0, 4, 3]] and len(pairs) == 5 and slot_pair[0, 5] == slot_pair[0, 0]
    slots, pairs, _ = plan_prompts("gtk", [2, 2])
    assert slots.tolist() == [[2], [2]] and pairs.tolist() == [[0, 2], [1, 2]]


def test_image_generator_depends_on_seed_and_id_only():
    a = torch.randn(5, generator=image_generator(0, "x/1"))
    assert torch.equal(a, torch.randn(5, generator=image_generator(0, "x/1")))
    assert not torch.equal(a, torch.randn(5, generator=image_generator(1, "x/1")))
    assert not torch.equal(a, torch.randn(5, generator=image_generator(0, "x/2")))


def test_cached_embeddings_equal_per_template_encoding(prepared, tmp_path, cam_world, tiny_model_dir):
    comps, emb = prepared
    te, tok = comps.text_encoder, comps.tokenizer
    with torch.no_grad():
        for c in (0, 3):
            f_r = sum(te(tokenize(tok, [t.format(f"<cub-{c}>")]))[0][0] for t in TEMPLATES) / len(TEMPLATES)
            f_d = sum(te(tokenize(tok, [t.format("bird")]))[0][0] for t in TEMPLATES) / len(TEMPLATES)
            torch.testing.assert_close(emb.f_r[c], f_r, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(emb.f_d[c], f_d, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(emb.f_r[0], emb.f_r[1])  # concept tokens differ per class
    out = build_run_embeddings(tiny_model_dir, cam_world["classes"], str(cam_world["tokens"]), tmp_path / "e.safetensors")
    back = read_embeddings(out)
    torch.testing.assert_close(back.f_r, emb.f_r, atol=1e-5, rtol=1e-5)
    assert back.class_ids.tolist() == list(range(N_CLASSES))
    meta = read_embeddings(build_run_embeddings(tiny_model_dir, cam_world["classes"], "meta", tmp_path / "m.safetensors"))
    torch.testing.assert_close(meta.f_r, meta.f_d)
    torch.testing.assert_close(meta.f_d, emb.f_d, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode,images", [("gtk", [0, 1, 2]), ("top1", [0, 1, 2]), ("top1", [0, 3, 6]),
                                         ("top5", [1, 2])])
def test_fast_path_equals_reference_loop(prepared, mode, images):
    """Cached embeddings + one batched truncated UNet pass == store-everything full-UNet loop (≤ 1e-4)."""
    comps, emb = prepared
    settings = _settings(mode)
    pixels = torch.rand(len(images), 3, 128, 128, generator=torch.Generator().manual_seed(len(images))) * 2 - 1
    latents, noise = encode_latents_and_noise(comps.vae, pixels, [f"im{i}" for i in images], seed=0)
    labels, top5 = [LABELS[i] for i in images], [TOP5[i] for i in images]
    slots, pairs, slot_pair = plan_prompts(mode, labels, top5)
    cams = compute_pair_cams(comps.unet, comps.scheduler, latents, noise,
                             combine_embeddings(emb, settings.ratio, emb.rows(pairs[:, 1])), pairs[:, 0], settings)
    fast = cams[torch.from_numpy(slot_pair)].numpy()
    ref = reference_batch_cams(comps, latents, noise, labels, top5, settings,
                               [f"<cub-{c}>" for c in range(N_CLASSES)], ["bird"] * N_CLASSES)
    assert fast.shape == ref.shape == (len(images), len(roles_for_mode(mode)), 64, 64)
    assert np.abs(fast - ref).max() <= 1e-4
    assert np.allclose(fast.reshape(-1, 64 * 64).max(axis=1), 1.0) and fast.min() >= 0


def test_shard_is_independent_of_batch_size(prepared, cam_world, repo_root, tiny_model_dir, tmp_path):
    comps, emb = prepared
    config = cam_config(repo_root, tiny_model_dir, cam_world)
    records = shard_records(cam_world["index"], cam_world["root"], 1, 4, read_top5(cam_world["scores"]))
    assert [r.label for r in records] == LABELS[4:]
    one = extract_cams(comps, emb, records, _settings("top1", batch_size=1, max_pairs=1))
    many = extract_cams(comps, emb, records, _settings("top1", batch_size=3, max_pairs=6, early_exit=False))
    assert list(one[0]) == list(many[0]) and np.array_equal(one[1], many[1])
    assert np.abs(one[2] - many[2]).max() <= 1e-5
    # The shard job writes the same maps (batch 3, one prefetch thread) as a readable cache shard.
    emb_path = build_run_embeddings(tiny_model_dir, cam_world["classes"], str(cam_world["tokens"]),
                                    tmp_path / "emb.safetensors")
    variant = Variant("top1", 0.6, [0, 99]).name
    out = tmp_path / variant
    root = image_root_for(config["datasets"]["cub_demo"])
    paths = [extract_shard(config, variant, k, cam_world["index"], root, emb_path,
                           out / f"shard-{k:05d}.npz", scores_path=cam_world["scores"]) for k in (0, 1)]
    shard = read_cam_shard(paths[1])
    assert shard.cams.dtype == np.float16 and shard.cams.shape == (3, 2, 64, 64)
    assert shard.class_ids.tolist() == [[TOP5[i][0], LABELS[i]] for i in (4, 5, 6)]
    assert np.abs(shard.cams.astype(np.float32) - one[2]).max() < 2e-3  # float16 storage
    assert write_cam_index(paths, out / "index.parquet", roles_for_mode("top1")) == 2 * len(LABELS)
    cache = CamCache(out)
    assert cache.image_ids == [f"{c:03d}.cls/img_{i}" for i, c in enumerate(LABELS)]
    names = write_overlays(out, cam_world["index"], cam_world["root"], out / "overlays", 2, 0.23, frame=128)
    assert len(names) == 2 and all((out / "overlays" / n).is_file() for n in names)
    assert names[0] in (out / "overlays" / "index.html").read_text()
    with pytest.raises(GenprompError, match="shard 2 starts at row 8"):
        shard_records(cam_world["index"], cam_world["root"], 2, 4)


def test_draw_overlay_marks_predicted_and_gt_boxes():
    cam = np.zeros((8, 8), np.float32)
    cam[2:6, 2:6] = 1.0
    rgb = np.full((100, 200, 3), 128, np.uint8)
    img, box = draw_overlay(rgb, cam, np.array([[0.0, 0.0, 100.0, 50.0]]), 0.5, 64)
    assert img.shape == (64, 64, 3)
    assert 10 <= box[0] <= 20 and 44 <= box[2] <= 54  # the bright square's bounding rect in the 64 frame
    assert tuple(img[0, 10]) == (255, 0, 0)  # GT box top edge (y = 0) in GT_COLOR
    assert tuple(img[int(box[1]), int(box[0]) + 2]) == (0, 255, 0)


def test_resolve_precision_per_device():
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("auto", cuda) == torch.float16  # the original's inference
    assert resolve_precision("auto", mps) == torch.float16  # any accelerator runs as the original's GPU did
    assert resolve_precision("fp32", cuda) == torch.float32
    assert resolve_precision("fp16", cuda) == torch.float16
    with pytest.raises(ConfigError, match="test.inference_precision is fp16 but this job runs on the CPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="use one of auto, fp32, fp16"):
        resolve_precision("bf16", cuda)


def test_inference_precision_from_config(repo_root, tiny_model_dir, cam_world, tmp_path):
    config = cam_config(repo_root, tiny_model_dir, cam_world, inference_precision="fp16")
    settings = settings_from_config(config, "gtk", 0.6, (0, 99), 5)
    assert settings.precision == "fp16"
    assert settings_from_config(cam_config(repo_root, tiny_model_dir, cam_world), "gtk", 0.6, (0, 99), 5).precision \
        == "fp32"  # the demo config pins fp32
    if torch.accelerator.is_available():
        pytest.skip("the refusal below needs a CPU-only machine")
    with pytest.raises(ConfigError, match="inference_precision is fp16"):
        extract_shard(config, "gtk_w0.60_t0-99", 0, cam_world["index"], image_root_for(config["datasets"]["cub_demo"]),
                      tmp_path / "none.safetensors",
                      tmp_path / "shard-00000.npz")
    assert not (tmp_path / "shard-00000.npz").exists()


def test_fp16_fast_path_follows_the_fp16_reference_loop(prepared):
    """fp16 VAE + UNet (float16 latents and probabilities, float32 noise and text embeddings), as the original
    ran on the GPU: the fast path stays within fp16 rounding of the reference loop in fp16, and is closer to
    it than the float32 maps are."""
    comps32, emb = prepared
    comps = dataclasses.replace(comps32, unet=copy.deepcopy(comps32.unet).half(),
                                vae=copy.deepcopy(comps32.vae).half())
    settings = _settings("top1", precision="fp16")
    images = [0, 1]  # top-1 == GT for image 0 (one prompt), not for image 1 (two)
    pixels = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ids = [f"im{i}" for i in images]
    latents, noise = encode_latents_and_noise(comps.vae, pixels.half(), ids, seed=0)
    assert latents.dtype == torch.float16 and noise.dtype == torch.float32
    labels, top5 = [LABELS[i] for i in images], [TOP5[i] for i in images]
    slots, pairs, slot_pair = plan_prompts("top1", labels, top5)
    cond = combine_embeddings(emb, settings.ratio, emb.rows(pairs[:, 1]))
    fast16 = compute_pair_cams(comps.unet, comps.scheduler, latents, noise, cond, pairs[:, 0], settings,
                               torch.float16)[torch.from_numpy(slot_pair)].numpy()
    ref16 = reference_batch_cams(comps, latents, noise, labels, top5, settings,
                                 [f"<cub-{c}>" for c in range(N_CLASSES)], ["bird"] * N_CLASSES, torch.float16)
    lat32, _ = encode_latents_and_noise(comps32.vae, pixels, ids, seed=0)
    fast32 = compute_pair_cams(comps32.unet, comps32.scheduler, lat32, noise, cond, pairs[:, 0],
                               _settings("top1"))[torch.from_numpy(slot_pair)].numpy()
    assert fast16.dtype == np.float32 and np.isfinite(fast16).all()
    err16, err32 = np.abs(fast16 - ref16).max(), np.abs(fast32 - ref16).max()
    assert err16 <= 2e-3, err16  # measured 4e-4
    assert err16 < err32, (err16, err32)  # measured 3e-3 for the float32 maps


def test_embeddings_under_keep_class_cover_kept_and_predicted_classes(tiny_model_dir, cam_world, tmp_path):
    """With keep_class, only kept classes need learned tokens; the embeddings cover the kept classes plus the
    classes the classifier predicts in the test images' top 5, and a predicted class without a token is
    localized with its meta word (f_r = f_d). A kept class without a token is refused by name."""
    from genpromp.cams.embeddings import needed_class_ids
    from genpromp.training.checkpoints import save_tokens

    classes = read_classes(cam_world["classes"])
    kept = [0, 2]
    classes["kept"] = classes["class_id"].isin(kept)
    classes.to_parquet(tmp_path / "classes.parquet")
    predicted = {int(c) for t in TOP5 for c in t}
    assert needed_class_ids(classes) == kept
    assert needed_class_ids(classes, cam_world["index"], cam_world["scores"]) == sorted(set(kept) | predicted)
    vec = cam_world["vectors"]
    save_tokens(tmp_path / "kept.safetensors", kept, [f"<cub-{c}>" for c in kept],
                torch.stack([vec[f"<cub-{c}>"] for c in kept]), ["bird"] * len(kept))
    emb = read_embeddings(build_run_embeddings(tiny_model_dir, tmp_path / "classes.parquet",
                                               str(tmp_path / "kept.safetensors"), tmp_path / "e.safetensors",
                                               test_index=cam_world["index"], scores=cam_world["scores"]))
    assert emb.class_ids.tolist() == sorted(set(kept) | predicted)
    for c in sorted(predicted - set(kept)):
        torch.testing.assert_close(emb.f_r[emb.rows([c])[0]], emb.f_d[emb.rows([c])[0]], atol=1e-6, rtol=0)
    for c in kept:  # learned tokens are used: f_r differs from the meta word's f_d
        assert not torch.allclose(emb.f_r[emb.rows([c])[0]], emb.f_d[emb.rows([c])[0]], atol=1e-4)
    only0 = tmp_path / "only0.safetensors"
    save_tokens(only0, [0], ["<cub-0>"], vec["<cub-0>"].reshape(1, -1), ["bird"])
    with pytest.raises(InputError, match=r"<cub-2>"):
        build_run_embeddings(tiny_model_dir, tmp_path / "classes.parquet", str(only0), tmp_path / "x.safetensors")


def test_shared_meta_words_are_encoded_once_and_equal_per_word_encoding(fresh_components, monkeypatch):
    """encode_unique (each distinct word once, as for 200 CUB classes that all say "bird") equals encoding
    every word's captions, and really encodes fewer captions."""
    from genpromp.cams import embeddings as emb_module

    comps = fresh_components
    words = ["bird", "dog", "bird", "bird", "cat", "dog"]
    straight = emb_module.encode_captions(comps.tokenizer, comps.text_encoder, words)
    seen = []
    real = emb_module.encode_captions
    monkeypatch.setattr(emb_module, "encode_captions", lambda tok, enc, ws, t=TEMPLATES: seen.append(list(ws))
                        or real(tok, enc, ws, t))
    shared = emb_module.encode_unique(comps.tokenizer, comps.text_encoder, words)
    assert seen == [["bird", "dog", "cat"]]
    assert shared.shape == straight.shape
    assert torch.allclose(shared, straight, rtol=0, atol=1e-6), (shared - straight).abs().max()
