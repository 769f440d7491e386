"""Cross-attention capture on the tiny SD model: layer discovery, unchanged outputs, early exit."""

import cv2
import numpy as np
import pytest
import torch

from cam_fixtures import fresh_components, tiny_model_dir  # noqa: F401  (fixtures)
from genpromp.cams.capture import (
    CamGroup, ExplicitAttentionProcessor, TokenCaptureProcessor, capture_cross_attention, combine_group_maps, find_cross_attention_layers,
    resize_group_map, run_unet_capture, select_group_layers,
)
from genpromp.errors import GenprompError

GROUPS = (CamGroup("mid", ("mid",), 8), CamGroup("down", ("down",), 4), CamGroup("up", ("up",), 4))
TOKEN = 5


def _inputs(comps, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 16, 16, generator=g)
    dim = comps.unet.config.cross_attention_dim
    cond = torch.randn(n, 77, dim, generator=g)
    return x, torch.tensor([0, 99][:n] + [50] * max(0, n - 2)), cond


def test_layers_found_by_walking_blocks(fresh_components):
    layers = find_cross_attention_layers(fresh_components.unet)
    # SD-1.4 topology: 3 cross-attn down blocks × 2, mid × 1, 3 cross-attn up blocks × 3.
    assert [(lay.block, lay.scale) for lay in layers] == (
        [("down", 1)] * 2 + [("down", 2)] * 2 + [("down", 4)] * 2 + [("mid", 8)]
        + [("up", 4)] * 3 + [("up", 2)] * 3 + [("up", 1)] * 3)
    chosen = select_group_layers(fresh_components.unet, GROUPS)
    assert [(lay.name, GROUPS[g].name) for lay, g in chosen] == [
        ("down_blocks.2.attentions.0.transformer_blocks.0.attn2", "down"),
        ("down_blocks.2.attentions.1.transformer_blocks.0.attn2", "down"),
        ("mid_block.attentions.0.transformer_blocks.0.attn2", "mid"),
        ("up_blocks.1.attentions.0.transformer_blocks.0.attn2", "up"),
        ("up_blocks.1.attentions.1.transformer_blocks.0.attn2", "up"),
        ("up_blocks.1.attentions.2.transformer_blocks.0.attn2", "up"),
    ]


def test_group_matching_nothing_is_an_error(fresh_components):
    with pytest.raises(GenprompError, match="matches no cross-attention layer"):
        select_group_layers(fresh_components.unet, (CamGroup("x", ("mid",), 4),))


def test_capture_keeps_unet_output_and_restores_processors(fresh_components):
    unet = fresh_components.unet
    x, t, cond = _inputs(fresh_components)
    before = {name: type(m.processor) for name, m in unet.named_modules() if hasattr(m, "processor")}
    with torch.no_grad():
        expected = unet(x, t, cond).sample
        with capture_cross_attention(unet, TOKEN, GROUPS, (16, 16)) as store:
            n_capture = sum(isinstance(m.processor, TokenCaptureProcessor)
                            for m in unet.modules() if hasattr(m, "processor"))
            got = unet(x, t, cond).sample
            maps = store.group_maps()
    assert n_capture == 6  # only the layers feeding a group; all others keep the fused default
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert {k: tuple(v.shape) for k, v in maps.items()} == {"mid": (2, 2, 2), "down": (2, 4, 4), "up": (2, 4, 4)}
    for m in maps.values():  # probabilities of one token: in (0, 1), not all equal
        assert torch.isfinite(m).all() and (m > 0).all() and (m < 1).all() and m.std() > 0
    after = {name: type(m.processor) for name, m in unet.named_modules() if hasattr(m, "processor")}
    assert after == before


def test_processors_restored_after_an_exception(fresh_components):
    unet = fresh_components.unet
    with pytest.raises(RuntimeError, match="boom"):
        with capture_cross_attention(unet, TOKEN, GROUPS, (16, 16)):
            raise RuntimeError("boom")
    assert not any(isinstance(m.processor, TokenCaptureProcessor) for m in unet.modules() if hasattr(m, "processor"))


def _captured_mid_map(unet, attn, x, t, cond):
    """The captured mid-group map of one UNet pass, and {"h": the hidden states ``attn`` received}."""
    seen = {}

    def keep_input(module, args, kwargs):
        seen["h"] = args[0] if args else kwargs["hidden_states"]

    hook = attn.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.no_grad(), capture_cross_attention(unet, TOKEN, GROUPS, (16, 16)) as store:
            unet(x, t, cond)
            got = store.group_maps()["mid"]
    finally:
        hook.remove()
    return got, seen


