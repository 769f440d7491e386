"""Textual-inversion export: files that diffusers' load_textual_inversion accepts, and offline loading
that leaves the process environment alone."""

import json
import os
import subprocess
import sys

import pytest
import torch

from cam_fixtures import tiny_model_dir  # noqa: F401  (fixture)
from genpromp.errors import InputError
from genpromp.textual_inversion import LISTING_NAME, export_textual_inversion, token_filename
from genpromp.training.checkpoints import save_tokens


def _pipeline(model_dir):
    from diffusers import StableDiffusionPipeline

    from genpromp.models.loading import load_components

    c = load_components(model_dir)
    return StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                   scheduler=c.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture
def token_table(tmp_path, tiny_model_dir):  # noqa: F811
    dim = json.loads((tiny_model_dir / "text_encoder" / "config.json").read_text())["hidden_size"]
    vectors = torch.randn(3, dim, generator=torch.Generator().manual_seed(3))
    tokens = ["<cub-0>", "<cub-1>", "<cub-2>"]
    path = save_tokens(tmp_path / "tokens.safetensors", [0, 1, 2], tokens, vectors, ["bird"] * 3)
    return path, dict(zip(tokens, vectors))


def test_exported_tokens_load_into_a_diffusers_pipeline(tmp_path, tiny_model_dir, token_table):  # noqa: F811
    path, vectors = token_table
    listing = export_textual_inversion(path, tmp_path / "ti")
    assert [e["token"] for e in listing] == list(vectors)
    assert [e["class_id"] for e in listing] == [0, 1, 2] and listing[0]["meta_token"] == "bird"
    assert json.loads((tmp_path / "ti" / LISTING_NAME).read_text()) == listing
    assert listing[1]["file"] == "cub-1.safetensors"

    pipe = _pipeline(tiny_model_dir)
    n_before = len(pipe.tokenizer)
    pipe.load_textual_inversion(str(tmp_path / "ti" / listing[1]["file"]))          # one file
    pipe.load_textual_inversion([str(tmp_path / "ti" / e["file"]) for e in (listing[0], listing[2])])  # several
    assert len(pipe.tokenizer) == n_before + 3
    weight = pipe.text_encoder.get_input_embeddings().weight
    for token, vec in vectors.items():
        ids = pipe.tokenizer(f"a photo of a {token}", add_special_tokens=False).input_ids
        tok_id = pipe.tokenizer.convert_tokens_to_ids(token)
        assert tok_id in ids                     # the prompt uses the new token as one id
        assert torch.equal(weight[tok_id].detach().float(), vec)


def test_export_subset_and_unknown_token(tmp_path, token_table):
    path, _ = token_table
    listing = export_textual_inversion(path, tmp_path / "one", only=["<cub-2>"])
    assert [e["token"] for e in listing] == ["<cub-2>"]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["cub-2.safetensors", LISTING_NAME]
    with pytest.raises(InputError, match="<cub-9>"):
        export_textual_inversion(path, tmp_path / "bad", only=["<cub-9>"])
    assert not (tmp_path / "bad").exists()


def test_token_filename():
    assert token_filename("<cub-3>") == "cub-3.safetensors"
    assert token_filename("<a b/c>") == "a_b_c.safetensors"


def test_loading_leaves_the_environment_alone_and_works_offline_without_it(tiny_model_dir):  # noqa: F811
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    code = ("import os, sys\n"
            "import genpromp.models.loading as L\n"
            "assert 'HF_HUB_OFFLINE' not in os.environ, 'import set HF_HUB_OFFLINE'\n"
            "c = L.load_components(sys.argv[1])\n"
            "assert 'HF_HUB_OFFLINE' not in os.environ, 'loading set HF_HUB_OFFLINE'\n"
            "print('ok', type(c.unet).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok UNet2DConditionModel" in proc.stdout
