"""Cluster execution: the Snakemake profiles, and the workflow run through a real SLURM cluster.

`test_profile_is_valid` (fast, runs everywhere) dry-runs the stand-in workflow with each profile
under profiles/, so a misspelt key or a flag the installed Snakemake or SLURM plugin does not know
fails here instead of on a cluster.

`test_slurm_run_matches_local_run` (marked `cluster` and `slow`) brings up a single-node SLURM
cluster on this machine (tests/cluster/start_slurm.sh: root + apt-get), runs the workflow through
SLURM (`--profile profiles/slurm-ci`) in a fresh copy of the repository tree, and asserts that it
wrote the same `results/tables/**/*.csv` as a local run of the same workflow and config, that every
job but the local rules' went through sbatch, that the shard rules went out as array jobs, and that
exactly the GPU rules' sbatch calls requested a GPU. It skips, saying why, where root or apt-get is
unavailable. `test_slurm_sbatch_flags_retry_and_array_jobs` (same marks) runs the stand-in workflow
through the same cluster and asserts the sbatch flags of a single-GPU job, a 2-GPU job and a retried
job, and that an array run writes the same table; `test_resources_to_sbatch_flags` (fast) checks the
resource -> sbatch mapping of docs/cluster.md against the installed plugin.

What runs is set by the constants below (or the environment variables named next to them): by
default the real workflow on the micro demo chain (tests/configs/micro.yaml: stage-1 shards, CAM
shards and evaluation parts all fan out into several jobs). Its local run is the micro reference run
that the resume and reproducibility tests share (fixture `micro_reference`), so the whole workflow
runs locally once per session; with other targets or arguments the test runs its own local run
(`--profile profiles/workstation --cores 2`). The small stand-in workflow in tests/cluster/standin/
is used by test_profile_is_valid.
"""

import json
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
GPU_RULES = set(os.environ.get("GENPROMP_CLUSTER_GPU_RULES", "embeddings encode_latents extract_cams").split())
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
# The plugin's debug lines (--verbose) with each sbatch call: one job, or one array of jobs.
SBATCH_CALL = re.compile(r"^(?:Submitting array job with )?sbatch call: (sbatch .*)$", re.MULTILINE)
# ... and with each accepted submission.
ACCEPTED = re.compile(r"has been submitted with SLURM jobid \d+|^Submitted array job with Snakemake IDs", re.MULTILINE)
# Rules of the real workflow that run in the Snakemake process (Snakefile `localrules`).
LOCAL_RULES = {"assets", "assets_synsets", "merge_tokens", "cam_index", "heldout_cam_index", "merge_eval", "calibrate",
               "tables"}
# Array-job mode (`--slurm-array-jobs`) of the SLURM plugin 2.8.0 drops the jobs of a rule that the
# scheduler hands over when more of them are ready than it handed over (they never run and the run
# hangs: snakemake-executor-plugin-slurm issue #473). Runs that use arrays therefore let Snakemake
# select every ready job at once: more job slots and submissions per second than jobs ready at a time.
ARRAY_ROOM = ["--jobs", "100", "--max-jobs-per-timespan", "1000/1s"]
# Single-GPU shard jobs of the stand-in SLURM run (each run submits them all at once).
STANDIN_SHARDS = int(os.environ.get("GENPROMP_CLUSTER_STANDIN_SHARDS", "12"))


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
    submitted = ACCEPTED.findall(slurm_log)
    assert calls and len(submitted) == len(calls), f"{len(calls)} sbatch calls, {len(submitted)} accepted"
    # Local rules ran in the Snakemake process; array-selected shard rules went out as arrays.
    assert not LOCAL_RULES & {rule for rule, _ in calls}, "a local rule was submitted to SLURM"
    assert any("--array=" in call for _, call in calls), "no array job was submitted"
    assert "command=squeue" in slurm_log and "Falling back to 'sacct'" not in slurm_log

    # GPU rules (and only they) asked SLURM for a GPU.
    gpu_calls = [(rule, call) for rule, call in calls if GPU_REQUEST.search(call)]
    assert gpu_calls, "no sbatch submission requested a GPU"
    for rule, call in calls:
        assert bool(GPU_REQUEST.search(call)) == (rule in GPU_RULES), f"rule {rule}: GPU request mismatch in {call[:400]}"
    assert {rule for rule, _ in gpu_calls} == GPU_RULES & {rule for rule, _ in calls}

    # Same tables from both runs.
    assert_tables_equal(local, collect_tables(slurm_tree))


