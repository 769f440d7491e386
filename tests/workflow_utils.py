"""Helpers for tests that run the Snakemake workflow in a scratch working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

__all__ = ["REPO", "SNAKEMAKE", "prepare_workdir", "run_snakemake"]


def prepare_workdir(workdir):
    """A scratch working directory sharing the repository's downloaded assets (read-only use)."""
    workdir = Path(workdir)
    (workdir / "resources").mkdir(parents=True, exist_ok=True)
    assets = REPO / "resources" / "assets"
    link = workdir / "resources" / "assets"
    if assets.is_dir() and not link.exists():
        link.symlink_to(assets, target_is_directory=True)
    return workdir


def run_snakemake(workdir, *args, configfile=None, timeout=1200, check=True, env=None):
    """Run snakemake on the repository's Snakefile in ``workdir``; return the CompletedProcess."""
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    cmd += list(args)
    if configfile:  # last: --configfile takes several values and would swallow the targets
        cmd += ["--configfile", str(configfile)]
    full_env = dict(os.environ, PYTHONHASHSEED="0", **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc
