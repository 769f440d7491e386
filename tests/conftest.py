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


def ensure_assets():
    """Build resources/assets/ (the real CLIP tokenizer and LOC_synset_mapping.txt, from the
    open-clip-torch and timm wheels on PyPI) once per fresh checkout; many tests read them."""
    from genpromp.assets import build_assets

    if not (ASSETS / "clip_tokenizer" / "vocab.json").is_file() or not (ASSETS / "LOC_synset_mapping.txt").is_file():
        build_assets(ASSETS)


def pytest_sessionstart(session):
    # before collection: some test modules check for the assets at import time
    ensure_assets()


@pytest.fixture(scope="session")
def tokenizer_dir():
    ensure_assets()
    return ASSETS / "clip_tokenizer"


@pytest.fixture(scope="session")
def synset_mapping(tokenizer_dir):
    return ASSETS / "LOC_synset_mapping.txt"


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
