"""Shared pytest configuration: repository paths, the shared assets (tokenizer) and the tiny models."""

import os

import pytest

from data_fixtures import ASSETS, SYNSETS, TOKENIZER_DIR
from workflow_utils import REPO

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo_root():
    return REPO


def ensure_assets():
    """Build resources/assets/ (the real CLIP tokenizer and LOC_synset_mapping.txt, from the
    open-clip-torch and timm wheels on PyPI) once per fresh checkout; many tests read them."""
    from genpromp.assets import build_assets

    if not (TOKENIZER_DIR / "vocab.json").is_file() or not SYNSETS.is_file():
        build_assets(ASSETS)


def pytest_sessionstart(session):
    # before collection: some test modules check for the assets at import time
    ensure_assets()


@pytest.fixture(scope="session")
def tokenizer_dir():
    ensure_assets()
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def synset_mapping(tokenizer_dir):
    return SYNSETS


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer_dir):
    """``get(shape)``: the tiny model folder of a tests/model_fixtures.py shape, built once per session."""
    from model_fixtures import build_tiny_folder

    built = {}

    def get(shape):
        if shape not in built:
            built[shape] = build_tiny_folder(tmp_path_factory.mktemp(f"tiny-{shape}"), tokenizer_dir, shape)
        return built[shape]

    return get


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
