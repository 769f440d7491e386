"""The tiny demo model keeps SD-1.4's topology and loads through the SD-1.4 loading path."""

import json

import pytest
import torch

from genpromp.errors import GenprompError
from genpromp.models.loading import load_components
from genpromp.demo.tiny import SD14_BLOCK_TYPES, create_tiny_components

from model_fixtures import TINY_SHAPES

SMALL = TINY_SHAPES["small"]


@pytest.fixture(scope="module")
def tiny_folder(tiny_models):
    return tiny_models("small")


def test_folder_loads_like_sd14(tiny_folder):
    comps = load_components(tiny_folder)
    assert len(comps.tokenizer) == 49408
    assert comps.tokenizer.bos_token_id == 49406 and comps.tokenizer.eos_token_id == 49407
    assert comps.text_encoder.config.vocab_size == 49408
    assert comps.text_encoder.config.max_position_embeddings == 77
    assert comps.scaling_factor == pytest.approx(0.18215)
    sched = comps.scheduler.config
    assert (sched.beta_schedule, sched.beta_start, sched.beta_end, sched.num_train_timesteps) == \
        ("scaled_linear", 0.00085, 0.012, 1000)


def test_unet_topology_matches_sd14(tiny_folder):
    config = json.loads((tiny_folder / "unet" / "config.json").read_text())
    assert tuple(config["down_block_types"]) == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert config["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    assert tuple(config["up_block_types"]) == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert tuple(config["down_block_types"]) == SD14_BLOCK_TYPES["down_block_types"]
    assert config["in_channels"] == config["out_channels"] == 4
    assert config["layers_per_block"] == 2
    assert config["cross_attention_dim"] == SMALL["text_hidden_size"]
    unet = load_components(tiny_folder).unet
    names = [type(b).__name__ for b in unet.down_blocks] + [type(unet.mid_block).__name__] + \
        [type(b).__name__ for b in unet.up_blocks]
    assert names == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D", "UNetMidBlock2DCrossAttn", "UpBlock2D"] + \
        ["CrossAttnUpBlock2D"] * 3


def test_vae_downsamples_8x_to_4_channels(tiny_folder):
    comps = load_components(tiny_folder)
    with torch.no_grad():
        post = comps.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist
        out = comps.unet(post.mean, torch.tensor([10]), torch.zeros(1, 77, SMALL["text_hidden_size"])).sample
    assert post.mean.shape == (1, 4, 8, 8)
    assert out.shape == (1, 4, 8, 8)


def test_same_seed_same_weights_other_seed_differs(tokenizer_dir):
    a = create_tiny_components(tokenizer_dir, seed=3, **SMALL)[3].state_dict()
    b = create_tiny_components(tokenizer_dir, seed=3, **SMALL)[3].state_dict()
    c = create_tiny_components(tokenizer_dir, seed=4, **SMALL)[3].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_mismatched_text_width_is_an_error(tokenizer_dir):
    with pytest.raises(GenprompError, match="cross_attention_dim"):
        create_tiny_components(tokenizer_dir, **{**SMALL, "cross_attention_dim": 32})