# --- slow: sbatch flags, a retry and array jobs, with the stand-in workflow ------------------


def standin_tree(dest, shards):
    """The stand-in workflow and the profiles in `dest`, with `shards` shard jobs."""
    shutil.copytree(REPO / "profiles", dest / "profiles")
    shutil.copytree(CLUSTER_DIR / "standin", dest / "standin")
    config = dest / "standin" / "config.yaml"
    config.write_text(re.sub(r"(?m)^  shards: \d+", f"  shards: {shards}", config.read_text()))
    return dest


def run_standin(tree, extra_args):
    """Run the stand-in through SLURM (profiles/slurm-ci, one retry) with each sbatch call timed by
    tests/cluster/timed_bin/sbatch; return (log text, [(start, end, rule, array range)])."""
    real = shutil.which("sbatch")
    assert real, "sbatch is not on PATH"
    sbatch_log = tree / "sbatch.log"
    env = {"PATH": f"{CLUSTER_DIR / 'timed_bin'}:{os.environ['PATH']}", "GENPROMP_REAL_SBATCH": real,
           "GENPROMP_SBATCH_LOG": str(sbatch_log)}
    args = ["--profile", "profiles/slurm-ci", "--verbose", "--retries", "1", *ARRAY_ROOM, *extra_args]
    proc = run_snakemake(tree, *args, snakefile="standin/Snakefile", cores=None, timeout=RUN_TIMEOUT_S,
                         check=False, env=env)
    text = proc.stdout + proc.stderr
    for run_id in re.findall(r"SLURM run ID: (\S+)", text):  # no job of this run stays queued
        subprocess.run(["scancel", "--name", run_id], timeout=60)
    assert proc.returncode == 0, text[-6000:]
    timed = []
    for line in sbatch_log.read_text().splitlines():
        start, end, rc, comment, array = line.split()
        assert rc == "0", f"sbatch failed: {line}"
        timed.append((float(start), float(end), comment.removeprefix("rule_"), array))
    return text, timed


def flags(call):
    """{flag: value} of an sbatch call's options before --wrap (`--mem 300` and `--gpus=2` alike)."""
    head = call.split(" --wrap", 1)[0].split()
    out, i = {}, 0
    while i < len(head):
        key, _, value = head[i].partition("=")
        if key.startswith("-") and not value and i + 1 < len(head) and not head[i + 1].startswith("-"):
            value, i = head[i + 1], i + 1
        out[key] = value
        i += 1
    return out


def submission_span(timed, rule):
    """Seconds from the first sbatch call of `rule` starting to its last one returning, and the calls."""
    mine = [(start, end) for start, end, name, _ in timed if name == rule]
    return max(end for _, end in mine) - min(start for start, _ in mine), len(mine)


