"""The VAE latent cache: CAMs from cached latents equal CAMs from the images, the shard format, refusals
of a shard that does not fit, and the workflow reruns (a variant change reruns the UNet passes only)."""

import copy

import numpy as np
import pytest
import torch
import yaml

from cam_fixtures import (  # noqa: F401  (fixtures)
    LABELS, N_CLASSES, TOP5, cam_config, cam_world, load_tiny_components, tiny_model_dir,
)
from data_fixtures import write_cub_fixture
from genpromp import layout, plan
from genpromp.cams.cache import read_cam_shard
from genpromp.cams.embeddings import build_run_embeddings, compute_class_embeddings, install_concept_tokens, read_classes
from genpromp.cams.extract import (
    encode_latents_and_noise, extract_cams, extract_shard, image_noise, settings_from_config, shard_records,
    read_top5,
)
from genpromp.cams.latents import encode_records, encode_shard, read_latent_shard, write_latent_shard
from genpromp.data.indexing import image_root_for
from genpromp.errors import InputError
from genpromp.layout import Variant
from genpromp.prompts import token_index
from workflow_utils import REPO, planned_jobs, run_snakemake

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def prepared(tiny_model_dir, cam_world):
    comps = load_tiny_components(tiny_model_dir)
    classes = read_classes(cam_world["classes"])
    install_concept_tokens(comps.tokenizer, comps.text_encoder, classes, cam_world["vectors"])
    return comps, compute_class_embeddings(comps.tokenizer, comps.text_encoder, classes)


def _records(cam_world, shard=0, size=7):
    return shard_records(cam_world["index"], cam_world["root"], shard, size, read_top5(cam_world["scores"]))


def test_noise_without_the_vae_is_the_noise_of_the_encoding(prepared):
    comps, _ = prepared
    pixels = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(3)) * 2 - 1
    latents, noise = encode_latents_and_noise(comps.vae, pixels, ["a/1", "b/2"], seed=5)
    assert torch.equal(image_noise(5, ["a/1", "b/2"], latents.shape[1:]), noise)
    assert not torch.equal(image_noise(6, ["a/1", "b/2"], latents.shape[1:]), noise)


@pytest.mark.parametrize("mode,dtype", [("gtk", torch.float32), ("top1", torch.float32), ("top5", torch.float32),
                                        ("top1", torch.float16)])
def test_cams_from_cached_latents_equal_direct_cams(prepared, cam_world, repo_root, tiny_model_dir, mode, dtype):
    """Bit-exact: the cache stores the very tensor the direct path hands the UNet (same batches, same dtype),
    and the noise is regenerated from the same generator."""
    comps, emb = prepared
    if dtype == torch.float16:  # the cast would change the module's float32 weights for the other tests
        comps = copy.deepcopy(comps)
    config = cam_config(repo_root, tiny_model_dir, cam_world)
    settings = settings_from_config(config, mode, 0.6, (0, 99), token_index(comps.tokenizer))
    records = _records(cam_world)
    direct = extract_cams(comps, emb, records, settings, CPU, dtype)
    latents = encode_records(comps.vae, records, settings.resolution, settings.batch_size, settings.seed, CPU, dtype)
    assert latents.dtype == dtype and latents.shape == (7, 4, 16, 16)
    cached = extract_cams(comps, emb, records, settings, CPU, dtype, latents=latents)
    assert list(direct[0]) == list(cached[0]) and np.array_equal(direct[1], cached[1])
    assert np.array_equal(direct[2], cached[2])


def test_latent_shard_round_trips(tmp_path):
    lat = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(torch.float16)
    path = write_latent_shard(tmp_path / "s.safetensors", ["x/1", "x/2", "y/3"], lat, seed=7, resolution=64)
    back = read_latent_shard(path, ["x/1", "x/2", "y/3"], torch.float16, 7, 64)
    assert back.image_ids == ["x/1", "x/2", "y/3"] and (back.seed, back.resolution) == (7, 64)
    assert back.latents.dtype == torch.float16 and torch.equal(back.latents, lat)
    assert path.stat().st_size < lat.numel() * 2 + 1024  # the tensor at 2 bytes per value, plus a small header
    empty = write_latent_shard(tmp_path / "e.safetensors", [], torch.zeros(0, 4, 8, 8), seed=7, resolution=64)
    assert read_latent_shard(empty, []).latents.shape == (0, 4, 8, 8)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary file


@pytest.mark.parametrize("kwargs,message", [
    (dict(image_ids=["x/1", "y/3", "x/2"]), "image 1 is 'x/2' but the index has 'y/3'"),
    (dict(image_ids=["x/1", "x/2"]), "holds 3 images but the CAM shard needs 2"),
    (dict(image_ids=["x/1", "x/2", "y/3", "y/4"]), "holds 3 images but the CAM shard needs 4"),
    (dict(dtype=torch.float16), "latents are float32 but this job runs the UNet in float16"),
    (dict(seed=8), "encoded with seed 7, the config has seed 8"),
    (dict(resolution=128), "encoded at 64 px, the config has test.resolution 128"),
])
def test_mismatched_latent_shard_is_refused_naming_the_file(tmp_path, kwargs, message):
    path = write_latent_shard(tmp_path / "shard-00000.safetensors", ["x/1", "x/2", "y/3"], torch.zeros(3, 4, 8, 8),
                              seed=7, resolution=64)
    with pytest.raises(InputError, match=message) as err:
        read_latent_shard(path, **kwargs)
    assert str(path) in str(err.value) and "encode_latents" in str(err.value)


