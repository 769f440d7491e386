"""Shared pytest configuration: repository paths and the shared assets (tokenizer)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "resources" / "assets"


@pytest.fixture(scope="session")
def repo_root():
    return REPO


@pytest.fixture(scope="session")
def tokenizer_dir():
    """The real CLIP tokenizer folder, built from the open-clip-torch wheel on first use."""
    from genpromp.assets import build_assets

    if not (ASSETS / "clip_tokenizer" / "vocab.json").is_file() or not (ASSETS / "LOC_synset_mapping.txt").is_file():
        build_assets(ASSETS)
    return ASSETS / "clip_tokenizer"


@pytest.fixture(scope="session")
def synset_mapping(tokenizer_dir):
    return ASSETS / "LOC_synset_mapping.txt"


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
