"""Assets taken out of PyPI wheels: the CLIP BPE vocabulary and the ImageNet class names.

No model hub is reachable, so the real CLIP tokenizer is rebuilt from the
``bpe_simple_vocab_16e6.txt.gz`` file shipped inside the ``open-clip-torch`` wheel, and the
1000 ILSVRC class descriptions from ``imagenet_synsets.txt`` + ``imagenet_synset_to_lemma.txt``
inside the ``timm`` wheel (the BPE file is checked against a pinned SHA-256 sum).

Neither is needed offline: a real SD folder ships its own ``tokenizer/``, which the workflow then
indexes with, and the demo's class names can come from an existing ``LOC_synset_mapping.txt``
(config ``demo.synset_mapping``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import GenprompError
from .io import atomic_dir, atomic_path

__all__ = [
    "OPEN_CLIP_WHEEL", "TIMM_WHEEL", "BPE_SHA256", "download_wheel", "extract_member",
    "build_clip_tokenizer", "build_synset_mapping", "bytes_to_unicode", "ASSET_PARTS", "build_assets",
    "register_cli",
]

log = logging.getLogger(__name__)

OPEN_CLIP_WHEEL = "open-clip-torch==3.3.0"
TIMM_WHEEL = "timm==1.0.31"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
SYNSETS_MEMBER = "timm/data/_info/imagenet_synsets.txt"
LEMMA_MEMBER = "timm/data/_info/imagenet_synset_to_lemma.txt"
# CLIP's vocabulary: 256 byte symbols, their end-of-word forms, 48894 merges, 2 specials.
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77


def download_wheel(requirement, dest):
    """``pip download --no-deps`` one wheel into ``dest``; return its path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(dest.glob(f"{name}-*.whl"))
    if found:
        return found[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"{name}-*.whl"))
    if proc.returncode != 0 or not found:
        raise GenprompError(f"could not download {requirement} from the package index:\n{proc.stderr[-2000:]}")
    return found[-1]


def extract_member(wheel, member, sha256=None):
    """Bytes of one file inside a wheel, checked against ``sha256`` when given."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(member)
        except KeyError:
            raise GenprompError(f"{wheel}: has no {member}") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise GenprompError(f"{wheel}:{member}: checksum mismatch (expected sha256 {sha256}); "
                            "the wheel is not the pinned release")
    return data


def bytes_to_unicode():
    """CLIP / GPT-2's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def build_clip_tokenizer(bpe_gz_bytes, out_dir):
    """Write a transformers ``CLIPTokenizer`` folder (vocab.json, merges.txt, configs)."""
    lines = gzip.decompress(bpe_gz_bytes).decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != VOCAB_SIZE or len(set(vocab)) != VOCAB_SIZE:
        raise GenprompError(f"BPE file gives {len(set(vocab))} distinct ids, expected {VOCAB_SIZE}")
    with atomic_dir(out_dir) as tmp:
        (tmp / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
        (tmp / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MODEL_MAX_LENGTH,
                  "do_lower_case": True, "errors": "replace", **special}
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return Path(out_dir)


def build_synset_mapping(synsets_text, lemma_text, out_path):
    """Write ``LOC_synset_mapping.txt``: ``"n01440764 tench, Tinca tinca"`` for the 1000 classes."""
    lemmas = {}
    for line in lemma_text.splitlines():
        if line.strip():
            wnid, _, names = line.partition("\t")
            lemmas[wnid.strip()] = names.strip()
    wnids = [w.strip() for w in synsets_text.splitlines() if w.strip()]
    if len(wnids) != 1000:
        raise GenprompError(f"imagenet_synsets.txt lists {len(wnids)} synsets, expected 1000")
    missing = [w for w in wnids if w not in lemmas]
    if missing:
        raise GenprompError(f"imagenet_synset_to_lemma.txt has no names for {missing[:5]}")
    with atomic_path(out_path) as tmp:
        Path(tmp).write_text("".join(f"{w} {lemmas[w]}\n" for w in wnids))
    return Path(out_path)


ASSET_PARTS = ("tokenizer", "synsets")


def build_assets(out_root, wheel_dir=None, parts=ASSET_PARTS):
    """Build ``out_root/clip_tokenizer/`` (part ``tokenizer``, from the open-clip-torch wheel) and
    ``out_root/LOC_synset_mapping.txt`` (part ``synsets``, from the timm wheel); wheels are
    downloaded only when not already in ``wheel_dir``."""
    out_root = Path(out_root)
    wheel_dir = Path(wheel_dir or out_root / "wheels")
    unknown = set(parts) - set(ASSET_PARTS)
    if unknown:
        raise GenprompError(f"unknown asset parts {sorted(unknown)}; choose from {list(ASSET_PARTS)}")
    if "tokenizer" in parts:
        clip_wheel = download_wheel(OPEN_CLIP_WHEEL, wheel_dir)
        build_clip_tokenizer(extract_member(clip_wheel, BPE_MEMBER, BPE_SHA256), out_root / "clip_tokenizer")
    if "synsets" in parts:
        timm_wheel = download_wheel(TIMM_WHEEL, wheel_dir)
        build_synset_mapping(extract_member(timm_wheel, SYNSETS_MEMBER).decode(),
                             extract_member(timm_wheel, LEMMA_MEMBER).decode(), out_root / "LOC_synset_mapping.txt")
    return out_root


def register_cli(sub):
    p = sub.add_parser("assets", help="build the CLIP tokenizer and LOC_synset_mapping.txt from PyPI wheels",
                       description="Download the open-clip-torch and timm wheels (pip download, no install) and "
                                   "build OUT/clip_tokenizer/ and OUT/LOC_synset_mapping.txt from files inside "
                                   "them. Not needed when the pretrained SD folder has its own tokenizer/ and no "
                                   "demo data are generated.")
    p.add_argument("--out", default="resources/assets", help="output folder (default: %(default)s)")
    p.add_argument("--wheels", default=None, help="folder with downloaded wheels (default: OUT/wheels)")
    p.add_argument("--parts", nargs="+", choices=ASSET_PARTS, default=list(ASSET_PARTS),
                   help="what to build (default: both)")
    p.set_defaults(func=lambda a: build_assets(a.out, a.wheels, a.parts))
