"""Caption templates, concept / meta tokens and the token index (docs/method.md § Prompts and tokens)."""

from __future__ import annotations

from .errors import GenprompError

__all__ = [
    "TEMPLATES", "concept_token", "meta_token_for", "token_index", "tokenize",
    "add_concept_tokens", "PLACEHOLDER",
]

PLACEHOLDER = "{}"

# The seven caption templates, in the reference's order.
TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "the photo of a {}",
    "a photo of my {}",
    "a photo of the {}",
    "a photo of one {}",
    "a rendition of a {}",
)


def concept_token(prefix, class_id):
    """The learnable concept token of a class: ``<cub-3>``."""
    return f"<{prefix}-{int(class_id)}>"


def _word_pieces(tokenizer, word):
    return tokenizer.tokenize(word)


def meta_token_for(synonyms, tokenizer):
    """The discriminative (meta) word of a class description such as ``"tench, Tinca tinca"``.

    Each comma-separated synonym contributes its last space-separated word; the first one that
    is a single CLIP token wins. If none is, the last sub-token of the first synonym's word is used.
    """
    words = [s.strip().split()[-1].lower() for s in synonyms.split(",") if s.strip()]
    if not words:
        raise GenprompError(f"class description {synonyms!r} has no words to take a meta token from")
    for word in words:
        if len(_word_pieces(tokenizer, word)) == 1:
            return word
    last = _word_pieces(tokenizer, words[0])[-1]
    return last.replace("</w>", "")


def tokenize(tokenizer, texts):
    """Token ids [N, max_length] padded to the model length with truncation (as SD)."""
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def token_index(tokenizer, templates=TEMPLATES, word="object"):
    """Position of the class word in every template's token ids; it must be the same for all.

    ``word`` must be a single token (a concept token always is).
    """
    positions = set()
    for template in templates:
        ids = tokenize(tokenizer, [template.format(word)])[0].tolist()
        word_ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(word_ids) != 1:
            raise GenprompError(f"token_index: {word!r} is not a single token")
        hits = [i for i, t in enumerate(ids) if t == word_ids[0]]
        if len(hits) != 1:
            raise GenprompError(f"template {template!r}: the class word occurs {len(hits)} times")
        positions.add(hits[0])
    if len(positions) != 1:
        raise GenprompError(f"templates place the class word at different positions {sorted(positions)}; "
                            "the CAM reads one token index, so use templates that agree")
    return positions.pop()


def add_concept_tokens(tokenizer, text_encoder, concept_tokens, meta_words):
    """Add ``concept_tokens`` to the tokenizer and initialise each row from its meta word's row.

    Returns the new token ids. Tokens already present are an error (a tokenizer is set up once).
    """
    import torch  # here, not at module level: indexing uses this module and should start without torch

    with torch.no_grad():
        return _add_concept_tokens(tokenizer, text_encoder, concept_tokens, meta_words)


def _add_concept_tokens(tokenizer, text_encoder, concept_tokens, meta_words):
    added = tokenizer.add_tokens(list(concept_tokens))
    if added != len(concept_tokens):
        raise GenprompError("some concept tokens already exist in the tokenizer; load a fresh tokenizer")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = text_encoder.get_input_embeddings().weight
    ids = tokenizer.convert_tokens_to_ids(list(concept_tokens))
    for tok_id, word in zip(ids, meta_words):
        src = tokenizer(word, add_special_tokens=False).input_ids
        if len(src) != 1:
            raise GenprompError(f"meta word {word!r} is not a single CLIP token")
        embeddings[tok_id] = embeddings[src[0]]
    return ids
