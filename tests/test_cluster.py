"""Cluster execution: the Snakemake profiles, and the workflow run through a real SLURM cluster.

`test_profile_is_valid` (fast, runs everywhere) dry-runs the stand-in workflow with each profile
under profiles/, so a misspelt key or a flag the installed Snakemake or SLURM plugin does not know
fails here instead of on a cluster.

`test_slurm_run_matches_local_run` (marked `cluster` and `slow`) brings up a single-node SLURM
cluster on this machine (tests/cluster/start_slurm.sh: root + apt-get), runs the workflow through
SLURM (`--profile profiles/slurm-ci`) in a fresh copy of the repository tree, and asserts that it
wrote the same `results/tables/**/*.csv` as a local run of the same workflow and config, that every
job went through sbatch, and that exactly the GPU rules' sbatch calls requested a GPU. It skips,
saying why, where root or apt-get is unavailable.

What runs is set by the constants below (or the environment variables named next to them): by
default the real workflow on the micro demo chain (tests/configs/micro.yaml: stage-1 shards, CAM
shards and evaluation parts all fan out into several jobs). Its local run is the micro reference run
that the resume and reproducibility tests share (fixture `micro_reference`), so the whole workflow
runs locally once per session; with other targets or arguments the test runs its own local run
(`--profile profiles/workstation --cores 2`). The small stand-in workflow in tests/cluster/standin/
is used by test_profile_is_valid.
"""

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_resume_workflow import micro_reference  # noqa: F401  (the shared local run; see local_tables)
from workflow_utils import run_snakemake
from workflow_utils import snakemake_cmd as _snakemake_cmd

REPO = Path(__file__).resolve().parent.parent
CLUSTER_DIR = REPO / "tests" / "cluster"

# --- What to run (relative to the repository root) -------------------------------------------
# Snakefile of the workflow under test.
SNAKEFILE = os.environ.get("GENPROMP_CLUSTER_SNAKEFILE", "Snakefile")
# Snakemake targets (rule names or files), space-separated.
TARGETS = shlex.split(os.environ.get("GENPROMP_CLUSTER_TARGETS", "all"))
# Extra Snakemake arguments for both runs (after the targets: --configfile takes several values).
DEFAULT_ARGS = "--configfile tests/configs/micro.yaml"
EXTRA_ARGS = shlex.split(os.environ.get("GENPROMP_CLUSTER_ARGS", DEFAULT_ARGS))
# The default run is the micro reference run's workflow: its tables are the local result.
USES_MICRO_REFERENCE = (SNAKEFILE, TARGETS, EXTRA_ARGS) == ("Snakefile", ["all"], shlex.split(DEFAULT_ARGS))
# Rules whose jobs must request a GPU; every other rule's jobs must not.
GPU_RULES = set(os.environ.get("GENPROMP_CLUSTER_GPU_RULES", "embeddings extract_cams").split())
# Relative tolerance for numbers in the compared tables; 0 = the CSV files must be byte-identical.
TABLE_RTOL = float(os.environ.get("GENPROMP_CLUSTER_RTOL", "0"))
# Hard limit (seconds) for each of the two workflow runs.
RUN_TIMEOUT_S = int(os.environ.get("GENPROMP_CLUSTER_TIMEOUT", "600"))
# Git-ignored paths copied into each run's tree: inputs the workflow cannot regenerate offline.
# Everything else git-ignored (results/, resources/demo, resources/models, logs/, .snakemake/)
# is left out, so each run generates its own inputs and results.
COPY_IGNORED = ["resources/assets"]
# Leave the cluster running after the session (it is stopped only if this session started it).
KEEP_SLURM = os.environ.get("GENPROMP_KEEP_SLURM", "") not in ("", "0")

PROFILES = ["workstation", "slurm", "slurm-ci"]
SKIP_PARTS = {".git", ".venv", ".snakemake", ".pytest_cache", "__pycache__", "results", "logs", "resources", "build", "dist"}
GPU_REQUEST = re.compile(r"(--gpus[= ]\S+|--gres[= ]\S*gpu)")
SBATCH_CALL = re.compile(r"^sbatch call: (sbatch .*)$", re.MULTILINE)


def snakemake_cmd(*args, snakefile=SNAKEFILE):
    """workflow_utils.snakemake_cmd in the current directory, cores from the profile among ``args``."""
    return _snakemake_cmd(None, *args, snakefile=snakefile, cores=None)


def copy_tree(dest):
    """Copy the repository's source tree (no results, generated resources or caches) to `dest`."""

    def ignore(folder, names):
        rel = Path(folder).relative_to(REPO)
        return [n for n in names if (rel == Path(".") and n in SKIP_PARTS) or n in {"__pycache__", ".snakemake"} or n.endswith(".egg-info")]

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    for rel in COPY_IGNORED:
        if (REPO / rel).exists():
            shutil.copytree(REPO / rel, dest / rel, symlinks=True)
    return dest


def run_workflow(tree, profile_args, log_path):
    """Run Snakemake in `tree` with a hard kill after RUN_TIMEOUT_S; return (seconds, log text)."""
    cmd = ["timeout", "-s", "KILL", str(RUN_TIMEOUT_S), *snakemake_cmd(*profile_args, *TARGETS, *EXTRA_ARGS)]
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=tree, stdout=log, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S + 30)
    seconds = time.monotonic() - start
    text = log_path.read_text()
    if proc.returncode != 0:
        why = "killed after {} s".format(RUN_TIMEOUT_S) if proc.returncode in (124, 137, -9) else f"exit {proc.returncode}"
        pytest.fail(f"{shlex.join(cmd)} failed ({why}) in {tree}; log {log_path}:\n{text[-6000:]}")
    return seconds, text


