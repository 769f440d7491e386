"""Concept-token checkpoint formats: ours (safetensors) and the original's ``tokens/{id}.bin``.

Our token table (the merged :func:`genpromp.layout.tokens` and each :func:`genpromp.layout.token_shard`):

- tensor ``embeddings``: float32 [C, D], row i is the learned input embedding of class ``class_ids[i]``;
- tensor ``class_ids``: int64 [C], 0-based class ids, ascending;
- safetensors metadata (strings): ``format`` = ``genpromp-tokens/1``, ``concept_tokens`` = JSON list
  of the C concept tokens (``<cub-3>`` …) in row order, ``meta_tokens`` = JSON list of their meta
  words (or ``[]`` when unknown), ``source`` = free text (``train_token``, ``converted from …``).

The original writes one torch pickle per class, ``tokens/{token_id}.bin`` = ``{"<cub-3>": tensor[768]}``.
Those are imported with ``torch.load(..., weights_only=True)`` only: a pickle that would construct
anything but tensors is refused with an error naming the file. A finetuned original ``unet/`` folder
is already in diffusers layout and loads as-is with :func:`genpromp.models.loading.load_unet`.

With ``keep_class`` only the kept classes are trained, so the workflow's token table holds exactly
the class table's kept classes (``kept`` column): merging and converting check that every kept
class has a token (naming the missing ones), accept a released folder holding only the kept
classes, and leave out (with a log line) tokens of classes of the table that are not kept.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import layout
from ..errors import GenprompError, InputError
from ..io import atomic_path

__all__ = [
    "TOKENS_FORMAT", "TokenTable", "save_tokens", "read_token_table", "load_tokens",
    "import_original_tokens", "convert_tokens", "merge_token_tables", "register_cli",
]

log = logging.getLogger(__name__)
TOKENS_FORMAT = "genpromp-tokens/1"


@dataclass
class TokenTable:
    """class_ids int64 [C], concept_tokens list[str] (C), embeddings float32 [C, D], meta_tokens list[str]."""

    class_ids: torch.Tensor
    concept_tokens: list
    embeddings: torch.Tensor
    meta_tokens: list
    source: str = ""

    def as_dict(self):
        """{concept_token: float32 [D]}"""
        return {tok: self.embeddings[i].clone() for i, tok in enumerate(self.concept_tokens)}


def save_tokens(path, class_ids, concept_tokens, embeddings, meta_tokens=None, source=""):
    """Atomically write a token table (rows sorted by class id). ``embeddings``: float [C, D]."""
    class_ids = torch.as_tensor(class_ids, dtype=torch.int64)
    embeddings = torch.as_tensor(embeddings).detach().to("cpu", torch.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(class_ids) or len(concept_tokens) != len(class_ids):
        raise GenprompError(f"save_tokens: {len(class_ids)} class ids, {len(concept_tokens)} tokens and "
                            f"embeddings of shape {tuple(embeddings.shape)} do not agree")
    order = torch.argsort(class_ids)
    meta = list(meta_tokens) if meta_tokens else []
    metadata = {
        "format": TOKENS_FORMAT,
        "concept_tokens": json.dumps([concept_tokens[i] for i in order.tolist()]),
        "meta_tokens": json.dumps([meta[i] for i in order.tolist()] if meta else []),
        "source": str(source),
    }
    with atomic_path(path) as tmp:
        save_file({"embeddings": embeddings[order].contiguous(), "class_ids": class_ids[order].contiguous()},
                  str(tmp), metadata=metadata)
    return Path(path)


def read_token_table(path):
    """Read our safetensors token table (see module docstring); InputError when it is not one."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            names = set(fh.keys())
            if meta.get("format") != TOKENS_FORMAT or not {"embeddings", "class_ids"} <= names:
                raise InputError(path, f"not a genpromp token table (format {meta.get('format')!r}, tensors "
                                       f"{sorted(names)}); convert original tokens with `genpromp convert-tokens`")
            embeddings = fh.get_tensor("embeddings")
            class_ids = fh.get_tensor("class_ids")
    except (OSError, ValueError, RuntimeError) as exc:  # safetensors raises SafetensorError (a ValueError/OSError)
        raise InputError(path, f"cannot read token table ({exc})") from None
    tokens = json.loads(meta["concept_tokens"])
    if len(tokens) != embeddings.shape[0] or len(class_ids) != embeddings.shape[0]:
        raise InputError(path, "token table is inconsistent (row counts differ)")
    return TokenTable(class_ids, tokens, embeddings, json.loads(meta.get("meta_tokens", "[]")), meta.get("source", ""))


