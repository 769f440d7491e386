"""Straightforward reference CAM extraction, a faithful re-implementation of the original loop.

Used by the equivalence tests and the benchmark baseline. Like the original ``AttentionStore``: a
store-everything processor on every attention layer (self- and cross-attention) keeps the full
probability tensors [B·heads, L, keys] of every layer, the full UNet runs once per timestep, the text
encoder runs on every template's captions for every batch and role, and ``diffusion_cam`` aggregates the
maps (per group: concatenate the layers' heads, take the token column, mean, ``cv2.resize`` INTER_CUBIC,
average the groups, divide by the maximum). Probabilities come from the layer's ``get_attention_scores``
and are stored and summed in the UNet's dtype, as in the original (float16 tensors in fp16 inference). The
one fix over the original: attention is hooked through the processor API instead of the class name
``CrossAttention``. Not optimised on purpose.
"""

from __future__ import annotations

import contextlib

import cv2
import numpy as np
import torch

from ..prompts import TEMPLATES, tokenize
from .cache import roles_for_mode

__all__ = ["StoreAllProcessor", "AttentionStore", "store_all_attention", "reference_batch_cams"]


class AttentionStore:
    """Full attention probabilities by ``"{place}_{cross|self}"``, summed over UNet calls (as the original)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.steps = 0
        self.step_store = {f"{p}_{k}": [] for p in ("down", "mid", "up") for k in ("cross", "self")}
        self.attention_store = {}

    def add(self, key, probs):
        self.step_store[key].append(probs)

    def end_step(self):
        """Fold the current UNet call into the running sums."""
        if not self.attention_store:
            self.attention_store = self.step_store
        else:
            for key, items in self.attention_store.items():
                for i in range(len(items)):
                    items[i] = items[i] + self.step_store[key][i]
        self.step_store = {k: [] for k in self.step_store}
        self.steps += 1

    def average(self):
        return {k: [item / self.steps for item in items] for k, items in self.attention_store.items()}


class StoreAllProcessor:
    """Classic attention (baddbmm + softmax + bmm) that stores every probability tensor."""

    def __init__(self, store, place):
        self.store, self.place = store, place

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.store.add(f"{self.place}_{'cross' if is_cross else 'self'}", probs)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _all_attention(unet):
    """(place, Attention module) for attn1 and attn2 of every transformer block, walking the blocks."""
    blocks = [("down", b) for b in unet.down_blocks] + [("mid", unet.mid_block)] + [("up", b) for b in unet.up_blocks]
    for place, block in blocks:
        for transformer in getattr(block, "attentions", None) or []:
            for tb in transformer.transformer_blocks:
                for name in ("attn1", "attn2"):
                    if getattr(tb, name, None) is not None:
                        yield place, getattr(tb, name)


@contextlib.contextmanager
def store_all_attention(unet):
    """Install :class:`StoreAllProcessor` on every attention layer; yield the store; restore on exit."""
    store = AttentionStore()
    mods = list(_all_attention(unet))
    originals = [(m, m.processor) for _, m in mods]
    try:
        for place, m in mods:
            m.set_processor(StoreAllProcessor(store, place))
        yield store
    finally:
        for m, proc in originals:
            m.set_processor(proc)


def _cross_attention_map(maps, res, places, bz, idx, out_res):
    """Original ``cross_attention_map``: [bz, out_res, out_res] float32 (numpy)."""
    out = [item.reshape(bz, -1, res, res, item.shape[-1])
           for place in places for item in maps[f"{place}_cross"] if item.shape[1] == res * res]
    att = torch.cat(out, dim=1)[..., idx]
    att = (att.sum(1) / att.shape[1]).float().cpu().numpy()
    return np.stack([cv2.resize(a, (out_res, out_res), interpolation=cv2.INTER_CUBIC) for a in att])


def _diffusion_cam(store, groups, latent_hw, bz, idx, out_res):
    maps = store.average()
    parts = [_cross_attention_map(maps, latent_hw[0] // g.downsample, g.blocks, bz, idx, out_res) for g in groups]
    cams = sum(parts) / len(parts)
    return cams / cams.max(axis=(1, 2))[:, None, None]


@torch.no_grad()
def _text_condition(tokenizer, text_encoder, words, ratio, concept_words):
    """Original per-batch conditioning: text encoder per template, mean, combine. [B, 77, D]."""
    device = next(text_encoder.parameters()).device

    def mean_states(ws):
        states = [text_encoder(tokenize(tokenizer, [t.format(w) for w in ws]).to(device))[0] for t in TEMPLATES]
        return sum(states) / len(TEMPLATES)

    return ratio * mean_states(concept_words) + (1 - ratio) * mean_states(words)


@torch.no_grad()
def reference_batch_cams(comps, latents, noise, labels, top5, settings, concept_tokens, meta_words,
                         dtype=torch.float32):
    """CAMs of one batch, original loop: float32 numpy [B, K, S, S] in the mode's slot order.

    comps: SDComponents whose tokenizer / text encoder already hold the concept tokens;
    latents: [B, 4, h, w] in the VAE's dtype, noise: float32 [B, 4, h, w] (both shared with the fast path);
    labels: [B]; top5: [B, 5] or None; concept_tokens / meta_words: per class id. ``settings`` is a
    CamSettings; dtype: the UNet's dtype (the text conditioning is computed in float32 and cast to it).
    """
    unet, scheduler = comps.unet, comps.scheduler
    bz, latent_hw = latents.shape[0], tuple(latents.shape[-2:])
    labels = [int(v) for v in labels]
    if settings.mode == "gtk":
        role_classes = [labels]
    else:
        n_top = 1 if settings.mode == "top1" else 5
        role_classes = [[int(t[j]) for t in top5] for j in range(n_top)] + [labels]
    cams = []
    with store_all_attention(unet) as store:
        for r, classes in enumerate(role_classes):
            if settings.mode == "top1" and r == 1 and classes == role_classes[0]:
                cams.append(cams[0])  # the original's "save inference cost" shortcut
                break
            cond = _text_condition(comps.tokenizer, comps.text_encoder, [meta_words[c] for c in classes],
                                   settings.ratio, [concept_tokens[c] for c in classes]).to(dtype)
            for t in settings.timesteps:
                ts = torch.full((bz,), int(t), dtype=torch.long, device=latents.device)
                x = scheduler.add_noise(latents, noise, ts).to(dtype)
                unet(x, ts, cond)
                store.end_step()
            cams.append(_diffusion_cam(store, settings.groups, latent_hw, bz, settings.token_index, settings.cam_size))
            store.reset()
    assert len(cams) == len(roles_for_mode(settings.mode))
    return np.clip(np.stack(cams, axis=1), 0, None)
