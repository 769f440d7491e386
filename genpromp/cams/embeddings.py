"""Class text embeddings f_r (representative) and f_d (discriminative), computed once per token source.

docs/method.md § Prompts and tokens: f_r of a class = mean over the 7 templates of the text encoder's last
hidden state for the concept-token captions; f_d = the same for the meta-token captions; both [77, D].
An embeddings file (``genpromp.layout.embeddings``: one per dataset and token source, shared by the runs
that use those tokens) holds ``f_r`` and ``f_d`` (float32 [C, 77, D]) and ``class_ids`` (int64 [C]); CAM
extraction mixes them per variant as f_c = w·f_r + (1−w)·f_d. Classes that share a meta word (every CUB
class uses "bird") share one f_d encoding.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import layout, plan
from ..errors import InputError
from ..io import atomic_path
from ..prompts import TEMPLATES, add_concept_tokens, tokenize

__all__ = [
    "ClassEmbeddings", "read_classes", "load_token_vectors", "install_concept_tokens",
    "encode_captions", "compute_class_embeddings", "write_embeddings", "read_embeddings", "combine_embeddings",
    "build_run_embeddings", "needed_class_ids", "encode_unique", "register_cli",
]

log = logging.getLogger(__name__)


class ClassEmbeddings:
    """f_r, f_d: float32 [C, 77, D] on CPU; class_ids: int64 [C] (row c is class class_ids[c])."""

    def __init__(self, f_r, f_d, class_ids):
        self.f_r, self.f_d, self.class_ids = f_r, f_d, class_ids
        self._row = {int(c): i for i, c in enumerate(class_ids.tolist())}

    def rows(self, class_ids, path="<embeddings>"):
        """Row numbers of ``class_ids``; raise InputError for a class without embeddings."""
        try:
            return [self._row[int(c)] for c in class_ids]
        except KeyError as exc:
            raise InputError(path, f"no text embeddings for class {exc.args[0]}; rebuild the run's embeddings "
                                   "with the current classes.parquet") from None


def read_classes(path):
    """classes.parquet → DataFrame with class_id, meta_token, concept_token (docs/FORMATS.md)."""
    df = pd.read_parquet(path)
    missing = {"class_id", "meta_token", "concept_token"} - set(df.columns)
    if missing:
        raise InputError(path, f"class table lacks columns {sorted(missing)}; see docs/FORMATS.md")
    return df.sort_values("class_id").reset_index(drop=True)


def load_token_vectors(path):
    """{concept_token: float32 [D]} from our ``tokens.safetensors`` table or an original ``tokens/`` folder.

    The training stage owns the format: this defers to ``genpromp.training.checkpoints.load_tokens``.
    """
    from ..training.checkpoints import load_tokens

    return {str(k): v.float().reshape(-1) for k, v in load_tokens(path).items()}


def needed_class_ids(classes, test_index=None, scores=None):
    """Class ids whose embeddings CAM extraction can ask for (sorted list).

    The kept classes (column ``kept`` of the class table; every class when the column is absent),
    plus, when ``scores`` (a scores parquet) is given, every class among the top-5 predictions of the
    test images in ``test_index`` (a test.parquet): top-1/top-5 modes localize predicted classes, which
    may lie outside ``keep_class``.
    """
    kept = classes[classes["kept"].astype(bool)] if "kept" in classes.columns else classes
    ids = {int(c) for c in kept["class_id"]}
    if scores is not None:
        from ..data.scores import read_top5

        top5 = read_top5(scores)
        images = pd.read_parquet(test_index, columns=["image_id"])["image_id"] if test_index is not None else top5
        ids.update(int(c) for iid in images if str(iid) in top5 for c in top5[str(iid)])
    return sorted(ids)


@torch.no_grad()
def install_concept_tokens(tokenizer, text_encoder, classes, vectors, source="<tokens>"):
    """Add every class's concept token to the tokenizer and set its input-embedding row from ``vectors``.

    A kept class (column ``kept``; every class when absent) without a vector is an error. A class outside
    ``keep_class`` without one (a top-k prediction whose token was never trained) keeps the row it is
    initialised with, its meta word's: its f_r equals its f_d. Returns the classes that got no vector
    (list of concept tokens).
    """
    tokens = classes["concept_token"].tolist()
    kept = classes["kept"].astype(bool).tolist() if "kept" in classes.columns else [True] * len(tokens)
    missing = [t for t, k in zip(tokens, kept) if k and t not in vectors]
    if missing:
        raise InputError(source, f"no learned vector for concept tokens {missing[:5]} ({len(missing)} missing); "
                                 "train or import tokens for every kept class")
    ids = add_concept_tokens(tokenizer, text_encoder, tokens, classes["meta_token"].tolist())
    weight = text_encoder.get_input_embeddings().weight
    untrained = []
    for tok_id, tok in zip(ids, tokens):
        vec = vectors.get(tok)
        if vec is None:
            untrained.append(tok)
            continue
        if vec.numel() != weight.shape[1]:
            raise InputError(source, f"{tok}: vector of size {vec.numel()}, the text encoder needs {weight.shape[1]}")
        weight[tok_id] = vec.to(weight.dtype)
    if untrained:
        log.warning("%d predicted class(es) outside keep_class have no learned token (e.g. %s): they are "
                    "localized with their meta word (f_r = f_d)", len(untrained), untrained[:3])
    return untrained


@torch.no_grad()
def encode_captions(tokenizer, text_encoder, words, templates=TEMPLATES, chunk=64):
    """Mean over templates of the last hidden state: float32 [len(words), 77, D].

    Captions are ``template.format(word)`` tokenised as SD (padding to 77, truncation).
    """
    device = next(text_encoder.parameters()).device
    captions = [t.format(w) for w in words for t in templates]
    ids = tokenize(tokenizer, captions)
    states = []
    for i in range(0, len(ids), chunk):
        states.append(text_encoder(ids[i:i + chunk].to(device))[0].float().cpu())
    states = torch.cat(states)
    return states.view(len(words), len(templates), *states.shape[1:]).mean(dim=1)


def encode_unique(tokenizer, text_encoder, words, templates=TEMPLATES):
    """:func:`encode_captions` of ``words``, encoding each distinct word once: float32 [len(words), 77, D]."""
    distinct = list(dict.fromkeys(words))
    encoded = encode_captions(tokenizer, text_encoder, distinct, templates)
    if len(distinct) == len(words):
        return encoded
    row = {w: k for k, w in enumerate(distinct)}
    return encoded[torch.tensor([row[w] for w in words], dtype=torch.long)]


def compute_class_embeddings(tokenizer, text_encoder, classes, use_concept_tokens=True, templates=TEMPLATES):
    """f_r, f_d for every class of ``classes`` → :class:`ClassEmbeddings`.

    Without concept tokens (run tokens = meta), f_r is set equal to f_d (only w = 0 is meaningful).
    """
    f_d = encode_unique(tokenizer, text_encoder, classes["meta_token"].tolist(), templates)
    f_r = (encode_unique(tokenizer, text_encoder, classes["concept_token"].tolist(), templates)
           if use_concept_tokens else f_d.clone())
    return ClassEmbeddings(f_r, f_d, torch.tensor(classes["class_id"].to_numpy().tolist(), dtype=torch.int64))


def write_embeddings(path, emb, metadata=None):
    """Write f_r, f_d, class_ids to ``path`` (safetensors) atomically."""
    tensors = {"f_r": emb.f_r.contiguous(), "f_d": emb.f_d.contiguous(), "class_ids": emb.class_ids.contiguous()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return Path(path)


def read_embeddings(path):
    """Read a file written by :func:`write_embeddings` → :class:`ClassEmbeddings`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "run embeddings not found; run the `embeddings` rule first")
    with safe_open(str(path), framework="pt") as fh:
        missing = {"f_r", "f_d", "class_ids"} - set(fh.keys())
        if missing:
            raise InputError(path, f"embeddings file lacks tensors {sorted(missing)}; rebuild it")
        return ClassEmbeddings(fh.get_tensor("f_r"), fh.get_tensor("f_d"), fh.get_tensor("class_ids"))


