"""Kill and resume: a workflow SIGKILLed mid-stage and rerun with --rerun-incomplete ends with the same
outputs as an uninterrupted run, and nothing that was complete before the kill is recomputed.

Config: ``tests/configs/micro.yaml`` (2 classes, 8 test images; 2 stage-1 shards, 3 CAM shards,
3 evaluation parts, one run, one CAM variant).

* Reference (session fixture ``micro_reference``, shared with tests/test_reproducibility.py): the
  whole workflow once, in workdir A (``GENPROMP_MICRO_REFERENCE=<finished workdir>`` reuses one).
* Workdir B starts from a copy of A's ``resources/`` (assets, demo world, pretrained tiny model),
  copied with their modification times (``shutil.copytree`` → ``copy2``). Snakemake then does not
  rerun ``pretrain_tiny`` (checked with a dry run): outputs without provenance records in
  ``.snakemake/metadata`` only rerun on mtime, and the copied inputs are older than the copied
  model. No ``--touch`` and no copied metadata are needed.
* B runs in the background (``Popen(start_new_session=True)``) and its whole process group is
  SIGKILLed at three points, one after the other, each followed by a restart with
  ``--rerun-incomplete``: (1) stage 1: one token shard done, the other not (seeded: immediately, or
  once the running shard wrote its ``.partial`` checkpoint); (2) stage 2: the UNet's
  ``unet.partial/checkpoint`` exists but ``unet/`` does not; (3) CAMs: the first N of the 3 CAM
  shards exist (N seeded in {1, 2}). ``GENPROMP_KILL_SEED`` (default 0) picks the variants. A killed
  snakemake leaves its lock in ``.snakemake/locks``; each restart is preceded by ``--unlock``.
* After each kill the files under ``results/`` are recorded (inode, mtime); the outputs Snakemake
  marked incomplete (``.snakemake/incomplete/<base64 path>``) are set aside. At the end, every other
  recorded file must still have the same inode and mtime (not recomputed), and the final token table,
  UNet weights, CAM cache, evaluation outputs and tables must equal run A's exactly.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from workflow_utils import REPO, planned_jobs, run_snakemake, snakemake_env
from workflow_utils import snakemake_cmd as _snakemake_cmd

MICRO = REPO / "tests" / "configs" / "micro.yaml"
DATASET, RUN, VARIANT = "cub_demo", "genpromp", "gtk_w0.60_t0-99"
CAMS = f"results/{DATASET}/{RUN}/cams/{VARIANT}"
EVAL = f"results/{DATASET}/{RUN}/eval/{VARIANT}"
N_CAM_SHARDS = 3
KILL_SEED = int(os.environ.get("GENPROMP_KILL_SEED", "0"))

__all__ = ["MICRO", "DATASET", "RUN", "VARIANT", "CAMS", "EVAL", "snakemake_cmd", "planned_jobs", "run_workflow", "new_workdir",
           "comparable_files", "assert_same_file", "assert_same_outputs", "micro_reference"]


# ----------------------------------------------------------------------------- helpers (also used by
# tests/test_reproducibility.py)

def snakemake_cmd(workdir, *args, configfile=MICRO, cores=2):
    """workflow_utils.snakemake_cmd with the micro config by default."""
    return _snakemake_cmd(workdir, *args, configfile=configfile, cores=cores)


def run_workflow(workdir, *args, configfile=MICRO, timeout=900):
    """Run snakemake to completion in ``workdir``; return its combined output (fails the test on error)."""
    proc = run_snakemake(workdir, *args, configfile=configfile, timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def new_workdir(path, resources_from=None):
    """A private working directory: its own copy of ``resources/`` (mtimes kept), never a shared symlink.

    ``resources_from``: a finished workdir whose resources/ (assets, demo world, pretrained model) is
    copied; default: only the repository's resources/assets (tokenizer, synsets, cached wheels).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if resources_from is not None:
        shutil.copytree(Path(resources_from) / "resources", path / "resources", symlinks=True)
    else:
        shutil.copytree(REPO / "resources" / "assets", path / "resources" / "assets", symlinks=True)
    return path


