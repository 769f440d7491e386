"""Configuration overrides as Snakemake hands them over, and the offline (no wheel download) plan.

Snakemake's ``--config KEY=VALUE`` reads a nested VALUE with YAML's base loader, so every nested
scalar arrives as a string (``'datasets={"cub": {"keep_class": [0, 2]}}'`` becomes
``{"cub": {"keep_class": ["0", "2"]}}``). The first test walks the whole schema and checks that a
valid value for every key survives that trip with its type.
"""

from __future__ import annotations

import ast
import copy
import io
import json
import re
import shlex
import shutil
import tokenize
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake.cli import parse_config

from genpromp.config import load_config, load_schema
from genpromp.errors import ConfigError

from data_fixtures import TOKENIZER_DIR, write_cub_fixture
from workflow_utils import REPO, planned_rules, run_snakemake

BASE = REPO / "config" / "config.yaml"
NAMES = {"datasets": "cub_demo", "runs": "genpromp"}  # entries of the base config the walk overrides


def _resolve(schema, root):
    while "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _types(schema):
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _leaves(schema, root, path=()):
    """(dotted path as a tuple, schema) of every key that holds a value rather than named keys."""
    schema = _resolve(schema, root)
    if "properties" in schema:
        for key, sub in schema["properties"].items():
            yield from _leaves(sub, root, path + (key,))
        if "null" in _types(schema):
            yield path, schema  # the whole entry may be null (datasets.<name>.classifier)
    elif isinstance(schema.get("additionalProperties"), dict) and path[-1] in NAMES:
        yield from _leaves(schema["additionalProperties"], root, path + (NAMES[path[-1]],))
    else:
        yield path, schema


SPECIAL = {  # keys whose valid values depend on other keys or on a pattern
    ("runs", "genpromp", "tokens"): ["trained", "results/x/tokens.safetensors"],
    ("runs", "genpromp", "unet"): ["pretrained", "finetuned"],
    ("datasets", "cub_demo", "token_prefix"): ["bird7"],
    ("datasets", "cub_demo", "classifier", "name"): ["effnet_b7.v2"],
    ("test", "cam_groups"): [[{"name": "mid", "blocks": ["mid", "up"], "downsample": 8}]],
    ("datasets", "cub_demo", "keep_class"): [[0, 2], [1, 3, 5], None],
    ("evaluation", "sweep", "start"): [0.05],
}