def combine_embeddings(emb, ratio, rows):
    """f_c = ratio·f_r + (1 − ratio)·f_d for the given rows: float32 [len(rows), 77, D]."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    return ratio * emb.f_r[rows] + (1.0 - ratio) * emb.f_d[rows]


def build_run_embeddings(pretrained, classes_path, tokens, out_path, test_index=None, scores=None):
    """Compute and write a run's embeddings. ``tokens``: 'meta' or a path to trained tokens.

    Only the classes CAM extraction can ask for are encoded (:func:`needed_class_ids`: the kept classes,
    plus the top-5 predictions of the test images when ``scores`` is given).
    """
    from ..models.loading import load_components

    comps = load_components(pretrained)
    classes = read_classes(classes_path)
    classes = classes[classes["class_id"].isin(needed_class_ids(classes, test_index, scores))].reset_index(drop=True)
    use_concept = tokens != "meta"
    untrained = []
    if use_concept:
        vectors = load_token_vectors(tokens)
        untrained = install_concept_tokens(comps.tokenizer, comps.text_encoder, classes, vectors, source=tokens)
    emb = compute_class_embeddings(comps.tokenizer, comps.text_encoder, classes, use_concept)
    log.info("embeddings for %d classes (%s) -> %s", len(classes), "concept+meta" if use_concept else "meta only",
             out_path)
    return write_embeddings(out_path, emb, {"tokens": tokens, "templates": len(TEMPLATES),
                                            "untrained_classes": len(untrained)})


def _cli(args):
    from ..config import load_config
    from ..errors import GenprompError

    config = load_config(args.config)
    for key, name in (("datasets", args.dataset), ("runs", args.run)):
        if name not in config[key]:
            raise GenprompError(f"{key[:-1]} {name!r} is not in {args.config} (have {sorted(config[key])})")
    ds = args.dataset
    build_run_embeddings(args.pretrained or config["pretrained"], args.classes or layout.index_table(ds, "classes"),
                         args.tokens or plan.run_tokens(config, ds, args.run),
                         args.out or plan.run_embeddings(config, ds, args.run),
                         test_index=args.index or layout.index_table(ds, "test"),
                         scores=args.scores if args.scores is not None else _cli_scores(config, ds))


def _cli_scores(config, dataset):
    """The scores the workflow's embeddings read (genpromp.plan.embeddings_scores), which must exist."""
    from ..errors import GenprompError

    scores = plan.embeddings_scores(config, dataset)
    if scores and not Path(scores).is_file():
        raise GenprompError(f"{scores}: classifier scores not found; the config's eval modes "
                            f"{config['test']['eval_modes']} need them (run import-scores first, or pass --scores)")
    return scores or None