def comparable_files(workdir):
    """Outputs under results/ whose content is deterministic (relative paths): everything but the
    pretraining outputs, training logs (wall-clock seconds) and PNG figures."""
    root = Path(workdir)
    out = []
    for p in sorted((root / "results").rglob("*")):
        rel = p.relative_to(root).as_posix()
        if (not p.is_file() or rel.startswith("results/demo_model/") or p.name.endswith(".log.csv")
                or p.suffix == ".png" or p.name.startswith(".") or ".partial" in rel):
            continue
        out.append(rel)
    return out


def assert_same_file(a, b, rel):
    """Exact equality of one output in two workdirs, by content type (arrays compared bit for bit)."""
    pa_, pb = Path(a) / rel, Path(b) / rel
    assert pb.is_file(), f"{rel} missing in {b}"
    if rel.endswith(".npz"):
        with np.load(pa_, allow_pickle=False) as x, np.load(pb, allow_pickle=False) as y:
            assert sorted(x.files) == sorted(y.files), rel
            for name in x.files:
                assert x[name].dtype == y[name].dtype and np.array_equal(x[name], y[name]), f"{rel}:{name} differs"
    elif rel.endswith(".parquet"):
        ta, tb = pq.read_table(pa_), pq.read_table(pb)
        assert ta.schema.equals(tb.schema) and ta.equals(tb), f"{rel} differs"
    elif rel.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(str(pa_), "np") as x, safe_open(str(pb), "np") as y:
            assert x.metadata() == y.metadata() and sorted(x.keys()) == sorted(y.keys()), rel
            for name in x.keys():
                assert np.array_equal(x.get_tensor(name), y.get_tensor(name)), f"{rel}:{name} differs"
    elif rel.endswith(".json"):
        assert json.loads(pa_.read_text()) == json.loads(pb.read_text()), f"{rel} differs"
    else:
        assert pa_.read_bytes() == pb.read_bytes(), f"{rel} differs"


def assert_same_outputs(a, b, files=None):
    """Every comparable output of workdir ``a`` exists in ``b`` with exactly the same content."""
    files = comparable_files(a) if files is None else files
    assert files, f"no outputs found in {a}"
    for rel in files:
        assert_same_file(a, b, rel)
    return files


@pytest.fixture(scope="session")
def micro_reference(tmp_path_factory, tokenizer_dir):
    """Workdir A: the whole micro workflow run once, uninterrupted (about 2-3 minutes on 2 cores).

    Imported by several test modules, each of which gets its own fixture instance; the run is done
    once per session all the same (a marker file in the session's base temp folder)."""
    reuse = os.environ.get("GENPROMP_MICRO_REFERENCE")      # a finished reference workdir (development)
    if reuse:
        assert (Path(reuse) / "results/tables/main.csv").is_file(), f"{reuse} is not a finished micro run"
        return Path(reuse)
    base = tmp_path_factory.getbasetemp() / "micro-reference"
    workdir, done = base / "A", base / "DONE"
    if done.is_file():
        return workdir
    shutil.rmtree(base, ignore_errors=True)
    new_workdir(workdir)
    start = time.monotonic()
    run_workflow(workdir)
    print(f"reference run: {time.monotonic() - start:.0f} s")
    assert (workdir / "results/tables/main.csv").is_file()
    assert len(list((workdir / CAMS).glob("shard-*.npz"))) == N_CAM_SHARDS
    done.write_text("ok\n")
    return workdir


# ----------------------------------------------------------------------------- kill points

def _tokens(w):
    return Path(w) / f"results/{DATASET}/tokens"


def _stage1_ready(wait_for_partial):
    def ready(w):
        done = [k for k in (0, 1) if (_tokens(w) / f"shard-{k}.safetensors").is_file()]
        if len(done) != 1:
            return False
        other = 1 - done[0]
        # the other shard's job has started (its log exists), so the finished one is recorded as done
        started = (Path(w) / f"logs/tokens/{DATASET}/shard-{other}.log").is_file()
        return started and (not wait_for_partial or any((_tokens(w) / f"shard-{other}.partial").glob("rank-*/*")))
    return ready


def _stage2_ready(w):
    base = Path(w) / f"results/{DATASET}"
    return (base / "unet.partial" / "checkpoint").is_dir() and not (base / "unet" / "config.json").exists()


