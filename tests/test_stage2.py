"""Stage 2: UNet finetune writes a loadable diffusers folder; checkpoints load; resume == uninterrupted."""

import json

import torch
from safetensors.torch import load_file

from train_fixtures import tiny_dataset, tiny_model  # noqa: F401
from genpromp.models.loading import load_components, load_unet
from genpromp.training import stage2
from genpromp.training.checkpoints import save_tokens


def _tokens(tmp_path, model):
    dim = load_components(model).text_encoder.get_input_embeddings().weight.shape[1]
    gen = torch.Generator().manual_seed(0)
    return save_tokens(tmp_path / "tokens.safetensors", [0, 1, 2], [f"<cub-{i}>" for i in range(3)],
                       torch.randn(3, dim, generator=gen) * 0.02, ["bird"] * 3)


def test_train_unet_checkpoint_resume_and_output(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    tokens = _tokens(tmp_path, tiny_model)
    s = stage2.Stage2Settings(resolution=64, batch_size=2, gradient_accumulation_steps=2, max_train_steps=4,
                              learning_rate=1e-3, save_steps=2, seed=1)
    out = tmp_path / "a" / "unet"
    # first run: stop right after the step-2 checkpoint is written (simulated kill)
    real = stage2._save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(folder, unet, optimizer, state):
        real(folder, unet, optimizer, state)
        raise Killed

    monkeypatch.setattr(stage2, "_save_checkpoint", save_then_die)
    try:
        stage2.train_unet(tiny_model, *tiny_dataset, tokens, out, s, progress=False)
    except Killed:
        pass
    ckpt = out.with_name("unet.partial") / "checkpoint"
    assert not out.exists()
    state = json.loads((ckpt / "state.json").read_text())
    assert state["opt_steps"] == 2
    assert type(load_unet(ckpt / "unet")).__name__ == "UNet2DConditionModel"   # checkpoint loadable
    monkeypatch.setattr(stage2, "_save_checkpoint", real)
    stage2.train_unet(tiny_model, *tiny_dataset, tokens, out, s, tmp_path / "a" / "unet.log.csv", progress=False)
    assert (out / "config.json").is_file() and not ckpt.exists()
    straight = stage2.train_unet(tiny_model, *tiny_dataset, tokens, tmp_path / "b" / "unet", s, progress=False)
    wa = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    wb = load_file(str(straight / "diffusion_pytorch_model.safetensors"))
    w0 = load_components(tiny_model).unet.state_dict()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6
    assert max((wa[k] - w0[k]).abs().max().item() for k in wa) > 1e-4, "UNet did not change"
    unet = load_unet(out)
    assert unet.config.cross_attention_dim == load_unet(f"{tiny_model}/unet").config.cross_attention_dim
    log = (tmp_path / "a" / "unet.log.csv").read_text().splitlines()
    assert log[0].startswith("micro_step") and int(log[-1].split(",")[2]) == 4