@pytest.mark.cluster
@pytest.mark.slow
def test_slurm_sbatch_flags_retry_and_array_jobs(slurm_cluster, tmp_path):
    """The stand-in through SLURM twice: shard jobs one sbatch each, then as one array job.

    Asserts the sbatch flags of a single-GPU job, of a 2-GPU training job (`--gpus=2`, one node, a
    CPU per process and loader worker) and of a job that fails for lack of memory and succeeds on
    its retry with twice the memory; prints how long submitting the shard jobs took either way."""
    from genpromp.resources import job_threads

    single_tree = standin_tree(tmp_path / "single", STANDIN_SHARDS)
    single_log, single_timed = run_standin(single_tree, [])
    array_tree = standin_tree(tmp_path / "array", STANDIN_SHARDS)
    array_log, array_timed = run_standin(array_tree, ["--slurm-array-jobs", "shard"])

    calls = {}
    for rule, call in sbatch_calls_by_rule(single_log):
        calls.setdefault(rule, []).append(flags(call))
    # One GPU, one CPU, the rule's memory and minutes; no --gres on top of --gpus.
    assert len(calls["shard"]) == STANDIN_SHARDS
    for f in calls["shard"]:
        assert (f["--gpus"], f["--cpus-per-task"], f["--mem"], f["-t"]) == ("1", "1", "200", "5"), f
        assert "--gres" not in f and "--array" not in f
    # Two GPUs on one node, CPUs for 2 training processes x (1 + 1 loader worker); SLURM allocated that.
    cpus = job_threads("train_unet", {"compute": {"gpus": 2, "num_workers": 1}})
    assert cpus == 4
    (train,) = calls["train"]
    assert (train["--gpus"], train["--nodes"], train["--cpus-per-task"]) == ("2", "1", str(cpus)), train
    assert "--gres" not in train
    got = json.loads((single_tree / "results/standin/train.json").read_text())["allocation"]
    assert (got["nodes"], got["gpus"], got["cpus"]) == (1, 2, cpus), got
    # The retry asked for twice the memory and got it.
    first, second = calls["retry"]
    assert (first["--mem"], second["--mem"]) == ("300", "600"), calls["retry"]
    assert "--gpus" not in first and "--gres" not in first
    assert json.loads((single_tree / "results/standin/retry.json").read_text())["allocated_mb"] == 600

    # Array run: the shard jobs went out in one sbatch call, with the same per-job resources.
    array_calls = [(rule, flags(call)) for rule, call in sbatch_calls_by_rule(array_log) if rule == "shard"]
    assert len(array_calls) == 1, array_calls
    f = array_calls[0][1]
    assert f["--array"] == f"1-{STANDIN_SHARDS}" and f["--gpus"] == "1" and f["--cpus-per-task"] == "1", f
    assert int(f["--mem"]) >= 200  # the plugin adds a few MB for the array's job list
    table = "results/tables/standin.csv"
    assert (single_tree / table).read_bytes() == (array_tree / table).read_bytes()

    single_s, single_n = submission_span(single_timed, "shard")
    array_s, array_n = submission_span(array_timed, "shard")
    assert (single_n, array_n) == (STANDIN_SHARDS, 1)
    print(f"\nsubmitting {STANDIN_SHARDS} shard jobs: {single_n} sbatch calls in {single_s:.2f} s; as an array: "
          f"{array_n} call in {array_s:.2f} s ({single_s / max(array_s, 1e-3):.1f}x)")


# --- fast: how rule resources become sbatch flags (the table in docs/cluster.md) ----------------


class _Resources(dict):
    """A job's resources as the SLURM plugin reads them (``.get`` and attribute access)."""

    __getattr__ = dict.__getitem__


def sbatch_options(threads=1, **resources):
    """The sbatch options the installed SLURM plugin builds for a job with these resources."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=_Resources(resources), threads=threads)
    params = {"run_uuid": "run", "slurm_logfile": "log", "comment_str": "rule_x", "account": "", "partition": "",
              "workdir": ""}
    call = get_submit_command(job, params) + set_gres_string(job)
    return call.split("--comment rule_x", 1)[1].split()


@pytest.mark.parametrize("threads, resources, expected, absent", [
    (2, {"mem_mb": 3000, "runtime": 30}, ["--cpus-per-task=2", "--mem", "3000", "-t", "30", "--ntasks=1"], ["--gpus"]),
    (2, {"gpu": 1}, ["--gpus=1", "--cpus-per-task=2"], ["--gres", "--nodes"]),
    (4, {"gpu": 2, "nodes": 1}, ["--gpus=2", "--nodes=1", "--cpus-per-task=4"], ["--gres", "--ntasks=1"]),
    (2, {"gpu": 1, "gpu_model": "a100"}, ["--gpus=a100:1"], ["--gres"]),
    # a gres entry comes on top of the rule's gpu: two GPU requests ...
    (2, {"gpu": 1, "gres": "gpu:a100:1"}, ["--gres=gpu:a100:1", "--gpus=1"], []),
    # ... unless gpu is set to 0 next to it
    (2, {"gpu": 0, "gres": "gpu:a100:1"}, ["--gres=gpu:a100:1", "--cpus-per-task=2"], ["--gpus=0", "--gpus"]),
    (2, {"gpu": 2, "cpus_per_gpu": 5}, ["--gpus=2", "--cpus-per-gpu=5"], ["--cpus-per-task=2"]),
    (2, {"gpu": 0}, ["--cpus-per-task=2", "--ntasks=1"], ["--gpus", "--gpus=0"]),
])
def test_resources_to_sbatch_flags(threads, resources, expected, absent):
    """The resource -> sbatch mapping docs/cluster.md documents, from the installed plugin."""
    opts = sbatch_options(threads, **resources)
    text = " ".join(opts)
    for flag in expected:
        assert flag in opts, f"{resources}: {flag} missing from {text}"
    for flag in absent:
        assert not any(o == flag or o.startswith(flag + "=") for o in opts), f"{resources}: {flag} in {text}"