def _sample(schema, root):
    """Valid values for a leaf: its default, null where allowed, and one more of each allowed type."""
    schema = _resolve(schema, root)
    values = []
    if schema.get("default") is not None and not isinstance(schema["default"], dict):
        values.append(schema["default"])
    for alt in schema.get("oneOf", []) + schema.get("anyOf", []):
        values += _sample(alt, root)
    if "enum" in schema:
        values += list(schema["enum"])
    for name in _types(schema):
        if name == "null":
            values.append(None)
        elif name == "boolean":
            values += [True, False]
        elif "enum" in schema:
            continue
        elif name == "integer":
            step = schema.get("multipleOf", 1)
            low = schema.get("minimum", 0)
            values.append(max(step, -(-low // step) * step) + 2 * step)
        elif name == "number":
            low, high = schema.get("minimum", 0), schema.get("maximum", 1)
            values.append(low + 0.25 * (high - low) if high > low else low)
        elif name == "string":
            values.append("some/path_1")
        elif name == "array" and schema.get("default"):
            values.append(list(reversed(schema["default"])))
    return values


def _nested(path, value):
    for key in reversed(path[1:]):
        value = {key: value}
    return value


def _get(config, path):
    for key in path:
        config = config[key]
    return config


def _same(a, b):
    """Equal with the same JSON types (True is not 1, 1 is not '1')."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _cases():
    schema = load_schema()
    cases = []
    for path, leaf in _leaves(schema, schema):
        values = SPECIAL.get(path) or _sample(leaf, schema)
        for value in values:
            cases.append(pytest.param(path, value, id=".".join(path) + "=" + json.dumps(value)))
    return cases


def test_the_walk_reaches_every_kind_of_key():
    ids = {c.id for c in _cases()}
    for expected in ["seed=", "datasets.cub_demo.keep_class=[0, 2]", "datasets.cub_demo.keep_class=null",
                     "datasets.cub_demo.classifier=null", "train_token.load_token_path=null",
                     "train_token.max_train_steps=null", "train_unet.scale_lr=false", "test.timesteps=",
                     "demo.tiny_model.block_out_channels=", "evaluation.sweep.step=", "compute.mixed_precision="]:
        assert any(i.startswith(expected) for i in ids), expected
    assert len(ids) > 150


@pytest.mark.parametrize("path, value", _cases())
def test_every_key_survives_the_command_line(path, value):
    """``--config 'top=<JSON>'`` as Snakemake parses it validates to the typed value."""
    argument = f"{path[0]}={json.dumps(_nested(path, value))}"
    override = parse_config([argument])
    config = load_config(BASE, copy.deepcopy(override))
    got = _get(config, path)
    assert _same(got, value), f"{argument}: got {got!r}, expected {value!r}"


def test_readme_style_overrides_as_strings():
    override = parse_config(['datasets={"cub_demo": {"keep_class": [0, 2], "classifier": null}}',
                             'test={"combine_ratio": 0, "timesteps": [0, 99], "eval_modes": [gtk]}',
                             'train_token={"load_token_path": null, "adam_epsilon": 1e-5, "scale_lr": false}'])
    assert override["datasets"]["cub_demo"]["keep_class"] == ["0", "2"]  # what the workflow receives
    config = load_config(BASE, override)
    ds = config["datasets"]["cub_demo"]
    assert ds["keep_class"] == [0, 2] and ds["classifier"] is None
    assert config["test"]["combine_ratio"] == 0 and config["test"]["timesteps"] == [0, 99]
    assert config["train_token"]["load_token_path"] is None and config["train_token"]["adam_epsilon"] == 1e-5
    assert config["train_token"]["scale_lr"] is False


@pytest.mark.parametrize("argument, message", [
    ('datasets={"cub_demo": {"keep_class": [0, x]}}',
     "config key datasets.cub_demo.keep_class.1 is the string 'x'; expected integer"),
    ('datasets={"cub_demo": {"keep_class": "zero"}}',
     "config key datasets.cub_demo.keep_class is the string 'zero'; expected null or a list of integer"),
    ('test={"batch_size": 3.5}', "config key test.batch_size is the string '3.5'; expected integer"),
    ('train_unet={"scale_lr": maybe}', "config key train_unet.scale_lr is the string 'maybe'; expected boolean"),
    ('test={"eval_modes": [top2]}', "config key test.eval_modes.0: 'top2' is not one of"),
])
def test_unreadable_string_is_named_with_its_cause(argument, message):
    with pytest.raises(ConfigError) as info:
        load_config(BASE, parse_config([argument]))
    assert message in str(info.value)


def _readme_example():
    """The --config arguments of the README's example command (the original README's last command)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"Example \(the original README's last command\):\s*```bash\n(.*?)```", text, re.S).group(1)
    words = shlex.split(block.replace("\\\n", " "))
    config = words[words.index("--configfile") + 1]
    return config, words[words.index("--config") + 1:]


def _stub_real_layout(workdir, tokenizer=True):
    """The files config/imagenet.yaml and the README example point at, as empty stand-ins."""
    sd = workdir / "ckpts/pretrains/stable-diffusion-v1-4"
    (sd / "unet").mkdir(parents=True)
    (sd / "unet/config.json").write_text("{}")
    if tokenizer:
        shutil.copytree(TOKENIZER_DIR, sd / "tokenizer")
    cls = workdir / "ckpts/classifications/imagenet_efficientnet-b7_3rdparty_8xb32-aa-advprop_in1k.json"
    cls.parent.mkdir(parents=True)
    cls.write_text("{}")
    (workdir / "ckpts/imagenet750/tokens").mkdir(parents=True)
    (workdir / "ckpts/imagenet750/unet").mkdir(parents=True)
    (workdir / "ckpts/imagenet750/unet/config.json").write_text("{}")


def test_readme_override_example_plans(tmp_path):
    """`snakemake -n` with the README's exact --config arguments is accepted and, the SD folder having
    its own tokenizer/, plans no assets job (the index reads that tokenizer)."""
    configfile, overrides = _readme_example()
    assert 'datasets={"imagenet": {"keep_class": [0, 9]}}' in overrides
    _stub_real_layout(tmp_path)
    proc = run_snakemake(tmp_path, "-n", "--printshellcmds", "--config", *overrides,
                         configfile=REPO / configfile)
    rules = planned_rules(proc.stdout)
    assert {"index", "import_scores", "tables"} <= rules, proc.stdout[-3000:]
    assert not {"assets", "assets_synsets"} & rules, proc.stdout[-3000:]
    assert "ckpts/pretrains/stable-diffusion-v1-4/tokenizer/vocab.json" in proc.stdout


def test_sd_folder_without_tokenizer_falls_back_to_the_assets_rule(tmp_path):
    _stub_real_layout(tmp_path, tokenizer=False)
    proc = run_snakemake(tmp_path, "-n", configfile=REPO / "config" / "imagenet.yaml")
    rules = planned_rules(proc.stdout)
    assert "assets" in rules and "assets_synsets" not in rules, proc.stdout[-3000:]


def _offline_config(tmp_path, root, **demo):
    config = yaml.safe_load((REPO / "config" / "cub.yaml").read_text())
    config["demo"] = {"enabled": False, **demo}
    config["pretrained"] = "sd"
    config["datasets"]["cub"].update(root=str(root), meta_word=None, classifier=None)
    config["test"]["eval_modes"] = ["gtk"]
    path = tmp_path / "offline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_offline_index_uses_the_pretrained_tokenizer(tmp_path):
    """A real-data run whose SD folder has tokenizer/ indexes with it: no resources/assets/ exists in
    the working directory, nothing is downloaded, and the meta tokens come from that tokenizer."""
    from transformers import CLIPTokenizer

    root = write_cub_fixture(tmp_path / "CUB")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(TOKENIZER_DIR, work / "sd" / "tokenizer")
    configfile = _offline_config(tmp_path, root)
    targets = [f"results/cub/index/{n}.parquet" for n in ("train", "test", "classes")]
    plan = run_snakemake(work, *targets, "-n", configfile=configfile)
    assert planned_rules(plan.stdout) == {"index"}, plan.stdout[-3000:]
    run_snakemake(work, *targets, configfile=configfile)
    assert not (work / "resources").exists()
    classes = pd.read_parquet(work / "results/cub/index/classes.parquet")
    tok = CLIPTokenizer.from_pretrained(work / "sd" / "tokenizer")
    # per-class meta tokens: the last word of "Red Bird" / "Blue Jay" is one token of this tokenizer
    assert classes["meta_token"].tolist() == ["bird", "jay"]
    assert all(len(tok.tokenize(t)) == 1 for t in classes["meta_token"])


def test_demo_synset_mapping_key_skips_the_timm_download(tmp_path):
    """With demo.synset_mapping naming an existing file the demo world reads it; only the tokenizer
    asset (which the demo builds its model from) is left to plan."""
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("".join(f"n{i:08d} thing {i}\n" for i in range(1000)))
    work = tmp_path / "work"
    work.mkdir()
    plain = run_snakemake(work, "-n")
    assert "assets_synsets" in planned_rules(plain.stdout)
    proc = run_snakemake(work, "-n", "--printshellcmds", "--config", f'demo={{"synset_mapping": "{mapping}"}}')
    rules = planned_rules(proc.stdout)
    assert "demo_world" in rules and "assets" in rules and "assets_synsets" not in rules, proc.stdout[-3000:]


# --- every schema key is documented and read ----------------------------------------------------------


def _schema_nodes(node, root, path=()):
    """(dotted path, schema) of every key at every depth: properties, named entries (``*``), list items (``[]``)."""
    for key, sub in node.get("properties", {}).items():
        yield path + (key,), sub
        yield from _schema_nodes(_resolve(sub, root), root, path + (key,))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield path + ("*",), extra
        yield from _schema_nodes(_resolve(extra, root), root, path + ("*",))
    items = node.get("items")
    if isinstance(items, dict) and "properties" in _resolve(items, root):
        yield path + ("[]",), items
        yield from _schema_nodes(_resolve(items, root), root, path + ("[]",))


def test_every_schema_key_has_a_description():
    schema = load_schema()
    nodes = list(_schema_nodes(schema, schema))
    missing = [".".join(path) for path, node in nodes
               if not str(node.get("description") or _resolve(node, schema).get("description") or "").strip()]
    assert len(nodes) > 100 and not missing, missing


def _schema_leaves(node, root, path=()):
    """Dotted paths of the keys that hold values; named entries and list items add no path part."""
    node = _resolve(node, root)
    extra, items = node.get("additionalProperties"), node.get("items")
    if "properties" in node:
        for key, sub in node["properties"].items():
            yield from _schema_leaves(sub, root, path + (key,))
    elif isinstance(extra, dict) and "properties" in _resolve(extra, root):
        yield from _schema_leaves(extra, root, path)
    elif isinstance(items, dict) and "properties" in _resolve(items, root):
        yield from _schema_leaves(items, root, path)
    else:
        yield path


def _code_only(text):
    """``text`` (Python or Snakemake) with its comments and docstrings removed (line breaks kept)."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    chars = list(text)
    toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    starts = (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT)
    for i, tok in enumerate(toks):
        docstring = (tok.type == tokenize.STRING and (i == 0 or toks[i - 1].type in starts)
                     and i + 1 < len(toks) and toks[i + 1].type == tokenize.NEWLINE)
        if tok.type == tokenize.COMMENT or docstring:
            for k in range(offsets[tok.start[0] - 1] + tok.start[1], offsets[tok.end[0] - 1] + tok.end[1]):
                chars[k] = chars[k] if chars[k] == "\n" else ""
    return "".join(chars)


_WORD = r"""["'](\w+)["']"""
_KEY = rf"""(?:\[\s*{_WORD}\s*\]|\.get\(\s*{_WORD})"""   # ["key"] or .get("key"
_DYN = r"""(?:\[\s*[^\]"'\[]+\])?"""                     # an optional [name] between: datasets[name]
_ASSIGN = re.compile(r"^[ \t]*(?:for[ \t]+)?(\w+(?:[ \t]*,[ \t]*\w+)*)[ \t]*(?:=(?!=)|in\b)(.*)$", re.M)


def _parents(value, aliases):
    """The config sections an expression stands for: its last quoted key, else the aliases it uses."""
    keys = re.findall(_KEY, re.split(r"\s+(?:or|if)\s+", value)[0])
    if keys:
        return {keys[-1][0] or keys[-1][1]}
    return set().union(*[aliases.get(w, set()) for w in re.findall(r"\b\w+\b", value)])


def _split_top(value):
    parts, depth, current = [], 0, ""
    for ch in value:
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            parts, current = parts + [current], ""
        else:
            current += ch
    return parts + [current]


def _aliases(text, seed):
    """Names bound to a config section: ``x = config["test"]``, ``for g in groups``, ``a, b = ..["a"], ..["b"]``."""
    aliases = {k: set(v) for k, v in seed.items()}
    for _ in range(3):
        for m in _ASSIGN.finditer(text):
            names = [n.strip() for n in m.group(1).split(",")]
            values = _split_top(m.group(2).strip().removesuffix(":"))
            values = values if len(values) == len(names) else [m.group(2)] * len(names)
            for name, value in zip(names, values):
                found = _parents(value, aliases)
                if found:
                    aliases.setdefault(name, set()).update(found)
    return aliases


def _section_reads(text, aliases):
    """(section, key) pairs of one file: chains ``["s"]["k"]``, reads through aliases or dicts named after
    their section (``evaluation["frame"]``, ``dataset["root"]``), and ``["s"][k] for k in ("a", "b")``."""
    pairs = set()
    for m in re.finditer(rf"{_KEY}\s*{_DYN}\s*{_KEY}", text):
        pairs.add((m.group(1) or m.group(2), m.group(3) or m.group(4)))
    for m in re.finditer(rf"\b(\w+)\s*{_DYN}\s*{_KEY}", text):
        name = m.group(1)
        for section in aliases.get(name, set()) | {name, name + "s"}:
            pairs.add((section, m.group(2) or m.group(3)))
    for m in re.finditer(rf"(\w+)?((?:\[\s*{_WORD}\s*\])?)\[(\w+)\]\)*\s+for\s+(\w+)\s+in\s+\(([^)]*)\)", text):
        sections = {m.group(3)} if m.group(3) else aliases.get(m.group(1), set())
        if m.group(4) == m.group(5):
            pairs |= {(s, k) for s in sections for k in re.findall(_WORD, m.group(6))}
    return pairs


def _param_aliases(texts, aliases):
    """First parameters of functions called with a config section: ``groups_from_config(test["cam_groups"])``."""
    defs = {m.group(1): m.group(2) for text in texts.values() for m in re.finditer(r"\bdef (\w+)\(\s*(\w+)", text)}
    params = {}
    for path, text in texts.items():
        for m in re.finditer(r"\b(\w+)\(\s*([^,()]*(?:\([^()]*\))?[^,()]*)", text):
            if m.group(1) in defs:
                params.setdefault(defs[m.group(1)], set()).update(_parents(m.group(2), aliases[path]))
    return params


def _dataclass_reads(sources, aliases):
    """(section, field) of dataclasses filled from a section: ``settings_from_section(cls, config, "s")``
    inside the class, or ``Cls(..., **alias)``."""
    fields, pairs = {}, set()
    trees = {path: ast.parse(text) for path, text in sources.items()}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names = [s.target.id for s in node.body
                         if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
                fields[node.name] = names
                for call in ast.walk(node):
                    if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "settings_from_section":
                        pairs |= {(a.value, f) for a in call.args if isinstance(a, ast.Constant)
                                  and isinstance(a.value, str) for f in names}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in fields:
                for kw in node.keywords:
                    if kw.arg is None and isinstance(kw.value, ast.Name):
                        pairs |= {(s, f) for s in aliases[path].get(kw.value.id, ()) for f in fields[node.func.id]}
    return pairs


def _config_reads(root=REPO):
    """Every name the package and workflow read (quoted word, attribute, dataclass field) and the
    (section, key) pairs they read, from comment- and docstring-free source."""
    paths = sorted([*root.glob("genpromp/**/*.py"), *root.glob("workflow/**/*.py"), *root.glob("workflow/**/*.smk"),
                    root / "Snakefile"])
    texts = {p: _code_only(p.read_text()) for p in paths}
    aliases = {p: _aliases(t, {}) for p, t in texts.items()}
    for _ in range(2):
        params = _param_aliases(texts, aliases)
        aliases = {p: _aliases(t, params) for p, t in texts.items()}
    sources = {p: p.read_text() for p in paths if p.suffix == ".py"}
    pairs = _dataclass_reads(sources, aliases)
    names = set()
    for path, text in texts.items():
        pairs |= _section_reads(text, aliases[path])
        names |= set(re.findall(_WORD, text)) | set(re.findall(r"\.(\w+)", text))
    names |= {f for _, f in pairs}
    return names, pairs


# Keys read in a way the scan cannot tie to their section, as {"dotted.key": "where and how it is read"}.
# Keep it tiny: every entry is a key this test cannot check.
READ_UNSEEN = {}


def _unread_keys(schema):
    """Leaf keys no code reads. A key name that also names a key of another section counts as read only
    with its section: a chain, an alias, a dataclass filled from it, or a dict named after it (``sweep``
    stands for any ``*_sweep`` section)."""
    names, pairs = _config_reads()
    leaves = list(_schema_leaves(schema, schema))
    parents = {}
    for path in leaves:
        parents.setdefault(path[-1], set()).add(path[-2] if len(path) > 1 else None)
    unread = []
    for path in leaves:
        key, section = path[-1], path[-2] if len(path) > 1 else None
        shared = len(parents[key]) > 1 and section is not None
        read = any(s == section or section.endswith("_" + s) for s, k in pairs if k == key) if shared \
            else key in names
        if not read and ".".join(path) not in READ_UNSEEN:
            unread.append(".".join(path))
    return unread


def test_every_schema_key_is_read():
    """A key nothing reads is a setting that silently does nothing: remove it from the schema and configs."""
    assert not _unread_keys(load_schema())


def test_the_read_scan_finds_an_unread_key():
    schema = load_schema()
    schema["properties"]["train_unet"]["properties"]["enabled"] = {"type": "boolean", "description": "x"}
    schema["properties"]["test"]["properties"]["unused_knob"] = {"type": "integer", "description": "x"}
    assert _unread_keys(schema) == ["train_unet.enabled", "test.unused_knob"]
