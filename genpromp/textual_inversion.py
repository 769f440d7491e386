"""Export learned concept tokens as textual-inversion files that diffusers loads.

``StableDiffusionPipeline.load_textual_inversion(path)`` reads a safetensors file holding exactly one
tensor, named after the token, with the token's input-embedding row: ``{"<cub-3>": float32 [D]}``
(D = the text encoder's width, 768 for SD-1.x). Several files load at once with
``pipe.load_textual_inversion([path, ...])``.

:func:`export_textual_inversion` writes one such file per concept token of a token table (ours,
``tokens.safetensors``, or an original ``tokens/`` folder of ``{id}.bin`` files) into a folder, plus
``tokens.json`` listing, in class order, ``{"token", "file", "class_id", "meta_token"}`` for each file.
The folder is written to a temporary name and renamed into place. CLI: ``genpromp export-tokens``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import InputError
from .io import atomic_dir

__all__ = ["LISTING_NAME", "token_filename", "export_textual_inversion", "register_cli"]

log = logging.getLogger(__name__)

LISTING_NAME = "tokens.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def token_filename(token):
    """File name of a token's file: ``<cub-3>`` → ``cub-3.safetensors`` (characters outside
    ``[A-Za-z0-9._-]`` become ``_``)."""
    stem = _UNSAFE.sub("_", token.strip("<>")).strip("._") or "token"
    return f"{stem}.safetensors"


def _read_table(tokens_path):
    """(concept tokens, embeddings float32 [C, D], class ids or None, meta tokens) of a token source."""
    from .training.checkpoints import TOKENS_FORMAT, load_tokens, read_token_table

    path = Path(tokens_path)
    if path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                is_table = (fh.metadata() or {}).get("format") == TOKENS_FORMAT
        except (OSError, ValueError, RuntimeError) as exc:
            raise InputError(path, f"cannot read token file ({exc}); expected a genpromp token table "
                                   "(tokens.safetensors)") from None
        if is_table:
            table = read_token_table(path)
            meta = table.meta_tokens or [""] * len(table.concept_tokens)
            return (list(table.concept_tokens), table.embeddings.float(),
                    [int(c) for c in table.class_ids.tolist()], list(meta))
    vectors = load_tokens(path)  # an original tokens/ folder (or a clear error)
    tokens = list(vectors)
    return tokens, torch.stack([vectors[t].float().reshape(-1) for t in tokens]), None, [""] * len(tokens)


def export_textual_inversion(tokens_path, out_dir, only=None):
    """Write one diffusers textual-inversion file per concept token into ``out_dir``; return its listing.

    tokens_path: a genpromp token table or an original ``tokens/`` folder; only: optional list of
    concept tokens to export (each must be in the table). Returns the list of listing entries
    (dicts with token, file, class_id, meta_token).
    """
    tokens, embeddings, class_ids, meta = _read_table(tokens_path)
    rows = list(range(len(tokens)))
    if only:
        missing = [t for t in only if t not in tokens]
        if missing:
            raise InputError(tokens_path, f"no learned vector for {missing[:5]} ({len(missing)} in all); the table "
                                          f"has {len(tokens)} tokens, e.g. {tokens[:3]}")
        rows = [tokens.index(t) for t in dict.fromkeys(only)]
    if not rows:
        raise InputError(tokens_path, "the token table is empty; nothing to export")
    listing, used = [], set()
    with atomic_dir(out_dir) as tmp:
        for r in rows:
            name = token_filename(tokens[r])
            if name in used:  # two tokens that differ only in unsafe characters
                name = f"{name[:-len('.safetensors')]}-{r}.safetensors"
            used.add(name)
            save_file({tokens[r]: embeddings[r].contiguous().clone()}, str(Path(tmp) / name),
                      metadata={"format": "textual-inversion", "token": tokens[r]})
            listing.append({"token": tokens[r], "file": name,
                            "class_id": None if class_ids is None else class_ids[r], "meta_token": meta[r]})
        (Path(tmp) / LISTING_NAME).write_text(json.dumps(listing, indent=1) + "\n")
    log.info("%d textual-inversion files (dimension %d) -> %s", len(listing), embeddings.shape[1], out_dir)
    return listing


def _cli(args):
    export_textual_inversion(args.tokens, args.out, args.token or None)


def register_cli(sub):
    p = sub.add_parser(
        "export-tokens", help="export learned concept tokens as diffusers textual-inversion files",
        description="Write one safetensors file {token: embedding [D]} per learned concept token, which "
                    "diffusers' StableDiffusionPipeline.load_textual_inversion loads, plus tokens.json "
                    "(token, file, class id, meta word). Example: genpromp export-tokens "
                    "results/cub/tokens/tokens.safetensors --out results/cub/textual_inversion; then in "
                    "Python: pipe.load_textual_inversion('results/cub/textual_inversion/cub-3.safetensors') "
                    "and prompt 'a photo of a <cub-3>'.")
    p.add_argument("tokens", help="token table (results/<dataset>/tokens/tokens.safetensors) or an original "
                                  "tokens/ folder of {id}.bin files")
    p.add_argument("--out", required=True, help="output folder (replaced as a whole when it exists)")
    p.add_argument("--token", action="append", default=[],
                   help="export only this concept token, e.g. '<cub-3>' (repeatable; default: all)")
    p.set_defaults(func=_cli)
