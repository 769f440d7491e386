"""Model folders are complete diffusers pipeline folders; export-pipeline puts a finetuned UNet in one."""

import json

import pytest
import torch

from cam_fixtures import tiny_model_dir  # noqa: F401  (fixture)
from genpromp.errors import GenprompError
from genpromp.models.pipeline import MODEL_INDEX_NAME, export_pipeline

PROBE = "conv_in.weight"


def _load_pipeline(folder):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)


def test_tiny_model_folder_loads_as_a_pipeline(tiny_model_dir):  # noqa: F811
    index = json.loads((tiny_model_dir / MODEL_INDEX_NAME).read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    pipe = _load_pipeline(tiny_model_dir)
    assert pipe.safety_checker is None and type(pipe.unet).__name__ == "UNet2DConditionModel"


def test_export_pipeline_takes_the_finetuned_unet(tmp_path, tiny_model_dir):  # noqa: F811
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet", local_files_only=True)
    with torch.no_grad():
        unet.conv_in.weight.mul_(1.5)  # stands for stage 2's finetuning
    unet.save_pretrained(tmp_path / "finetuned_unet")
    out = export_pipeline(tiny_model_dir, tmp_path / "pipe", unet=tmp_path / "finetuned_unet")
    pipe = _load_pipeline(out)
    assert torch.equal(pipe.unet.state_dict()[PROBE], unet.state_dict()[PROBE])
    original = _load_pipeline(tiny_model_dir)
    assert not torch.equal(pipe.unet.state_dict()[PROBE], original.unet.state_dict()[PROBE])
    assert torch.equal(pipe.vae.state_dict()["encoder.conv_in.weight"],
                       original.vae.state_dict()["encoder.conv_in.weight"])
    assert json.loads((out / MODEL_INDEX_NAME).read_text()) == json.loads(
        (tiny_model_dir / MODEL_INDEX_NAME).read_text())


def test_export_pipeline_refuses_an_incomplete_source(tmp_path, tiny_model_dir):  # noqa: F811
    with pytest.raises(GenprompError, match=r"missing unet/"):
        export_pipeline(tiny_model_dir, tmp_path / "pipe", unet=tmp_path / "no_such_unet")
    (tmp_path / "empty_unet").mkdir()
    with pytest.raises(GenprompError, match="no config.json"):
        export_pipeline(tiny_model_dir, tmp_path / "pipe", unet=tmp_path / "empty_unet")
    assert not (tmp_path / "pipe").exists()


def test_export_pipeline_leaves_the_source_modes_alone(tmp_path, tiny_model_dir):  # noqa: F811
    """A hard link shares its source's mode: a source file with another mode is copied, not linked, so the
    umask applied to the new folder never changes the pretrained folder."""
    import os
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir, src)
    weights = next((src / "vae").glob("*.safetensors"))
    os.chmod(weights, 0o600)
    out = export_pipeline(src, tmp_path / "pipe")
    assert os.stat(weights).st_mode & 0o777 == 0o600
    copied = out / "vae" / weights.name
    assert os.stat(copied).st_ino != os.stat(weights).st_ino
    linked = out / "unet" / "config.json"
    assert os.stat(linked).st_ino == os.stat(src / "unet" / "config.json").st_ino  # same mode: linked