def _kept_rows(classes):
    """The rows of a class table DataFrame that are trained (``kept``; every row without that column)."""
    if "kept" in classes.columns:
        return classes[classes["kept"].astype(bool)]
    return classes


def _load_original_file(path):
    """{token: tensor} from one original ``{id}.bin``, loaded with weights_only=True."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, "refused to load: not a plain tensor checkpoint (a pickle that would run code or "
                               f"construct objects is never loaded; {first}). Re-export it as "
                               "{'<token>': tensor} or use our .safetensors format") from None
    if not isinstance(obj, dict) or len(obj) != 1:
        raise InputError(path, "expected a dict with exactly one entry {'<prefix-i>': tensor[D]}")
    (token, value), = obj.items()
    if not isinstance(token, str) or not torch.is_tensor(value):
        raise InputError(path, "expected {'<prefix-i>': tensor[D]}")
    if value.ndim != 1:
        raise InputError(path, f"token {token!r} has shape {tuple(value.shape)}, expected a 1-D vector")
    return token, value.to(torch.float32)


def import_original_tokens(folder, classes=None, dim=None):
    """Read an original ``tokens/`` folder of ``{token_id}.bin`` files into a :class:`TokenTable`.

    ``classes``: class table DataFrame (class_id, concept_token[, meta_token][, kept]); tokens not in
    it raise InputError, and so does a kept class without a file; tokens of classes that are not kept
    are left out (logged). ``dim``: expected width (768 for SD-1.4).
    Without ``classes`` the class id is parsed from the token's ``<prefix-i>`` suffix.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.bin"))
    if not files:
        raise InputError(folder, "no {token_id}.bin files found; point at the original tokens/ folder")
    by_token = {}
    for f in files:
        token, vec = _load_original_file(f)
        if dim is not None and vec.shape[0] != dim:
            raise InputError(f, f"token {token!r} has dimension {vec.shape[0]}, the text encoder expects {dim}")
        if token in by_token:
            raise InputError(f, f"token {token!r} appears in two files")
        by_token[token] = (vec, f)
    dims = {v.shape[0] for v, _ in by_token.values()}
    if len(dims) != 1:
        raise InputError(folder, f"token files have different dimensions {sorted(dims)}")
    if classes is not None:
        lookup = {str(r.concept_token): (int(r.class_id), str(getattr(r, "meta_token", "")))
                  for r in classes.itertuples()}
        for token, (_, f) in by_token.items():
            if token not in lookup:
                raise InputError(f, f"unknown class token {token!r}: not in the class table "
                                    f"(known e.g. {list(lookup)[:3]}); wrong dataset?")
        kept = [str(t) for t in _kept_rows(classes)["concept_token"]]
        missing = [t for t in kept if t not in by_token]
        if missing:
            raise InputError(folder, f"no token file for {len(missing)} kept class(es): "
                                     f"{', '.join(f'{t} (class {lookup[t][0]})' for t in missing[:10])}"
                                     f"{' …' if len(missing) > 10 else ''}; add their {{token_id}}.bin files "
                                     "or drop the classes with keep_class")
        extra = set(by_token) - set(kept)
        if extra:
            log.info("%s: %d token(s) of classes outside keep_class not imported (e.g. %s)", folder, len(extra),
                     sorted(extra)[:3])
            by_token = {t: v for t, v in by_token.items() if t not in extra}
        ids = [lookup[t][0] for t in by_token]
        metas = [lookup[t][1] for t in by_token]
    else:
        ids = []
        for token, (_, f) in by_token.items():
            try:
                ids.append(int(token.rstrip(">").rsplit("-", 1)[1]))
            except (IndexError, ValueError):
                raise InputError(f, f"token {token!r} is not of the form <prefix-i>") from None
        metas = []
    tokens = list(by_token)
    emb = torch.stack([by_token[t][0] for t in tokens])
    order = torch.argsort(torch.tensor(ids))
    return TokenTable(torch.tensor(ids)[order], [tokens[i] for i in order.tolist()], emb[order],
                      [metas[i] for i in order.tolist()] if metas else [], f"converted from {folder}")


