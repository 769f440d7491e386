"""Rehearsal of the real path: full-size SD-1.4 stand-ins through the README's commands, offline.

The commands are read from README.md (section "Rehearsal: the real path on stand-in files"), so the
README cannot drift from what is tested. They run in a scratch folder whose Snakefile, workflow/,
config/ and .venv/ link to this checkout; the network is cut (a new network namespace with
``unshare -rn`` where the kernel allows it, else unreachable proxies and offline switches), and the
CLIP tokenizer assets are not available to the workflow, so indexing must use the SD folder's own
tokenizer/. Heavy: ~12 GB of disk (removed at the end), up to ~20 GB of RAM, several minutes.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from genpromp.rehearsal import HOSTILE_MARKER, KEPT_CLASSES, RELEASED_UNET_KEY_SCALE
from genpromp.training.checkpoints import read_token_table
from workflow_utils import REPO

SECTION = "### Rehearsal: the real path on stand-in files"
LINKED = ("Snakefile", "workflow", "config", ".venv")
TIMEOUT_S = 1500
PROBE_KEY = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"


def readme_commands(readme=REPO / "README.md"):
    """The shell commands of the first ```bash block after SECTION (continuation lines joined)."""
    text = readme.read_text()
    start = text.index(SECTION)
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block, f"README.md: no ```bash block after {SECTION!r}"
    joined = block.group(1).replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def offline_prefix():
    """(argv prefix, extra env) that cut the network for a command."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-rn"], {}
    dead = "http://127.0.0.1:9"
    return [], {"PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead}


def run(cmd, cwd, offline):
    prefix, env = offline_prefix() if offline else ([], {})
    proc = subprocess.run(prefix + ["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=dict(os.environ, PYTHONHASHSEED="0", **env))
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        logs = "".join(f"\n--- {name} (tail) ---\n{(Path(cwd) / name).read_text()[-4000:]}"
                       for name in dict.fromkeys(re.findall(r"log: (\S+) \(check log", out))
                       if (Path(cwd) / name).is_file())
        pytest.fail(f"{cmd}\nfailed ({proc.returncode}):\n{out[-6000:]}{logs}")
    return proc.stdout + proc.stderr


def benchmarks(workdir):
    """{job: (wall s, peak RSS MB)} from every logs/**/*.bench.tsv."""
    out = {}
    for path in sorted((workdir / "logs").rglob("*.bench.tsv")):
        with open(path) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        out[str(path.relative_to(workdir / "logs")).removesuffix(".bench.tsv")] = (float(row["s"]),
                                                                                   float(row["max_rss"]))
    return out


def print_benchmarks(workdir, title):
    print(f"\n{title}\n{'job':<58} {'wall s':>8} {'peak MB':>9}")
    for job, (seconds, rss) in benchmarks(workdir).items():
        print(f"{job:<58} {seconds:>8.1f} {rss:>9.0f}")


def check_hostile_refused(hostile):
    """Neither loader unpickles the hostile files, and the marker their code would write never appears."""
    from genpromp.errors import InputError
    from genpromp.models.loading import load_unet
    from genpromp.training.checkpoints import import_original_tokens

    marker = hostile / HOSTILE_MARKER
    with pytest.raises(InputError, match="refused to load"):
        import_original_tokens(hostile / "tokens")
    with pytest.raises(InputError, match=r"(?s)diffusion_pytorch_model\.bin.*weights_only=True"):
        load_unet(hostile / "unet")
    assert not marker.exists()
    # the files really are hostile: a plain (unsafe) load runs their code
    torch.load(hostile / "tokens" / "0.bin", weights_only=False)
    assert marker.exists()
    marker.unlink()


def _tree(root):
    """{relative path: bytes} of every regular file under ``root`` (symlinks followed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_fixture_data_is_deterministic_and_real_layout(tmp_path, tokenizer_dir):
    from genpromp.rehearsal import build_rehearsal, cub_class_names

    a = build_rehearsal(tmp_path / "a", tokenizer_dir, seed=3, with_model=False)
    build_rehearsal(tmp_path / "b", tokenizer_dir, seed=3, with_model=False)
    tree_a = {k: v for k, v in _tree(tmp_path / "a").items() if "hostile" not in k}
    tree_b = {k: v for k, v in _tree(tmp_path / "b").items() if "hostile" not in k}
    assert tree_a.keys() == tree_b.keys() and all(tree_a[k] == tree_b[k] for k in tree_a if not k.endswith(".bin"))
    for k in (k for k in tree_a if k.endswith(".bin")):   # torch pickles embed a random record id: compare values
        va = torch.load(tmp_path / "a" / k, weights_only=True)
        vb = torch.load(tmp_path / "b" / k, weights_only=True)
        assert va.keys() == vb.keys() and all(torch.equal(va[t], vb[t]) for t in va)
    cub = a["cub"]
    assert (cub / "images").is_symlink() and not (cub / "images").resolve().is_relative_to(cub.resolve())
    classes = (cub / "classes.txt").read_text().splitlines()
    assert len(classes) == 200 and classes[0] == "1 001.Black_footed_Albatross" and classes == [
        f"{i + 1} {n}" for i, n in enumerate(cub_class_names())]
    assert len(set(cub_class_names())) == 200
    images = [line.split()[1] for line in (cub / "images.txt").read_text().splitlines()]
    assert len(images) == 3 * len(KEPT_CLASSES) and all((cub / "images" / rel).is_file() for rel in images)
    split = [int(line.split()[1]) for line in (cub / "train_test_split.txt").read_text().splitlines()]
    test_images = [rel for rel, is_train in zip(images, split) if not is_train]
    scores = json.loads(a["classifier"].read_text())
    assert sorted(scores) == sorted(test_images) and all(len(v["pred_scores"]) == 200 for v in scores.values())
    top1 = {rel: max(range(200), key=v["pred_scores"].__getitem__) for rel, v in scores.items()}
    true = {rel: int(rel[:3]) - 1 for rel in test_images}
    assert sum(top1[r] != true[r] for r in test_images) == 1, "one wrong top-1 prediction exercises two prompts"
    tokens = sorted(a["tokens"].glob("*.bin"))
    assert [next(iter(torch.load(t, weights_only=True))) for t in tokens] == [f"<cub-{c}>" for c in KEPT_CLASSES]
    check_hostile_refused(a["hostile"])


def test_resources_from_measurement():
    """GPU memory by hand: UNet 859.52 M, text encoder 123.06 M, VAE 83.65 M parameters x 4 bytes,
    2.1 GB of activations per stage-1 sample, the measured stage-2 activations, 1 GB of CUDA context."""
    from genpromp.config import load_config
    from genpromp.resources import gpu_mem_mb, job_resources

    weights = (859.52 + 123.06 + 83.65) * 4 / 1000                    # 4.26492 GB
    stage2_state = (4 * 859.52 + 123.06 + 83.65) * 4 / 1000            # 14.57916 GB
    cub = load_config(REPO / "config/cub.yaml")
    imagenet = load_config(REPO / "config/imagenet.yaml")
    assert gpu_mem_mb("train_token", cub) == int(-(-(weights + 4 * 2 * 2.1 + 1) * 1000 // 1)) == 22065
    act2, act2_ckpt = 1.78 * 2**30 / 1e9, 0.45 * 2**30 / 1e9          # stage-2 GB per sample (bench_unet_memory)
    adamw_step = 859.52 * 4 / 1000                                     # AdamW's sqrt temporary, 3.43808 GB
    assert gpu_mem_mb("train_unet", cub) == int(-(-(stage2_state + 2 * act2 + 1) * 1000 // 1)) == 19402
    unet4 = {**cub, "train_unet": {**cub["train_unet"], "batch_size": 4}}
    assert gpu_mem_mb("train_unet", unet4) == int(-(-(stage2_state + 4 * act2 + 1) * 1000 // 1)) == 23225
    ckpt4 = {**cub, "train_unet": {**cub["train_unet"], "batch_size": 4, "gradient_checkpointing": True}}
    assert 4 * act2_ckpt < adamw_step                                  # the optimizer step is the peak
    assert gpu_mem_mb("train_unet", ckpt4) == int(-(-(stage2_state + adamw_step + 1) * 1000 // 1)) == 19018
    for config in (cub, imagenet):                                       # the paper configs fit a 24 GB GPU
        assert max(gpu_mem_mb(r, config) for r in ("train_token", "train_unet", "extract_cams", "embeddings")) < 24000
    old = {**cub, "train_token": {**cub["train_token"], "concurrent_classes": 4}}
    assert gpu_mem_mb("train_token", old) == 38865
    # host memory grows by 2.1 GB x 1.25 per extra training sample; runtime with the shard size
    one = {**cub, "train_token": {**cub["train_token"], "batch_size": 1, "concurrent_classes": 1}}
    two = {**cub, "train_token": {**cub["train_token"], "batch_size": 1, "concurrent_classes": 2}}
    assert job_resources("train_token", one, "cub")["mem_mb"] == 8250
    assert job_resources("train_token", two, "cub")["mem_mb"] == 8250 + 2625
    cpu = {**cub, "compute": {**cub["compute"], "runtime_scale": 1.0}}
    big = {**cpu, "test": {**cpu["test"], "shard_size": 1000}}
    assert job_resources("extract_cams", cpu, "cub")["runtime"] == -(-(60 + 500 * 17) * 1.25 // 60)   # 179 min
    assert job_resources("extract_cams", big, "cub")["runtime"] == -(-(60 + 1000 * 17) * 1.25 // 60)  # 356 min


@pytest.mark.slow
def test_rehearsal_real_path(tmp_path_factory, tokenizer_dir):
    workdir = tmp_path_factory.mktemp("rehearsal")
    try:
        _rehearse(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)   # ~12 GB


def _rehearse(workdir):
    for name in LINKED:
        (workdir / name).symlink_to(REPO / name)
    (workdir / "resources").mkdir()
    (workdir / "resources" / "assets").symlink_to(REPO / "resources" / "assets")
    build, released, training = readme_commands()

    # 1. the fixture (uses the tokenizer assets; the network is not needed)
    run(build, workdir, offline=True)
    shutil.rmtree(workdir / "resources")   # the workflow must not rely on downloaded assets
    assert (workdir / "data/CUB_200_2011/images").is_symlink()
    check_hostile_refused(workdir / "ckpts/hostile")

    # 2. released tokens and .bin UNet -> embeddings -> CAMs (gtk, top1) -> evaluation -> tables
    log = run(released, workdir, offline=True)
    assert "rule assets" not in log and not (workdir / "resources").exists(), "an assets (wheel download) job ran"
    results = workdir / "results/cub"
    test = pd.read_parquet(results / "index/test.parquet")
    train = pd.read_parquet(results / "index/train.parquet")
    assert sorted(set(test["label"])) == list(KEPT_CLASSES) and sorted(set(train["label"])) == list(KEPT_CLASSES)
    table = read_token_table(results / "tokens/tokens.safetensors")
    assert table.class_ids.tolist() == list(KEPT_CLASSES)
    for c, token, row in zip(table.class_ids.tolist(), table.concept_tokens, table.embeddings):
        released_vec = torch.load(workdir / f"ckpts/cub980/tokens/{49408 + c}.bin", weights_only=True)[token]
        assert token == f"<cub-{c}>" and torch.equal(row, released_vec), c
    pretrained_k = load_file(workdir / "ckpts/pretrains/stable-diffusion-v1-4/unet/diffusion_pytorch_model.safetensors")[PROBE_KEY]
    copied = workdir / "results/cub/unet"
    copied_k = (load_file(copied / "diffusion_pytorch_model.safetensors") if (copied / "diffusion_pytorch_model.safetensors").exists()
                else torch.load(copied / "diffusion_pytorch_model.bin", weights_only=True))[PROBE_KEY]
    torch.testing.assert_close(copied_k, pretrained_k * RELEASED_UNET_KEY_SCALE)
    summaries = {}
    for run_name in ("genpromp", "no_stage2"):
        for variant in ("gtk_w0.60_t0-99", "top1_w0.60_t0-99"):
            summary = json.loads((results / f"{run_name}/eval/{variant}/summary.json").read_text())
            summaries[run_name, variant] = summary
            assert json.dumps(summary).count("NaN") == 0
            cams = pd.read_parquet(results / f"{run_name}/cams/{variant}/index.parquet")
            assert set(cams["image_id"]) == set(test["image_id"]), (run_name, variant)  # one row per image and role
    first = {}
    for r in ("genpromp", "no_stage2"):
        with np.load(sorted((results / f"{r}/cams/gtk_w0.60_t0-99").glob("shard-*.npz"))[0]) as npz:
            first[r] = next(npz[k] for k in npz.files if npz[k].ndim == 4)
    assert not (first["genpromp"] == first["no_stage2"]).all(), "the released UNet's maps equal the pretrained UNet's"
    main = pd.read_csv(workdir / "results/tables/main.csv")
    assert len(main) >= 4, main
    print_benchmarks(workdir, "released checkpoints: per-job wall time and peak memory")

    # 3. one stage-1 and one stage-2 optimizer step at 512 px
    run(training, workdir, offline=True)
    unet_log = pd.read_csv(results / "unet.log.csv")
    assert unet_log["opt_step"].max() == 1 and unet_log["loss"].notna().all(), unet_log
    token_logs = [pd.read_csv(p) for p in sorted((results / "tokens").glob("shard-*.log.csv"))]
    assert token_logs and all(len(t) >= 1 for t in token_logs)
    trained = load_file(next((results / "unet").glob("*.safetensors")))[PROBE_KEY]
    assert not torch.equal(trained, pretrained_k), "stage 2 did not change the UNet"
    print_benchmarks(workdir, "after the training steps: per-job wall time and peak memory")
