"""The CLIP tokenizer and synset mapping built by genpromp.assets."""

import gzip
import zipfile

import pytest

from genpromp.assets import extract_member, build_clip_tokenizer
from genpromp.errors import GenprompError

from data_fixtures import SYNSETS, TOKENIZER_DIR, load_tokenizer

pytestmark = pytest.mark.skipif(not (TOKENIZER_DIR / "vocab.json").is_file(), reason="run `genpromp assets` first")


def test_tokenizer_ids_match_clip():
    tok = load_tokenizer()
    assert tok("a photo of a bird").input_ids == [49406, 320, 1125, 539, 320, 3329, 49407]
    assert tok("goldfinch").input_ids == [49406, 4999, 18523, 49407]
    assert len(tok) == 49408
    assert tok.model_max_length == 77


def test_synset_mapping():
    lines = SYNSETS.read_text().splitlines()
    assert len(lines) == 1000
    assert lines[0] == "n01440764 tench, Tinca tinca"
    assert len({ln.split()[0] for ln in lines}) == 1000


def test_wrong_checksum_refused(tmp_path):
    wheel = tmp_path / "x.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/file.txt", b"hello")
    assert extract_member(wheel, "pkg/file.txt") == b"hello"
    with pytest.raises(GenprompError, match="checksum"):
        extract_member(wheel, "pkg/file.txt", sha256="0" * 64)
    with pytest.raises(GenprompError, match="has no"):
        extract_member(wheel, "pkg/missing.txt")


def test_bpe_with_wrong_vocab_size_refused(tmp_path):
    bad = gzip.compress("header\na b\n".encode())
    with pytest.raises(GenprompError, match="distinct ids"):
        build_clip_tokenizer(bad, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()
