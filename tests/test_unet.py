"""Stage 2: UNet finetune writes a loadable diffusers folder; checkpoints load; resume == uninterrupted."""

import json

import torch
from safetensors.torch import load_file

import pytest

from train_fixtures import kept_dataset, tiny_dataset, tiny_model  # noqa: F401
from genpromp.errors import ConfigError
from genpromp.models.loading import load_components, load_unet
from genpromp.training import unet as unet_stage
from genpromp.training.checkpoints import save_tokens


def _tokens(tmp_path, model):
    dim = load_components(model).text_encoder.get_input_embeddings().weight.shape[1]
    gen = torch.Generator().manual_seed(0)
    return save_tokens(tmp_path / "tokens.safetensors", [0, 1, 2], [f"<cub-{i}>" for i in range(3)],
                       torch.randn(3, dim, generator=gen) * 0.02, ["bird"] * 3)


def test_train_unet_checkpoint_resume_and_output(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    tokens = _tokens(tmp_path, tiny_model)
    s = unet_stage.Stage2Settings(resolution=64, batch_size=2, gradient_accumulation_steps=2, max_train_steps=4,
                              learning_rate=1e-3, save_steps=2, seed=1)
    out = tmp_path / "a" / "unet"
    # first run: stop right after the step-2 checkpoint is written (simulated kill)
    real = unet_stage._save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(folder, unet, optimizer, state):
        real(folder, unet, optimizer, state)
        raise Killed

    monkeypatch.setattr(unet_stage, "_save_checkpoint", save_then_die)
    try:
        unet_stage.train_unet(tiny_model, *tiny_dataset, tokens, out, s, progress=False)
    except Killed:
        pass
    ckpt = out.with_name("unet.partial") / "checkpoint"
    assert not out.exists()
    state = json.loads((ckpt / "state.json").read_text())
    assert state["opt_steps"] == 2
    assert type(load_unet(ckpt / "unet")).__name__ == "UNet2DConditionModel"   # checkpoint loadable
    monkeypatch.setattr(unet_stage, "_save_checkpoint", real)
    unet_stage.train_unet(tiny_model, *tiny_dataset, tokens, out, s, tmp_path / "a" / "unet.log.csv", progress=False)
    assert (out / "config.json").is_file() and not ckpt.exists()
    straight = unet_stage.train_unet(tiny_model, *tiny_dataset, tokens, tmp_path / "b" / "unet", s, progress=False)
    wa = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    wb = load_file(str(straight / "diffusion_pytorch_model.safetensors"))
    w0 = load_components(tiny_model).unet.state_dict()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6
    assert max((wa[k] - w0[k]).abs().max().item() for k in wa) > 1e-4, "UNet did not change"
    unet = load_unet(out)
    assert unet.config.cross_attention_dim == load_unet(f"{tiny_model}/unet").config.cross_attention_dim
    log = (tmp_path / "a" / "unet.log.csv").read_text().splitlines()
    assert log[0].startswith("micro_step") and int(log[-1].split(",")[2]) == 4


def _reference_last_save(max_steps, save_steps, grad_accum=1):
    """The reference's stage-2 loop, literally: updates done at its last ``unet_s{g}`` save (None: never)."""
    g, last = 0, None
    for micro in range(max_steps * grad_accum):
        if (micro + 1) % grad_accum == 0:
            g += 1
        if g >= max_steps:
            break
        elif (g + 1) % save_steps == 0 and (micro + 1) % grad_accum == 0:
            last = g
    return last


def test_last_save_step_rule():
    assert unet_stage.last_save_step(250, 40) == 239 and unet_stage.last_save_step(600, 100) == 599
    for max_steps in range(1, 30):
        for save in range(1, 12):
            for accum in (1, 3):
                assert unet_stage.last_save_step(max_steps, save) == _reference_last_save(max_steps, save, accum)
    with pytest.raises(ConfigError, match="train_unet.final_unet.*never saves"):
        unet_stage.Stage2Settings(max_train_steps=3, save_steps=4, final_unet="last_save").trained_steps()


def test_last_save_returns_the_last_saved_update(tiny_model, tiny_dataset, tmp_path):
    """max 5 steps, save every 2: the reference's last save is after update 3 — not the final update 5."""
    tokens = _tokens(tmp_path, tiny_model)
    base = dict(resolution=64, batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-3, save_steps=2, seed=1)
    last = unet_stage.train_unet(tiny_model, *tiny_dataset, tokens, tmp_path / "last" / "unet",
                             unet_stage.Stage2Settings(max_train_steps=5, final_unet="last_save", **base), progress=False)
    weights = {}
    for n in (3, 5):
        out = unet_stage.train_unet(tiny_model, *tiny_dataset, tokens, tmp_path / f"s{n}" / "unet",
                                unet_stage.Stage2Settings(max_train_steps=n, **base), progress=False)
        weights[n] = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    got = load_file(str(last / "diffusion_pytorch_model.safetensors"))
    assert max((got[k] - weights[3][k]).abs().max().item() for k in got) <= 1e-6
    assert max((got[k] - weights[5][k]).abs().max().item() for k in got) > 1e-5


def test_keep_class_trains_kept_classes_with_their_tokens_only(tiny_model, kept_dataset, tmp_path):
    """6 classes in the table, kept {0, 2}: a token table of <cub-0>, <cub-2> is enough; a missing kept one is named."""
    from genpromp.errors import InputError

    dim = load_components(tiny_model).text_encoder.get_input_embeddings().weight.shape[1]
    tokens = save_tokens(tmp_path / "kept.safetensors", [0, 2], ["<cub-0>", "<cub-2>"], torch.zeros(2, dim), ["bird"] * 2)
    s = unet_stage.Stage2Settings(resolution=64, batch_size=2, gradient_accumulation_steps=1, max_train_steps=1,
                              save_steps=1, seed=1)
    out = unet_stage.train_unet(tiny_model, *kept_dataset, tokens, tmp_path / "unet", s, progress=False)
    assert (out / "config.json").is_file()
    only0 = save_tokens(tmp_path / "only0.safetensors", [0], ["<cub-0>"], torch.zeros(1, dim), ["bird"])
    with pytest.raises(InputError, match="<cub-2>"):
        unet_stage.train_unet(tiny_model, *kept_dataset, only0, tmp_path / "unet2", s, progress=False)


def _one_step(unet, checkpointing, gen_seed=0, lr=1e-3):
    """One stage-2 update of ``unet`` (forward, MSE to the noise, backward, AdamW step) on fixed random inputs;
    returns (loss, {name: grad}) with the weights updated in place."""
    unet.train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    gen = torch.Generator().manual_seed(gen_seed)
    side = unet.config.sample_size
    x = torch.randn(2, unet.config.in_channels, side, side, generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    cond = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
    t = torch.tensor([10, 700])
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    pred = unet(x, t, cond).sample
    loss = torch.nn.functional.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in unet.named_parameters()}
    opt.step()
    return loss.item(), grads


def test_gradient_checkpointing_changes_memory_not_numbers(tiny_model, monkeypatch):
    """The same update with and without recomputation. Tolerance: the recomputed forward runs the very same
    fp32 kernels on the same inputs, so loss, gradients and weights are expected bit-identical on the CPU;
    1e-7 (relative to the gradient scale) leaves room only for a changed summation order of the gradients
    of a tensor used by several blocks (the time embedding), never for a numerical change."""
    import copy

    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    base = load_unet(f"{tiny_model}/unet")
    plain, ckpt = copy.deepcopy(base), copy.deepcopy(base)
    loss_a, grads_a = _one_step(plain, False)
    assert not calls
    loss_b, grads_b = _one_step(ckpt, True)
    assert calls, "gradient checkpointing was not used"
    assert loss_a == loss_b
    scale = max(g.abs().max().item() for g in grads_a.values())
    assert max((grads_a[n] - grads_b[n]).abs().max().item() for n in grads_a) <= 1e-7 * scale
    wa, wb, w0 = plain.state_dict(), ckpt.state_dict(), base.state_dict()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-7
    assert max((wa[k] - w0[k]).abs().max().item() for k in wa) > 1e-4, "the step changed nothing"


def test_gradient_checkpointing_setting_reaches_the_unet(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    """train_unet.gradient_checkpointing: on = checkpointed blocks and the same UNet as off."""
    tokens = _tokens(tmp_path, tiny_model)
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    weights = {}
    for flag in (False, True):
        calls.clear()
        s = unet_stage.Stage2Settings(resolution=64, batch_size=2, gradient_accumulation_steps=1, max_train_steps=1,
                                      learning_rate=1e-3, save_steps=1, seed=1, gradient_checkpointing=flag)
        out = unet_stage.train_unet(tiny_model, *tiny_dataset, tokens, tmp_path / str(flag) / "unet", s,
                                    progress=False)
        assert bool(calls) == flag
        weights[flag] = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert max((weights[True][k] - weights[False][k]).abs().max().item() for k in weights[True]) <= 1e-7
    assert unet_stage.Stage2Settings.from_config(
        {"train_unet": {"gradient_checkpointing": True}, "seed": 0}).gradient_checkpointing