def test_captured_maps_are_explicit_softmax(fresh_components):
    """The stored mid map equals softmax(QKᵀ·scale)[..., token] averaged over heads, recomputed by hand."""
    unet = fresh_components.unet
    x, t, cond = _inputs(fresh_components)
    attn = unet.mid_block.attentions[0].transformer_blocks[0].attn2
    got, seen = _captured_mid_map(unet, attn, x, t, cond)
    h = seen["h"]
    q = attn.to_q(h).view(2, -1, attn.heads, h.shape[-1] // attn.heads).transpose(1, 2)
    k = attn.to_k(cond).view(2, -1, attn.heads, q.shape[-1]).transpose(1, 2)
    probs = ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1)
    torch.testing.assert_close(got, probs[..., TOKEN].mean(1).reshape(2, 2, 2).detach(), atol=1e-6, rtol=1e-5)


def test_early_exit_gives_the_same_maps(fresh_components):
    unet = fresh_components.unet
    x, t, cond = _inputs(fresh_components, n=3)
    with torch.no_grad():
        with capture_cross_attention(unet, TOKEN, GROUPS, (16, 16)) as store:
            assert run_unet_capture(unet, x, t, cond) is not None
            full = store.group_maps()
        with capture_cross_attention(unet, TOKEN, GROUPS, (16, 16), early_exit=True) as store:
            assert run_unet_capture(unet, x, t, cond) is None  # stopped after up_blocks.1
            early = store.group_maps()
    for name in full:
        torch.testing.assert_close(early[name], full[name], atol=0, rtol=0)


def test_torch_bicubic_equals_cv2_inter_cubic():
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = resize_group_map(maps, 64).numpy()
    theirs = np.stack([cv2.resize(m, (64, 64), interpolation=cv2.INTER_CUBIC) for m in maps.numpy()])
    assert np.abs(ours - theirs).max() < 1e-5


def test_combine_group_maps_hand_computed():
    a = torch.full((1, 2, 2), 0.2)
    b = torch.full((1, 4, 4), 0.6)
    cams = combine_group_maps({"a": a, "b": b}, 8)
    assert cams.shape == (1, 8, 8)
    torch.testing.assert_close(cams, torch.ones(1, 8, 8))  # (0.2 + 0.6) / 2 = 0.4 everywhere, / max
    c = torch.zeros(1, 2, 2)
    c[0, 0, 0] = 1.0
    cams = combine_group_maps({"c": c, "z": torch.zeros(1, 2, 2)}, 2)
    assert cams[0, 0, 0].item() == pytest.approx(1.0) and cams[0, 1, 1].item() == pytest.approx(0.0, abs=1e-6)


def test_fp16_capture_equals_the_original_fp16_softmax(fresh_components):
    """In float16 the captured map is the head mean of float16 probabilities computed as the original's
    attention did (fp16 baddbmm with alpha = scale, fp16 softmax, no upcast in SD-1.4), not of float32 ones."""
    unet = fresh_components.unet.half()
    x, t, cond = _inputs(fresh_components)
    x, cond = x.half(), cond.half()
    attn = unet.mid_block.attentions[0].transformer_blocks[0].attn2
    assert not attn.upcast_attention and not attn.upcast_softmax  # as SD-1.4's UNet config
    got, seen = _captured_mid_map(unet, attn, x, t, cond)
    with torch.no_grad():
        heads, n = attn.heads, 2
        q = attn.to_q(seen["h"])
        k = attn.to_k(cond)
        d = q.shape[-1] // heads
        q = q.view(n, -1, heads, d).transpose(1, 2).reshape(n * heads, -1, d)
        k = k.view(n, -1, heads, d).transpose(1, 2).reshape(n * heads, -1, d)
        scores = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=torch.float16), q,
                               k.transpose(-1, -2), beta=0, alpha=attn.scale)
        probs16 = scores.softmax(-1)
        probs32 = scores.float().softmax(-1)
    assert scores.dtype == probs16.dtype == torch.float16
    expected = probs16[..., TOKEN].view(n, heads, -1).float().mean(1).reshape(n, 2, 2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    upcast = probs32[..., TOKEN].view(n, heads, -1).mean(1).reshape(n, 2, 2)
    assert 0 < (got - upcast).abs().max() < 1e-3  # fp16 rounding of the probabilities is kept


class _DtypeRecorder(ExplicitAttentionProcessor):
    def __init__(self, seen):
        self.seen = seen

    def record(self, probs, length):
        self.seen.append(probs.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_explicit_processor_keeps_the_working_dtype(fresh_components, dtype):
    unet = fresh_components.unet.to(dtype)
    x, t, cond = _inputs(fresh_components)
    attn = unet.mid_block.attentions[0].transformer_blocks[0].attn2
    seen, default = [], attn.processor
    with torch.no_grad():
        expected = unet(x.to(dtype), t, cond.to(dtype)).sample
        attn.set_processor(_DtypeRecorder(seen))
        try:
            got = unet(x.to(dtype), t, cond.to(dtype)).sample
        finally:
            attn.set_processor(default)
    assert seen == [dtype]
    assert got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), expected.float(), atol=tol, rtol=tol)
