"""Capture cross-attention probabilities through diffusers' attention-processor API.

Only the cross-attention (``attn2``) layers that feed the CAM get a capturing processor; every other
attention layer keeps its default fused processor. Layers are found by walking
``unet.down_blocks / mid_block / up_blocks`` (``attentions[*].transformer_blocks[*].attn2``), never by
matching class names. A layer belongs to a :class:`CamGroup` when its block type is one of the group's
``blocks`` and its query length is ``(latent_h / downsample) * (latent_w / downsample)``.

The capturing processor computes explicit probabilities ``softmax(Q Kᵀ · scale)`` over the text tokens
with the layer's own ``get_attention_scores`` (the classic diffusers arithmetic the original ran: one
``baddbmm`` with ``alpha = scale`` and a softmax in the layer's working dtype, upcast only where the layer's
``upcast_attention`` / ``upcast_softmax`` flags say so; both are off in SD-1.4). In float16 inference the
probabilities are therefore computed and rounded in float16 exactly like the original's
(docs/method.md § Inference precision). It keeps only the column of the token index, averaged over heads
in float32, and returns the same hidden states as the default processor. With ``early_exit=True`` the processor of the last needed layer raises a
private exception after recording, so :func:`run_unet_capture` stops the UNet there (the rest of the up
path, which is the most expensive part at high resolution, is never run).

Typical use::

    with capture_cross_attention(unet, token_index, groups, latent_hw=(64, 64)) as store:
        run_unet_capture(unet, noisy_latents, timesteps, cond)
        maps = store.group_maps()     # {group name: float32 [N, h, w]}
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import GenprompError

__all__ = [
    "ExplicitAttentionProcessor",
    "CamGroup", "CrossAttnLayer", "CaptureStore", "TokenCaptureProcessor",
    "groups_from_config", "find_cross_attention_layers", "select_group_layers",
    "capture_cross_attention", "run_unet_capture", "resize_group_map", "combine_group_maps",
]

BLOCK_TYPES = ("down", "mid", "up")


@dataclass(frozen=True)
class CamGroup:
    """A set of cross-attention layers averaged into one CAM component.

    name: label; blocks: subset of ("down", "mid", "up"); downsample: query resolution = latent / downsample.
    """

    name: str
    blocks: tuple
    downsample: int


@dataclass(frozen=True)
class CrossAttnLayer:
    """One ``attn2`` module: where it sits and at which fraction of the latent size it runs.

    block: "down" | "mid" | "up"; block_index / attention_index / transformer_index locate it;
    scale: its feature-map size is latent / scale (derived from the UNet's down/up samplers).
    order: position in execution order.
    """

    name: str
    module: torch.nn.Module = field(compare=False, repr=False)
    block: str
    block_index: int
    scale: int
    order: int


def groups_from_config(cam_groups):
    """``test.cam_groups`` (list of dicts name/blocks/downsample) → tuple of :class:`CamGroup`."""
    groups = []
    for g in cam_groups:
        bad = [b for b in g["blocks"] if b not in BLOCK_TYPES]
        if bad:
            raise GenprompError(f"config key test.cam_groups ({g['name']}): unknown block types {bad}; "
                                f"use {', '.join(BLOCK_TYPES)}")
        groups.append(CamGroup(str(g["name"]), tuple(g["blocks"]), int(g["downsample"])))
    return tuple(groups)


def _block_attn2(block):
    """``attn2`` modules of one UNet block in execution order (empty when it has no attention)."""
    out = []
    for a, transformer in enumerate(getattr(block, "attentions", None) or []):
        for t, tb in enumerate(getattr(transformer, "transformer_blocks", [])):
            attn2 = getattr(tb, "attn2", None)
            if attn2 is not None:
                out.append((a, t, attn2))
    return out


def find_cross_attention_layers(unet):
    """All cross-attention layers of a UNet2DConditionModel, in execution order.

    The scale of a layer is tracked from the blocks' samplers: each down block with ``downsamplers``
    halves the size for the next block, each up block with ``upsamplers`` doubles it.
    """
    layers, scale, order = [], 1, 0

    def add(kind, bi, block, scale):
        nonlocal order
        for a, t, attn2 in _block_attn2(block):
            layers.append(CrossAttnLayer(f"{kind}_blocks.{bi}.attentions.{a}.transformer_blocks.{t}.attn2"
                                         if kind != "mid" else f"mid_block.attentions.{a}.transformer_blocks.{t}.attn2",
                                         attn2, kind, bi, scale, order))
            order += 1

    for bi, block in enumerate(unet.down_blocks):
        add("down", bi, block, scale)
        if getattr(block, "downsamplers", None):
            scale *= 2
    if unet.mid_block is not None:
        add("mid", 0, unet.mid_block, scale)
    for bi, block in enumerate(unet.up_blocks):
        add("up", bi, block, scale)
        if getattr(block, "upsamplers", None):
            scale //= 2
    return layers


def select_group_layers(unet, groups):
    """``[(layer, group_index)]`` for every cross-attention layer that feeds a group, in execution order.

    Raises GenprompError when a group matches no layer (e.g. a downsample the UNet never reaches).
    """
    layers = find_cross_attention_layers(unet)
    chosen = []
    for layer in layers:
        for gi, g in enumerate(groups):
            if layer.block in g.blocks and layer.scale == g.downsample:
                chosen.append((layer, gi))
                break
    for gi, g in enumerate(groups):
        if not any(c[1] == gi for c in chosen):
            have = sorted({(lay.block, lay.scale) for lay in layers})
            raise GenprompError(f"CAM group {g.name!r} (blocks {list(g.blocks)}, downsample {g.downsample}) matches "
                                f"no cross-attention layer of this UNet; it has (block, downsample) {have}. "
                                "Fix test.cam_groups.")
    return chosen


class _StopUNet(Exception):
    """Raised by the last needed capture processor to end the UNet forward early (private)."""


class CaptureStore:
    """Per-group running sums of token-index maps.

    ``add(group, maps)`` takes [N, L] (already averaged over heads; summed in float32); ``group_maps()`` returns
    ``{name: float32 [N, h, w]}``, each the mean over the group's layers of what was added since the last
    ``reset()``. h, w = latent size / downsample.
    """

    def __init__(self, groups, latent_hw):
        self.groups = tuple(groups)
        self.latent_hw = tuple(latent_hw)
        self.reset()

    def reset(self):
        self._sums = [None] * len(self.groups)
        self._counts = [0] * len(self.groups)

    def group_hw(self, gi):
        ds = self.groups[gi].downsample
        return self.latent_hw[0] // ds, self.latent_hw[1] // ds

    def add(self, gi, maps):
        maps = maps.float()
        self._sums[gi] = maps if self._sums[gi] is None else self._sums[gi] + maps
        self._counts[gi] += 1

    def group_maps(self):
        out = {}
        for gi, g in enumerate(self.groups):
            if not self._counts[gi]:
                raise GenprompError(f"CAM group {g.name!r} captured no attention maps; the UNet forward did not "
                                    "reach its layers (is the capture installed?)")
            h, w = self.group_hw(gi)
            out[g.name] = (self._sums[gi] / self._counts[gi]).reshape(-1, h, w)
        return out


class ExplicitAttentionProcessor:
    """Base attention processor that computes ``softmax(Q Kᵀ·scale)`` explicitly with the layer's
    ``get_attention_scores`` (its working dtype and upcast flags) and hands the probabilities
    [B, heads, L, K] to :meth:`record` before finishing the layer as diffusers' classic processor does
    (``probs @ V`` in the working dtype, same output projection). Subclasses record."""

    def record(self, probs, length):
        raise NotImplementedError

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, length, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
        n_keys = key.shape[2]
        probs = attn.get_attention_scores(query.reshape(batch * attn.heads, length, head_dim),
                                          key.reshape(batch * attn.heads, n_keys, head_dim), attention_mask)
        probs = probs.view(batch, attn.heads, length, n_keys)  # [B, heads, L, 77], dtype of the query
        self.record(probs, length)
        hidden_states = torch.matmul(probs.to(value.dtype), value)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class TokenCaptureProcessor(ExplicitAttentionProcessor):
    """Attention processor that records ``softmax(Q Kᵀ·scale)[..., token_index]`` averaged over heads.

    Output hidden states equal the default processor's up to rounding (explicit softmax instead of the
    fused kernel). The head average is taken in float32 from the probabilities as computed (float16 ones
    in fp16 inference). ``stop`` = raise :class:`_StopUNet` after recording (the last layer the CAM needs).
    """

    def __init__(self, store, group_index, token_index, expected_len, stop=False):
        self.store = store
        self.group_index = group_index
        self.token_index = int(token_index)
        self.expected_len = int(expected_len)
        self.stop = stop

    def record(self, probs, length):
        if length != self.expected_len:
            raise GenprompError(f"capture: a layer expected {self.expected_len} queries but got {length}; the "
                                "latent size given to capture_cross_attention does not match the UNet input")
        self.store.add(self.group_index, probs[..., self.token_index].float().mean(dim=1))
        if self.stop:
            raise _StopUNet()


@contextlib.contextmanager
def capture_cross_attention(unet, token_index, groups, latent_hw, early_exit=False):
    """Install capturing processors on the layers feeding ``groups``; restore the originals on exit.

    unet: UNet2DConditionModel; token_index: position of the class word in the 77 tokens;
    groups: sequence of :class:`CamGroup`; latent_hw: (h, w) of the UNet input latents.
    early_exit: the last needed layer raises after recording; call the UNet via :func:`run_unet_capture`.
    Yields a :class:`CaptureStore`.
    """
    chosen = select_group_layers(unet, groups)
    store = CaptureStore(groups, latent_hw)
    last = max(layer.order for layer, _ in chosen)
    originals = [(layer.module, layer.module.processor) for layer, _ in chosen]
    try:
        for layer, gi in chosen:
            h, w = store.group_hw(gi)
            layer.module.set_processor(TokenCaptureProcessor(store, gi, token_index, h * w,
                                                             stop=early_exit and layer.order == last))
        yield store
    finally:
        for module, proc in originals:
            module.set_processor(proc)


def run_unet_capture(unet, sample, timesteps, encoder_hidden_states):
    """Run the UNet for its captured maps; returns the noise prediction, or None if it stopped early.

    sample: [N, 4, h, w]; timesteps: int64 [N]; encoder_hidden_states: [N, 77, D].
    """
    try:
        return unet(sample, timesteps, encoder_hidden_states, return_dict=False)[0]
    except _StopUNet:
        return None


def resize_group_map(maps, size):
    """Bicubic resize float32 [N, h, w] → [N, size, size] (half-pixel centres, as cv2.INTER_CUBIC)."""
    return F.interpolate(maps[:, None], size=(size, size), mode="bicubic", align_corners=False)[:, 0]


def combine_group_maps(group_maps, size):
    """CAMs from per-group maps: resize each group bicubically to ``size``, average the groups, divide by max.

    group_maps: {name: float32 [N, h_g, w_g]} → float32 [N, size, size], each map's maximum 1 (attention
    probabilities are positive, so the maximum is too; bicubic overshoot can leave tiny negatives, which the
    caller clamps to 0 for the cache).
    """
    stacked = torch.stack([resize_group_map(m.float(), size) for m in group_maps.values()])
    cams = stacked.mean(dim=0)
    peak = cams.flatten(1).amax(dim=1).clamp_min(torch.finfo(cams.dtype).tiny)
    return cams / peak[:, None, None]