def load_tokens(path):
    """{concept_token: float32 [D]} from our ``.safetensors`` table or an original ``tokens/`` folder."""
    path = Path(path)
    if path.is_dir():
        return import_original_tokens(path).as_dict()
    if not path.is_file():
        raise InputError(path, "token file not found")
    return read_token_table(path).as_dict()


def convert_tokens(source, out_path, classes_parquet=None, dim=None):
    """Convert an original tokens/ folder (or re-validate one of our files) to our token table."""
    classes = pd.read_parquet(classes_parquet) if classes_parquet else None
    source = Path(source)
    if source.is_dir():
        table = import_original_tokens(source, classes, dim)
    else:
        table = read_token_table(source)
        if classes is not None:
            want = set(_kept_rows(classes)["concept_token"].astype(str))
            have = set(table.concept_tokens)
            if want - have:
                raise InputError(source, f"no token for {len(want - have)} kept class(es): "
                                         f"{sorted(want - have)[:10]}; train or import them, or drop the classes "
                                         "with keep_class")
            keep = [i for i, t in enumerate(table.concept_tokens) if t in want]
            table = TokenTable(table.class_ids[keep], [table.concept_tokens[i] for i in keep],
                               table.embeddings[keep], [table.meta_tokens[i] for i in keep] if table.meta_tokens else [],
                               table.source)
        if dim is not None and table.embeddings.shape[1] != dim:
            raise InputError(source, f"tokens have dimension {table.embeddings.shape[1]}, expected {dim}")
    return save_tokens(out_path, table.class_ids, table.concept_tokens, table.embeddings, table.meta_tokens,
                       table.source)


def merge_token_tables(shard_paths, out_path, classes_parquet=None):
    """Concatenate shard tables into one table (checks no class appears twice and, given the class
    table, that the shards hold exactly its kept classes)."""
    tables = [read_token_table(p) for p in shard_paths]
    ids = torch.cat([t.class_ids for t in tables])
    if len(set(ids.tolist())) != len(ids):
        raise GenprompError(f"shards {list(map(str, shard_paths))} contain a class twice")
    if classes_parquet is not None:
        want = set(int(x) for x in _kept_rows(pd.read_parquet(classes_parquet))["class_id"])
        if want != set(ids.tolist()):
            raise InputError(classes_parquet, f"merged shards cover classes {sorted(set(ids.tolist()) ^ want)[:10]} "
                                              "differently from the class table's kept classes; rerun the token shards")
    tokens = [tok for t in tables for tok in t.concept_tokens]
    metas = [m for t in tables for m in (t.meta_tokens or [""] * len(t.concept_tokens))]
    emb = torch.cat([t.embeddings for t in tables])
    return save_tokens(out_path, ids, tokens, emb, metas, source="train_token")


def register_cli(sub):
    p = sub.add_parser("convert-tokens", help="convert original tokens/{id}.bin files to a genpromp token table",
                       description="Read the original GenPromp tokens/ folder ({token_id}.bin torch files holding "
                                   "{'<cub-3>': tensor[768]}) with weights_only loading, check them against the "
                                   "class table and write our safetensors token table.")
    p.add_argument("original_dir", help="original tokens/ folder (or one of our .safetensors tables to re-check)")
    p.add_argument("out", help="output .safetensors token table")
    p.add_argument("--classes", default=None,
                   help=f"{layout.index_table('<dataset>', 'classes')}: every token must name a class in it and "
                        "every class must have a token (recommended)")
    p.add_argument("--dim", type=int, default=None, help="expected embedding width (768 for SD-1.4); default: any")
    p.set_defaults(func=lambda a: convert_tokens(a.original_dir, a.out, a.classes, a.dim))
