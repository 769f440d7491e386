"""Token table format, original tokens/{id}.bin import (weights_only), malicious pickles refused, CLI."""

import os
import pickle

import pandas as pd
import pytest
import torch

from genpromp.cli import main as cli_main
from genpromp.errors import InputError
from genpromp.training.checkpoints import (convert_tokens, import_original_tokens, load_tokens, merge_token_tables,
                                           read_token_table, save_tokens)


def _classes(n=3):
    return pd.DataFrame(dict(class_id=list(range(n)), concept_token=[f"<cub-{i}>" for i in range(n)],
                             meta_token=["bird"] * n))


def _write_original(folder, n=3, dim=8):
    folder.mkdir(parents=True, exist_ok=True)
    vecs = {}
    for i in range(n):
        v = torch.arange(dim, dtype=torch.float32) + 10 * i
        torch.save({f"<cub-{i}>": v}, folder / f"{49408 + i}.bin")
        vecs[f"<cub-{i}>"] = v
    return vecs


def test_roundtrip_and_merge(tmp_path):
    emb = torch.randn(2, 4)
    a = save_tokens(tmp_path / "a.safetensors", [3, 1], ["<x-3>", "<x-1>"], emb, ["w3", "w1"])
    t = read_token_table(a)
    assert t.class_ids.tolist() == [1, 3] and t.concept_tokens == ["<x-1>", "<x-3>"] and t.meta_tokens == ["w1", "w3"]
    assert torch.equal(t.embeddings, emb[[1, 0]])
    b = save_tokens(tmp_path / "b.safetensors", [0], ["<x-0>"], torch.ones(1, 4))
    merged = load_tokens(merge_token_tables([a, b], tmp_path / "m.safetensors"))
    assert set(merged) == {"<x-0>", "<x-1>", "<x-3>"} and torch.equal(merged["<x-3>"], emb[0])
    with pytest.raises(Exception, match="twice"):
        merge_token_tables([a, a], tmp_path / "bad.safetensors")


def test_import_original_and_cli(tmp_path):
    vecs = _write_original(tmp_path / "tokens")
    classes = tmp_path / "classes.parquet"
    _classes().to_parquet(classes)
    out = tmp_path / "tokens.safetensors"
    assert cli_main(["convert-tokens", str(tmp_path / "tokens"), str(out), "--classes", str(classes), "--dim", "8"]) == 0
    got = load_tokens(out)
    assert set(got) == set(vecs) and all(torch.equal(got[k], vecs[k]) for k in vecs)
    assert torch.equal(load_tokens(tmp_path / "tokens")["<cub-2>"], vecs["<cub-2>"])


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused(tmp_path):
    folder = tmp_path / "tokens"
    _write_original(folder, n=1)
    evil = _Evil()
    evil.marker = tmp_path / "pwned"
    torch.save({"<cub-1>": evil}, folder / "49409.bin")
    with pytest.raises(InputError, match="49409.bin.*refused"):
        import_original_tokens(folder)
    assert not (tmp_path / "pwned").exists()
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "1.bin").write_bytes(pickle.dumps(evil))
    with pytest.raises(InputError, match="1.bin"):
        import_original_tokens(raw)
    assert not (tmp_path / "pwned").exists()


def test_wrong_dimension_and_unknown_token(tmp_path):
    _write_original(tmp_path / "t", n=3, dim=8)
    with pytest.raises(InputError, match="dimension 8.*expects 768"):
        import_original_tokens(tmp_path / "t", dim=768)
    torch.save({"<cub-7>": torch.zeros(8)}, tmp_path / "t" / "49415.bin")
    with pytest.raises(InputError, match="49415.bin.*unknown class token '<cub-7>'"):
        import_original_tokens(tmp_path / "t", _classes())
    _write_original(tmp_path / "few", n=2)
    with pytest.raises(InputError, match="no token file for 1"):
        convert_tokens(tmp_path / "few", tmp_path / "o.safetensors", _write_classes(tmp_path))
    torch.save({"<cub-0>": torch.zeros(2, 8)}, tmp_path / "few" / "49408.bin")
    with pytest.raises(InputError, match="1-D"):
        import_original_tokens(tmp_path / "few")


def _write_classes(tmp_path):
    path = tmp_path / "classes.parquet"
    _classes().to_parquet(path)
    return path


def test_not_a_token_table(tmp_path):
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(InputError, match="not a genpromp token table"):
        load_tokens(tmp_path / "x.safetensors")


def _kept_classes(tmp_path, n=4, kept=(0, 2)):
    path = tmp_path / "classes_kept.parquet"
    df = _classes(n)
    df["kept"] = [i in kept for i in range(n)]
    df.to_parquet(path)
    return path


def test_original_folder_of_kept_classes_only(tmp_path):
    """keep_class [0, 2] of 4 classes: a released folder with just <cub-0>, <cub-2> converts; a full one is cut
    to the kept classes; a folder without a kept class is refused naming it."""
    classes = _kept_classes(tmp_path)
    vecs = _write_original(tmp_path / "all", n=4)
    kept_dir = tmp_path / "kept"
    kept_dir.mkdir()
    for i in (0, 2):
        torch.save({f"<cub-{i}>": vecs[f"<cub-{i}>"]}, kept_dir / f"{49408 + i}.bin")
    for src in (kept_dir, tmp_path / "all"):
        got = read_token_table(convert_tokens(src, tmp_path / f"{src.name}.safetensors", classes))
        assert got.class_ids.tolist() == [0, 2] and got.concept_tokens == ["<cub-0>", "<cub-2>"]
        assert torch.equal(got.embeddings[1], vecs["<cub-2>"])
    (kept_dir / "49410.bin").unlink()
    with pytest.raises(InputError, match=r"no token file for 1 kept class\(es\): <cub-2> \(class 2\)"):
        convert_tokens(kept_dir, tmp_path / "bad.safetensors", classes)


def test_merge_checks_kept_classes(tmp_path):
    classes = _kept_classes(tmp_path)
    a = save_tokens(tmp_path / "a.safetensors", [0], ["<cub-0>"], torch.ones(1, 4))
    b = save_tokens(tmp_path / "b.safetensors", [2], ["<cub-2>"], torch.ones(1, 4))
    assert read_token_table(merge_token_tables([a, b], tmp_path / "m.safetensors", classes)).class_ids.tolist() == [0, 2]
    with pytest.raises(InputError, match="kept classes"):
        merge_token_tables([a], tmp_path / "m2.safetensors", classes)
