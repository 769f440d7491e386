"""genpromp.layout: the variant value, the path functions, and that nothing else formats a results path or
parses a variant name."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from genpromp import layout
from genpromp.errors import GenprompError
from genpromp.layout import Variant

REPO = Path(__file__).resolve().parents[1]


def test_variant_name_round_trip():
    v = Variant("top1", 0.6, [0, 99])
    assert v.name == "top1_w0.60_t0-99" == str(v)
    assert Variant.parse("top1_w0.60_t0-99") == v
    assert Variant.parse("top5_w1.00_t0-50-99") == Variant("top5", 1.0, (0, 50, 99))
    assert Variant("gtk", 0, [0]).name == "gtk_w0.00_t0"
    assert Variant("gtk", 0.6, [0, 99]).name != Variant("gtk", 0.4, [0, 99]).name
    # the ratio is the one the name states (two decimals)
    assert Variant("gtk", 0.604, [0]).ratio == 0.6


@pytest.mark.parametrize("name", ["top3_w0.6_t0", "top1_w_t0-99", "top1_w0.60_t", "top1_w0.60_t0--99", "gtk_w0.60"])
def test_variant_parse_refuses_other_shapes(name):
    with pytest.raises(GenprompError, match="not <gtk|top1|top5>"):
        Variant.parse(name)


def test_variant_roles_scores_and_heldout():
    assert Variant.parse("gtk_w0.60_t0-99").roles == ("gt",)
    assert Variant.parse("top1_w0.60_t0-99").roles == ("top1", "gt")
    assert Variant.parse("top5_w0.60_t0-99").roles == ("top1", "top2", "top3", "top4", "top5", "gt")
    assert not Variant.parse("gtk_w0.60_t0-99").needs_scores and Variant.parse("top5_w0.60_t0").needs_scores
    assert Variant.parse("top5_w0.40_t0-50").heldout().name == "gtk_w0.40_t0-50"
    with pytest.raises(GenprompError, match="unknown CAM mode"):
        Variant("top2", 0.6, (0,))


def test_variant_pattern_matches_exactly_the_names():
    pattern = re.compile(layout.VARIANT_PATTERN)
    assert pattern.fullmatch(Variant("top5", 0.25, (0, 50, 99)).name)
    assert not pattern.fullmatch("top3_w0.60_t0-99")


def test_paths_take_wildcards_and_values():
    assert layout.cam_shard("{dataset}", "{run}", "{variant}", "{shard}") == \
        "results/{dataset}/{run}/cams/{variant}/shard-{shard}.npz"
    v = Variant("top1", 0.6, (0, 99))
    assert layout.cam_shard("cub", "genpromp", v, 3) == "results/cub/genpromp/cams/top1_w0.60_t0-99/shard-00003.npz"
    assert layout.cam_shard("cub", "genpromp", v, np.int64(12), split="heldout") == \
        "results/cub/genpromp/heldout/cams/top1_w0.60_t0-99/shard-00012.npz"
    assert layout.token_shard("cub", 2) == "results/cub/tokens/shard-2.safetensors"
    assert layout.eval_part("cub", "r", "gtk_w0.60_t0-99", 1, "json") == \
        "results/cub/r/eval/gtk_w0.60_t0-99/parts/part-00001.json"
    assert layout.summary("cub", "r", v, split="heldout") == "results/cub/r/heldout/eval/top1_w0.60_t0-99/summary.json"
    assert layout.unet_log("cub") == "results/cub/unet.log.csv"
    assert layout.index_table("{dataset}", "heldout") == "results/{dataset}/index/heldout.parquet"
    with pytest.raises(GenprompError, match="unknown index table"):
        layout.index_table("cub", "val")
    assert layout.latent_shard("{dataset}", "{shard}", split="{split}") == \
        "results/{dataset}/latents/{split}/shard-{shard}.safetensors"
    assert layout.latent_shard("cub", 3) == "results/cub/latents/test/shard-00003.safetensors"
    assert layout.latent_shards("cub", 9, 4, split="heldout")[-1] == "results/cub/latents/heldout/shard-00002.safetensors"
    with pytest.raises(GenprompError, match="no latent cache for split 'train'"):
        layout.latent_dir("cub", "train")


def test_shard_count_and_list():
    assert [layout.shard_count(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [1, 1, 1, 2, 2, 3]
    assert layout.cam_shards("d", "r", "gtk_w0.00_t0", 9, 4)[-1] == "results/d/r/cams/gtk_w0.00_t0/shard-00002.npz"


def test_parse_results_path():
    assert layout.parse_results_path("results/cub/index/test.parquet") == {"dataset": "cub"}
    assert layout.parse_results_path("/x/results/cub/genpromp/cams/top1_w0.60_t0-99/") == {
        "dataset": "cub", "run": "genpromp", "variant": "top1_w0.60_t0-99", "split": "test"}
    assert layout.parse_results_path("results/cub/genpromp/heldout/cams/gtk_w0.60_t0-99")["split"] == "heldout"
    assert layout.parse_results_path("maps/top1_w0.60_t0-99") == {}
    assert layout.parse_results_path("test.parquet") == {}


# ---------------------------------------------------------------- the contract holds everywhere else
_RESULTS_LITERAL = re.compile(r"""(?<![<\w])results/(\{|["'])|["']results["']""")
_VARIANT_REGEX = re.compile(r"gtk\|top1\|top5|_w\(\?P|_w\[0-9")


def _code_strings(path):
    """(line, text) of the string pieces that are code, not prose: f-string parts and plain constants outside
    docstrings and argparse help / description texts."""
    tree = ast.parse(path.read_text())
    prose = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and ast.get_docstring(node):
            prose.add(id(node.body[0].value))
        if isinstance(node, ast.keyword) and node.arg in ("help", "description", "epilog"):
            prose.update(id(n) for n in ast.walk(node.value))
        name = getattr(node.func, "attr", None) or getattr(node.func, "id", "") if isinstance(node, ast.Call) else ""
        if name in ("InputError", "GenprompError", "ConfigError"):
            prose.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            yield node.lineno, node.value


def test_only_the_contract_formats_results_paths_or_parses_variants():
    offenders = []
    for path in sorted((REPO / "genpromp").rglob("*.py")) + sorted((REPO / "workflow/scripts").glob("*.py")):
        if path.name == "layout.py":
            continue
        for line, text in _code_strings(path):
            if _RESULTS_LITERAL.search(text) or text.startswith("results/") or _VARIANT_REGEX.search(text):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {text[:60]!r}")
    for path in sorted((REPO / "workflow/rules").glob("*.smk")) + [REPO / "Snakefile"]:
        for n, text in enumerate(path.read_text().splitlines(), 1):
            code = text.split("#", 1)[0]
            if re.search(r"""["']results/""", code) or _VARIANT_REGEX.search(code):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {code.strip()[:60]}")
    assert not offenders, "results paths / variant parsing outside genpromp/layout.py:\n" + "\n".join(offenders)


def test_contract_scan_catches_an_offender(tmp_path, monkeypatch):
    bad = tmp_path / "bad.py"
    bad.write_text('def f(d):\n    """results/<d>/index is documented here."""\n    return f"results/{d}/index"\n')
    assert [t for _, t in _code_strings(bad) if t.startswith("results/")] == ["results/"]