def register_cli(sub):
    ds, run = "<dataset>", "<run>"
    p = sub.add_parser("embeddings", help="compute a run's class text embeddings f_r and f_d (before extract-cams)",
                       description="Encode the 7 prompt templates with every class's concept token (f_r) and meta "
                                   f"token (f_d) and write {layout.embeddings(ds, '<tokens>')} (<tokens>: trained, meta or "
                                   "given-<hash> after runs.<run>.tokens; runs with the same tokens share it), the "
                                   "--embeddings input of `genpromp extract-cams`. The run's tokens come from the "
                                   "config (runs.<run>.tokens: trained | meta | a path).")
    p.add_argument("--config", default="config/config.yaml", help="workflow config YAML (default: %(default)s)")
    p.add_argument("--dataset", required=True, help="dataset name (a key of `datasets` in the config)")
    p.add_argument("--run", required=True, help="run name (a key of `runs` in the config)")
    p.add_argument("--pretrained", default=None, help="SD folder (default: the config's `pretrained`)")
    p.add_argument("--classes", default=None, help=f"class table (default: {layout.index_table(ds, 'classes')})")
    p.add_argument("--tokens", default=None, help="'meta' or a token table / original tokens/ folder "
                                                  f"(default: from runs.<run>.tokens; trained = {layout.tokens(ds)})")
    p.add_argument("--out", default=None, help=f"output (default: {layout.embeddings(ds, '<tokens>')})")
    p.add_argument("--scores", default=None, help="classifier scores parquet: also encode the classes predicted in "
                                                   "the test images' top 5 (default: the dataset's imported scores "
                                                   f"{layout.scores(ds, '<classifier>')} when the config's eval "
                                                   "modes include top1/top5)")
    p.add_argument("--index", default=None, help=f"test index (default: {layout.index_table(ds, 'test')})")
    p.set_defaults(func=_cli)