def test_unreadable_or_foreign_file_is_refused(tmp_path, cam_world):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(InputError, match="cannot read the latent shard") as err:
        read_latent_shard(garbage)
    assert str(garbage) in str(err.value)
    with pytest.raises(InputError, match="cannot read the latent shard"):
        read_latent_shard(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="not a latent shard"):
        read_latent_shard(cam_world["tokens"])  # a token table: safetensors, but not latents


def test_shard_jobs_with_and_without_the_cache_write_the_same_file(cam_world, repo_root, tiny_model_dir, tmp_path):
    """The workflow's two jobs (encode_shard, then extract_shard reading its output) == extract_shard on the
    images; a latent shard of another CAM shard is refused, naming it."""
    config = cam_config(repo_root, tiny_model_dir, cam_world, inference_precision="fp32")
    root = image_root_for(config["datasets"]["cub_demo"])
    emb = build_run_embeddings(tiny_model_dir, cam_world["classes"], str(cam_world["tokens"]), tmp_path / "e.safetensors")
    variant = Variant("top1", 0.6, (0, 99))
    lat = [encode_shard(plan.latent_view(config), k, cam_world["index"], root, tmp_path / f"lat-{k}.safetensors")
           for k in (0, 1)]
    assert read_latent_shard(lat[1]).image_ids == [r.image_id for r in _records(cam_world, 1, 4)]
    for k in (0, 1):
        kw = dict(scores_path=cam_world["scores"])
        direct = read_cam_shard(extract_shard(config, variant, k, cam_world["index"], root, emb,
                                              tmp_path / "direct" / f"shard-{k:05d}.npz", **kw))
        cached = read_cam_shard(extract_shard(config, variant, k, cam_world["index"], root, emb,
                                              tmp_path / "cached" / f"shard-{k:05d}.npz", latents_path=lat[k], **kw))
        assert direct.image_ids.tolist() == cached.image_ids.tolist()
        assert np.array_equal(direct.class_ids, cached.class_ids) and np.array_equal(direct.cams, cached.cams)
    with pytest.raises(InputError, match="holds 4 images but the CAM shard needs 3") as err:
        extract_shard(config, variant, 1, cam_world["index"], root, emb, tmp_path / "x" / "shard-00001.npz",
                      scores_path=cam_world["scores"], latents_path=lat[0])
    assert str(lat[0]) in str(err.value) and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- the workflow

def _latents_config(tmp_path, model_dir):
    """config/cub.yaml on the 3-image CUB fixture and the tiny model, gtk only, held-out calibration on."""
    config = yaml.safe_load((REPO / "config" / "cub.yaml").read_text())
    config["demo"] = {"enabled": False}
    config["pretrained"] = str(model_dir)
    config["compute"]["num_workers"] = 0
    config["datasets"]["cub"].update(root=str(write_cub_fixture(tmp_path / "CUB")), meta_word=None, classifier=None)
    config["test"].update(eval_modes=["gtk"], resolution=128, batch_size=2, inference_precision="fp32",
                          combine_ratios=[0.6])
    config["evaluation"]["calibration"] = {"images_per_class": 1}
    path = tmp_path / "latents.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_variant_changes_rerun_the_unet_passes_not_the_encoding(tmp_path, tiny_model_dir):
    """After encode_latents ran for both splits, a new combine ratio, new timesteps, another run or a new
    threshold plan no encode_latents job (CAM jobs of the new variants are planned); a new seed or image
    side replans every latent shard (its params changed)."""
    configfile = _latents_config(tmp_path, tiny_model_dir)
    work = tmp_path / "work"
    work.mkdir()
    latents = [layout.latent_shard("cub", 0, split) for split in ("test", "heldout")]
    run_snakemake(work, *latents, configfile=configfile)
    assert read_latent_shard(work / latents[0]).latents.shape == (2, 4, 16, 16)  # the 2 test images at 128 px
    assert len(read_latent_shard(work / latents[1]).image_ids) == 1  # one boxed training image of class 1
    unchanged = planned_jobs(run_snakemake(work, "-n", configfile=configfile).stdout)
    # one shard per cache: gtk_w0.60 of both runs, on the test and on the held-out split
    assert unchanged["extract_cams"] == 2 and unchanged["extract_heldout_cams"] == 2, unchanged
    assert "encode_latents" not in unchanged, unchanged
    for override in ["test={'combine_ratio': 0.4, 'combine_ratios': [0.2, 0.4]}", "test={'timesteps': [0, 50]}",
                     "runs={'extra': {'tokens': 'trained', 'unet': 'pretrained'}}",
                     "datasets={'cub': {'cam_thr': 0.4}}"]:
        proc = run_snakemake(work, "-n", "--config", override, configfile=configfile)
        jobs = planned_jobs(proc.stdout)
        assert "extract_cams" in jobs and "encode_latents" not in jobs, (override, proc.stdout[-3000:])
    ratio = planned_jobs(run_snakemake(work, "-n", "--config", "test={'combine_ratio': 0.4, 'combine_ratios': "
                                       "[0.2, 0.4]}", configfile=configfile).stdout)
    # gtk_w0.40 of both runs + the sweep's gtk_w0.20 (main run); held out: gtk_w0.40 of both runs
    assert ratio["extract_cams"] == 3 and ratio["extract_heldout_cams"] == 2, ratio
    for override in ["seed=1", "test={'resolution': 64}"]:
        proc = run_snakemake(work, *latents, "-n", "--config", override, configfile=configfile)
        assert planned_jobs(proc.stdout) == {"encode_latents": 2}, (override, proc.stdout[-3000:])
        assert "params have changed since last execution" in proc.stdout, proc.stdout[-3000:]