def collect_tables(tree):
    """{relative path: bytes} of every CSV under results/tables/."""
    root = tree / "results" / "tables"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.csv"))}


def assert_tables_equal(local, slurm):
    """Same table files; byte-identical, or numerically equal within TABLE_RTOL when it is > 0."""
    assert local, "the local run wrote no CSV under results/tables/"
    assert sorted(local) == sorted(slurm), f"different table files: local {sorted(local)}, slurm {sorted(slurm)}"
    for name in local:
        if TABLE_RTOL == 0:
            assert local[name] == slurm[name], f"results/tables/{name} differs between the local and the SLURM run"
        else:
            import io

            import pandas as pd

            pd.testing.assert_frame_equal(
                pd.read_csv(io.BytesIO(local[name])), pd.read_csv(io.BytesIO(slurm[name])), rtol=TABLE_RTOL, obj=name
            )


def sbatch_calls_by_rule(log_text):
    """[(rule, sbatch call)] for every submission the SLURM plugin logged (needs --verbose)."""
    calls = []
    for call in SBATCH_CALL.findall(log_text):
        m = re.search(r"--comment ('[^']*'|\S+)", call)
        assert m, f"no --comment in: {call[:300]}"
        rule = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", m.group(1).strip("'"), re.DOTALL)
        assert rule, f"cannot read the rule name from --comment {m.group(1)}"
        calls.append((rule.group(1), call))
    return calls


# --- fast: every profile is valid for the installed Snakemake + plugin --------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_is_valid(profile, tmp_path):
    """A dry run with the profile parses every key (an unknown key is an argparse error)."""
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "profiles", tree / "profiles")
    shutil.copytree(CLUSTER_DIR / "standin", tree / "standin")
    proc = run_snakemake(tree, "-n", "--profile", f"profiles/{profile}", snakefile="standin/Snakefile", cores=None,
                         timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "shard" in proc.stdout + proc.stderr  # the dry run planned the stand-in's jobs


# --- slow: the workflow through a real SLURM cluster -----------------------------------------


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM cluster (partition `ci`, one fake GPU); skips where impossible."""
    if os.geteuid() != 0:
        pytest.skip("cluster test needs root to install and start SLURM (tests/cluster/start_slurm.sh)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("cluster test needs apt-get to install slurmctld/slurmd/slurm-client/munge")
    start = time.monotonic()
    proc = subprocess.run([str(CLUSTER_DIR / "start_slurm.sh")], capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    if proc.returncode == 77:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, f"start_slurm.sh failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    already = "already running" in proc.stderr
    print(f"\nSLURM cluster {'was already up' if already else 'installed/started'} in {seconds:.1f} s")
    yield {"start_seconds": seconds, "already_running": already}
    if not already and not KEEP_SLURM:
        subprocess.run([str(CLUSTER_DIR / "stop_slurm.sh")], timeout=120)


def local_tables(request, tmp_path):
    """Tables of a local run of the workflow under test: the shared micro reference run, or a run of
    its own (workstation profile) for other targets / arguments."""
    if USES_MICRO_REFERENCE:
        return collect_tables(request.getfixturevalue("micro_reference"))
    local_tree = copy_tree(tmp_path / "local")
    local_s, local_log = run_workflow(local_tree, ["--profile", "profiles/workstation", "--cores", "2"], tmp_path / "local.log")
    assert "sbatch call" not in local_log
    print(f"\nlocal run {local_s:.1f} s")
    return collect_tables(local_tree)


@pytest.mark.cluster
@pytest.mark.slow
def test_slurm_run_matches_local_run(slurm_cluster, request, tmp_path):
    local = local_tables(request, tmp_path)
    slurm_tree = copy_tree(tmp_path / "slurm")

    try:
        slurm_s, slurm_log = run_workflow(slurm_tree, ["--profile", "profiles/slurm-ci", "--verbose"], tmp_path / "slurm.log")
    finally:
        # Whatever happened, no job of this run may stay queued.
        for run_id in re.findall(r"SLURM run ID: (\S+)", (tmp_path / "slurm.log").read_text()):
            subprocess.run(["scancel", "--name", run_id], timeout=60)
    print(f"\nSLURM run {slurm_s:.1f} s")

    # Every job went through sbatch, and squeue (not sacct) reported its state.
    calls = sbatch_calls_by_rule(slurm_log)
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", slurm_log)
    assert calls and len(submitted) == len(calls), f"{len(calls)} sbatch calls, {len(submitted)} accepted"
    assert "command=squeue" in slurm_log and "Falling back to 'sacct'" not in slurm_log

    # GPU rules (and only they) asked SLURM for a GPU.
    gpu_calls = [(rule, call) for rule, call in calls if GPU_REQUEST.search(call)]
    assert gpu_calls, "no sbatch submission requested a GPU"
    for rule, call in calls:
        assert bool(GPU_REQUEST.search(call)) == (rule in GPU_RULES), f"rule {rule}: GPU request mismatch in {call[:400]}"
    assert {rule for rule, _ in gpu_calls} == GPU_RULES & {rule for rule, _ in calls}

    # Same tables from both runs.
    assert_tables_equal(local, collect_tables(slurm_tree))
