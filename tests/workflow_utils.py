"""The one way tests start Snakemake: command line, environment, scratch working directories and
reading a plan's job table back.

* ``snakemake_cmd`` builds the argv (for ``subprocess.Popen`` or a ``timeout`` wrapper),
* ``run_snakemake`` runs it to completion and returns the CompletedProcess,
* ``prepare_workdir`` makes a scratch working directory sharing the repository's assets,
* ``planned_jobs`` / ``planned_rules`` read a (dry) run's output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "Snakefile"

__all__ = ["REPO", "SNAKEFILE", "snakemake_cmd", "snakemake_env", "run_snakemake", "prepare_workdir",
           "planned_jobs", "planned_rules"]


def snakemake_cmd(workdir, *args, snakefile=SNAKEFILE, configfile=None, cores=2):
    """argv of Snakemake on ``snakefile`` (default: the repository's) in ``workdir``.

    ``args`` (targets, flags) come first: ``--configfile`` takes several values and would swallow
    them. ``workdir=None``: the process's current directory; ``cores=None`` leaves the core count
    to a ``--profile`` among ``args``.
    """
    cmd = [sys.executable, "-m", "snakemake", *args, "--snakefile", str(snakefile)]
    if workdir is not None:
        cmd += ["--directory", str(workdir)]
    if cores is not None:
        cmd += ["--cores", str(cores)]
    if configfile:
        cmd += ["--configfile", str(configfile)]
    return cmd


def snakemake_env(env=None):
    """Environment of a Snakemake subprocess: this one, offline Hugging Face, a fixed hash seed."""
    return {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **os.environ, "PYTHONHASHSEED": "0",
            **(env or {})}


def run_snakemake(workdir, *args, snakefile=SNAKEFILE, configfile=None, cores=2, timeout=1200, check=True,
                  env=None):
    """Run Snakemake (``snakemake_cmd``) with ``workdir`` as the current directory too (relative paths in
    ``args`` resolve there); return the CompletedProcess. ``check``: raise AssertionError with the
    output's tail when it fails."""
    cmd = snakemake_cmd(workdir, *args, snakefile=snakefile, configfile=configfile, cores=cores)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=snakemake_env(env))
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def prepare_workdir(workdir):
    """A scratch working directory sharing the repository's downloaded assets (read-only use)."""
    workdir = Path(workdir)
    (workdir / "resources").mkdir(parents=True, exist_ok=True)
    assets = REPO / "resources" / "assets"
    link = workdir / "resources" / "assets"
    if assets.is_dir() and not link.exists():
        link.symlink_to(assets, target_is_directory=True)
    return workdir


def planned_jobs(output):
    """{rule: count} from the 'Job stats' table of a Snakemake (dry) run's output."""
    jobs, inside = {}, False
    for line in output.splitlines():
        fields = line.split()
        if fields[:2] == ["job", "count"]:
            inside = True
        elif inside and len(fields) == 2 and fields[1].isdigit():
            if fields[0] == "total":
                inside = False
            else:
                jobs[fields[0]] = int(fields[1])
    return jobs


def planned_rules(output):
    """Names of the rules and checkpoints a (dry) run's job listing shows (``rule x:`` lines)."""
    return set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", output, re.M))
