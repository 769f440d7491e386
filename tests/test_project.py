"""Project-level checks: install metadata, configs, CLI help, prompts and code safety."""

import ast
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from genpromp.config import load_config
from genpromp.layout import Variant
from genpromp.errors import ConfigError
from genpromp.prompts import TEMPLATES, concept_token, meta_token_for, token_index

REPO = Path(__file__).resolve().parent.parent


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = (project["dependencies"] + project["optional-dependencies"]["test"]
              + project["optional-dependencies"]["tracking"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(pinned)
    assert "python=3.11" in env["dependencies"]
    assert all("==" in p for p in pinned), "every dependency is pinned"


@pytest.mark.parametrize("name", ["config.yaml", "cub.yaml", "imagenet.yaml"])
def test_shipped_configs_validate(name):
    config = load_config(REPO / "config" / name)
    assert config["test"]["timesteps"] == [0, 99]


def test_paper_settings_in_configs():
    cub = load_config(REPO / "config" / "cub.yaml")
    imnet = load_config(REPO / "config" / "imagenet.yaml")
    assert cub["datasets"]["cub"]["cam_thr"] == 0.23 and imnet["datasets"]["imagenet"]["cam_thr"] == 0.25
    assert cub["train_unet"]["learning_rate"] == 5e-6 and cub["train_unet"]["max_train_steps"] == 250
    assert imnet["train_unet"]["learning_rate"] == 5e-8 and imnet["train_unet"]["gradient_accumulation_steps"] == 32
    assert cub["test"]["combine_ratio"] == 0.6 and cub["test"]["resolution"] == 512


@pytest.mark.parametrize("override, key", [
    ({"test": {"combne_ratio": 0.5}}, "test.combne_ratio"),
    ({"tset": {}}, "tset"),
    ({"test": {"batch_size": "eight"}}, "test.batch_size"),
    ({"test": {"combine_ratio": 1.5}}, "test.combine_ratio"),
    ({"datasets": {"cub_demo": {"cam_thr": -0.1}}}, "datasets.cub_demo.cam_thr"),
    ({"evaluation": {"sweep": {"step": 0}}}, "evaluation.sweep.step"),
    ({"datasets": {"cub_demo": {"keep_class": [5, 2]}}}, "datasets.cub_demo.keep_class"),
])
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(REPO / "config" / "config.yaml", override)


def test_every_original_option_has_a_home():
    """The original's --opt options (seed README § 4.5) map onto config keys."""
    config = load_config(REPO / "config" / "config.yaml")
    homes = {
        "data.keep_class": config["datasets"]["cub_demo"]["keep_class"],
        "train.batch_size": config["train_token"]["batch_size"],
        "train.num_train_epochs": config["train_token"]["num_train_epochs"],
        "train.save_steps": config["train_unet"]["save_steps"],
        "train.max_train_steps": config["train_unet"]["max_train_steps"],
        "train.gradient_accumulation_steps": config["train_token"]["gradient_accumulation_steps"],
        "train.learning_rate": config["train_token"]["learning_rate"],
        "train.scale_lr": config["train_token"]["scale_lr"],
        "train.load_pretrain_path": config["pretrained"],
        "train.load_token_path": config["train_token"]["load_token_path"],
        "test.batch_size": config["test"]["batch_size"],
        "test.cam_thr": config["datasets"]["cub_demo"]["cam_thr"],
        "test.combine_ratio": config["test"]["combine_ratio"],
        "test.load_class_path": config["datasets"]["cub_demo"]["classifier"]["path"],
        "test.load_unet_path": config["train_unet"]["load_unet_path"],
        "test.save_vis_path": config["test"]["n_vis"],
        "test.eval_mode": config["test"]["eval_modes"],
    }
    # the README's table of original options: every one that has a config key is listed above
    readme = (REPO / "README.md").read_text()
    options = {f"{a}.{b}" for a, b in re.findall(r"^\| `\{'(\w+)': \{'(\w+)':", readme, re.M)}
    assert set(homes) == options - {"train.save_path", "test.save_log_path"}


def test_variant_name_encodes_what_changes_maps():
    assert Variant("top1", 0.6, [0, 99]).name == "top1_w0.60_t0-99"
    assert Variant("gtk", 0, [0]).name == "gtk_w0.00_t0"
    assert Variant("gtk", 0.6, [0, 99]).name != Variant("gtk", 0.4, [0, 99]).name


def test_token_index_is_derived_from_templates(tokenizer):
    assert token_index(tokenizer, TEMPLATES) == 5
    assert token_index(tokenizer, ["{}"]) == 1
    with pytest.raises(Exception, match="different positions"):
        token_index(tokenizer, ["a photo of a {}", "a {}"])


def test_meta_token_rule(tokenizer):
    # first synonym whose last word is a single CLIP token
    assert len(tokenizer.tokenize("goldfinch")) == 2  # "gold" + "finch": not a single token
    assert meta_token_for("goldfinch, Carduelis carduelis", tokenizer) == "finch"
    assert meta_token_for("great white shark, white shark", tokenizer) == "shark"
    assert meta_token_for("red striped triangle", tokenizer) == "triangle"
    # none is a single token: the last sub-token of the first synonym's word
    pieces = tokenizer.tokenize("tench")
    assert len(pieces) > 1
    assert meta_token_for("tench, Tinca tinca", tokenizer) == pieces[-1].replace("</w>", "")
    assert concept_token("cub", 3) == "<cub-3>"


def test_cli_help_lists_every_command(capsys):
    from genpromp.cli import build_parser

    parser = build_parser([])
    help_text = parser.format_help()
    for command in ["assets", "index", "import-scores", "train-token", "train-unet", "extract-cams", "evaluate"]:
        assert command in help_text


def test_cli_command_table_matches_the_modules():
    """cli.COMMANDS (what `genpromp --help` shows without importing the modules) names every command the
    modules register, with the module that registers it and the same one-line help."""
    import argparse
    import importlib

    from genpromp.cli import COMMANDS, build_parser

    registered = {}
    for module in dict.fromkeys(m for _, m, _ in COMMANDS):
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register_cli(sub)
        for action in sub._choices_actions:
            registered[action.dest] = (module, action.help)
    assert registered == {name: (module, help_line) for name, module, help_line in COMMANDS}
    # a command's own parser is the full one (its options), the others are one-line placeholders
    parser = build_parser(["index", "--help"])
    index_parser = parser._subparsers._group_actions[0].choices["index"]
    assert any(a.dest == "verify" for a in index_parser._actions)


def test_cli_light_command_does_not_import_torch():
    """`genpromp index` (and `--help`) start without importing torch."""
    import subprocess
    import sys

    code = ("import sys; from genpromp.cli import build_parser; build_parser(['index', 'x']); "
            "build_parser([]).format_help(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


BANNED_CALLS = {"eval", "exec"}


def _python_files():
    for folder in ["genpromp", "workflow/scripts", "benchmarks"]:
        yield from (REPO / folder).rglob("*.py")


def test_no_eval_exec_or_unsafe_pickle():
    offenders = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if isinstance(func, ast.Name) and name in BANNED_CALLS:
                    offenders.append(f"{path}:{node.lineno} {name}()")
                if name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                        offenders.append(f"{path}:{node.lineno} torch.load without weights_only=True")
                if name in {"loads", "load"} and getattr(func.value, "id", "") == "pickle":
                    offenders.append(f"{path}:{node.lineno} pickle.{name}")
    assert not offenders, offenders


def test_no_hardcoded_cuda():
    offenders = [f"{p}" for p in _python_files() if re.search(r"""['"]cuda(:\d)?['"]""", p.read_text())
                 and "benchmarks" not in str(p)]
    assert not offenders, offenders


def test_command_line_strings_are_read_as_the_schema_type():
    """Snakemake's --config hands nested values over as strings ('0.4'); they are read as YAML
    scalars only where the schema expects that type."""
    config = load_config(REPO / "config" / "config.yaml", {"test": {"combine_ratio": "0.4", "batch_size": "3"},
                                                           "train_token": {"scale_lr": "false"}})
    assert config["test"]["combine_ratio"] == 0.4 and config["test"]["batch_size"] == 3
    assert config["train_token"]["scale_lr"] is False
    with pytest.raises(ConfigError, match="test.batch_size"):
        load_config(REPO / "config" / "config.yaml", {"test": {"batch_size": "3.5"}})


def test_gitignore_covers_the_real_data_layout(tmp_path):
    """data/ and ckpts/ (where the README puts real datasets and weights) are ignored; a file of the same
    name deeper in the tree is not (the patterns are anchored)."""
    import subprocess

    def ignored(path):
        return subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", path]).returncode == 0

    assert ignored("data/CUB_200_2011/images.txt") and ignored("ckpts/pretrains/stable-diffusion-v1-4/unet/x")
    assert not ignored("genpromp/data/indexing.py") and not ignored("docs/ckpts/x.md")


def test_atomic_outputs_get_umask_permissions(tmp_path):
    """Tokens, run embeddings and a saved UNet folder (safetensors writes 0600 files, mkdtemp 0700 folders)
    end up 0644 / 0755 under umask 022, like any file the user creates."""
    import os
    import stat

    import torch
    from diffusers import UNet2DConditionModel

    from genpromp.cams.cache import write_cam_shard
    from genpromp.cams.embeddings import ClassEmbeddings, write_embeddings
    from genpromp.io import atomic_dir
    from genpromp.training.checkpoints import save_tokens

    old = os.umask(0o022)
    try:
        tokens = save_tokens(tmp_path / "tokens" / "tokens.safetensors", [0, 1], ["<a-0>", "<a-1>"], torch.zeros(2, 8))
        emb = write_embeddings(tmp_path / "run" / "embeddings.safetensors",
                               ClassEmbeddings(torch.zeros(2, 77, 8), torch.zeros(2, 77, 8), torch.tensor([0, 1])))
        shard = tmp_path / "cams" / "shard-00000.npz"
        write_cam_shard(shard, ["a"], [[0]], torch.zeros(1, 1, 4, 4).numpy().astype("float16"))
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                                    cross_attention_dim=8, attention_head_dim=2,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        with atomic_dir(tmp_path / "unet") as tmp:  # as stage 2 writes the finetuned UNet
            unet.save_pretrained(tmp)
            (tmp / "sub").mkdir(mode=0o700)
    finally:
        os.umask(old)
    files = [Path(tokens), Path(emb), shard] + [p for p in (tmp_path / "unet").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "unet").iterdir())
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    for folder in [tmp_path / "unet", tmp_path / "unet" / "sub"]:
        assert oct(stat.S_IMODE(folder.stat().st_mode)) == "0o755"


def _imported_names(path, package_dir):
    """Every module (and ``from`` name) a file imports, relative imports resolved against its package."""
    package = list(path.relative_to(package_dir.parent).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def _demo_importers(package_dir):
    """``path: name`` of every import of ``<package>.demo`` outside ``<package>/demo/``."""
    demo = f"{package_dir.name}.demo"
    return [f"{path.relative_to(package_dir.parent)}: {name}"
            for path in sorted(package_dir.rglob("*.py")) if (package_dir / "demo") not in path.parents
            for name in _imported_names(path, package_dir) if name == demo or name.startswith(demo + ".")]


def test_method_packages_never_import_the_demo():
    assert _demo_importers(REPO / "genpromp") == []


@pytest.mark.parametrize("where, line, name", [
    ("cams/x.py", "from ..demo.world import COLOURS", "genpromp.demo.world"),
    ("cams/x.py", "from .. import demo", "genpromp.demo"),
    ("x.py", "from .demo import pretrain", "genpromp.demo"),
    ("evaluation/x.py", "import genpromp.demo.tiny", "genpromp.demo.tiny"),
    ("data/x.py", "from genpromp import demo", "genpromp.demo"),
])
def test_demo_import_check_catches_an_injected_import(tmp_path, where, line, name):
    package = tmp_path / "genpromp"
    for folder in ("demo", "cams", "evaluation", "data"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "demo" / "world.py").write_text("from ..cams import x\nfrom . import tiny\n")
    (package / "cams" / "ok.py").write_text("from ..demonstration import y\nfrom . import demo_like\n")
    assert _demo_importers(package) == []
    (package / where).write_text(line + "\n")
    found = _demo_importers(package)
    assert found and all(f.startswith(f"genpromp/{where}: genpromp.demo") for f in found)
    assert f"genpromp/{where}: {name}" in found


def test_workflow_parse_does_not_import_torch():
    """Every job of a cluster run parses the Snakefile again: the genpromp modules the rule files import
    must not pull in torch (seconds per parse, times every job)."""
    import subprocess
    import sys

    modules = set()
    for f in [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]:
        for module, names in re.findall(r"^from (genpromp[\w.]*) import ([\w, ]+)$", f.read_text(), re.M):
            # `from genpromp import layout, plan` imports the submodules
            modules |= {f"genpromp.{n.strip()}" for n in names.split(",")} if module == "genpromp" else {module}
    modules = sorted(modules)
    assert "genpromp.demo.world" in modules and "genpromp.plan" in modules
    code = f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False", f"importing {modules} imports torch"