def _cams_ready(n_done):
    def ready(w):
        return len(list((Path(w) / CAMS).glob("shard-*.npz"))) == n_done
    return ready


def kill_points(seed):
    """[(name, condition on the workdir)] in pipeline order; the seed picks each point's variant."""
    rng = random.Random(seed)
    wait = rng.random() < 0.5
    n_cam = rng.choice([1, 2])
    return [(f"stage 1: one token shard done{', the other checkpointed' if wait else ''}", _stage1_ready(wait)),
            ("stage 2: UNet checkpoint written, UNet not", _stage2_ready),
            (f"CAMs: {n_cam} of {N_CAM_SHARDS} shards written", _cams_ready(n_cam))]


def run_and_kill(workdir, ready, name, log, timeout=600):
    """Start snakemake (--rerun-incomplete) in its own session; SIGKILL its process group once
    ``ready(workdir)`` holds. Fails if the workflow ends first."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(snakemake_cmd(workdir, "--rerun-incomplete"), stdout=fh, stderr=subprocess.STDOUT,
                                env=snakemake_env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if ready(workdir):
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    # a killed snakemake leaves its lock behind; --unlock is the documented way out
                    run_workflow(workdir, "--unlock")
                    return
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    raise AssertionError(f"kill point {name!r} never reached (exit {proc.returncode}):\n{Path(log).read_text()[-4000:]}")


def incomplete_outputs(workdir):
    """Outputs Snakemake marked incomplete (.snakemake/incomplete/<urlsafe base64 of the path>)."""
    root = Path(workdir) / ".snakemake" / "incomplete"
    out = set()
    for p in root.rglob("*") if root.is_dir() else []:
        if not p.is_file() or p.name == "migration_underway":
            continue
        encoded = "".join(part.lstrip("@") for part in p.relative_to(root).parts)
        try:
            out.add(base64.urlsafe_b64decode(encoded).decode())
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def snapshot(workdir):
    """{relative path: (inode, mtime_ns)} of every non-temporary file under results/."""
    root = Path(workdir)
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in (root / "results").rglob("*")
            if p.is_file() and not p.name.startswith(".") and ".partial" not in p.as_posix()}


# ----------------------------------------------------------------------------- the test

@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted_run(micro_reference, tmp_path):
    a = micro_reference
    b = new_workdir(tmp_path / "B", resources_from=a)
    plan = run_snakemake(b, "-n", "--quiet", "rules", configfile=MICRO, check=False)
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = planned_jobs(plan.stdout)
    assert "index" in jobs and not {"pretrain_tiny", "demo_world", "assets"} & set(jobs), plan.stdout[-3000:]
    kept = {}        # files complete at some kill: path -> (inode, mtime_ns)
    report = []
    for i, (name, ready) in enumerate(kill_points(KILL_SEED)):
        run_and_kill(b, ready, name, tmp_path / f"run-{i}.log")
        incomplete = incomplete_outputs(b)
        done = {rel: st for rel, st in snapshot(b).items() if rel not in incomplete
                and not (rel.startswith(f"results/{DATASET}/unet/") and f"results/{DATASET}/unet/config.json" in incomplete)}
        for rel, st in kept.items():
            assert done.get(rel) == st, f"{rel}, complete before an earlier kill, was rewritten by the restart ({name})"
        kept.update(done)
        report.append(f"{name}: {len(done)} complete files kept, incomplete: {sorted(incomplete)}")
    out = run_workflow(b, "--rerun-incomplete")
    final = snapshot(b)
    recomputed = sorted(rel for rel, st in kept.items() if final.get(rel) != st)
    assert not recomputed, f"outputs complete before a kill were recomputed: {recomputed}\n{out[-3000:]}"
    assert kept, "no output was complete at any kill point"
    compared = assert_same_outputs(a, b)
    assert any(f.endswith(".npz") for f in compared) and "results/tables/main.csv" in compared
    nothing = run_snakemake(b, "-n", configfile=MICRO, check=False)
    assert "Nothing to be done" in nothing.stdout + nothing.stderr, nothing.stdout[-3000:]
    leftovers = sorted(p.relative_to(b).as_posix() for p in (b / "results").rglob(".*tmp*"))
    print("\n".join(report + [f"compared {len(compared)} outputs; temporary leftovers of killed writes: {leftovers}"]))
