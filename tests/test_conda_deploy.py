"""`snakemake --sdm conda`: the rules' environment (environment.yml) installs genpromp from the checkout.

`test_post_deploy_installs_the_checkout` (fast, everywhere) runs environment.post-deploy.sh with a
stand-in `python` and checks what it installs. `test_rule_runs_inside_the_conda_env` (slow) creates
the environment with Snakemake and runs a rule in it; it skips, printing why, where no conda or
mamba is installed or no conda channel can be reached.
"""

import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from workflow_utils import run_snakemake

REPO = Path(__file__).resolve().parent.parent
ENV_FILE = REPO / "environment.yml"
POST_DEPLOY = REPO / "environment.post-deploy.sh"
CHANNEL_URL = "https://conda.anaconda.org/conda-forge/noarch/repodata.json"


def fake_python(tmp_path):
    """A `python` that records its arguments, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\n')
    (bin_dir / "python").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_post_deploy_installs_the_checkout(tmp_path):
    """Snakemake finds the script by name next to the env file; it installs genpromp, editable and
    without touching the pinned dependencies, from GENPROMP_SOURCE or the working directory."""
    assert POST_DEPLOY.name == ENV_FILE.stem + ".post-deploy.sh"
    env = fake_python(tmp_path)
    subprocess.run(["bash", str(POST_DEPLOY)], cwd=REPO, env=env, check=True)
    assert (tmp_path / "args").read_text().split() == ["-m", "pip", "install", "--no-deps", "-e", str(REPO)]
    subprocess.run(["bash", str(POST_DEPLOY)], cwd=tmp_path, env={**env, "GENPROMP_SOURCE": str(REPO)}, check=True)
    assert (tmp_path / "args").read_text().split()[-1] == str(REPO)
    (tmp_path / "args").unlink()
    proc = subprocess.run(["bash", str(POST_DEPLOY)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "GENPROMP_SOURCE" in proc.stderr and not (tmp_path / "args").exists()


def test_every_rule_names_the_environment():
    rule_files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    text = "\n".join(p.read_text() for p in rule_files)
    rules = len(re.findall(r"^\s*(?:rule|checkpoint) \w+:", text, re.M))
    envs = len(re.findall(r'^\s+conda:\n\s+"\.\./\.\./environment\.yml"$', text, re.M))
    assert rules - 1 == envs, "every rule but `all` runs in environment.yml"  # `all` runs nothing
    assert "python=3.11" in yaml.safe_load(ENV_FILE.read_text())["dependencies"]


def conda_unavailable():
    """Why `--sdm conda` cannot create an environment here, or None."""
    frontend = shutil.which("mamba") or shutil.which("conda")
    try:
        urllib.request.urlopen(urllib.request.Request(CHANNEL_URL, method="HEAD"), timeout=10)
        channel = None
    except OSError as exc:
        channel = f"the conda-forge channel is unreachable ({CHANNEL_URL}: {exc})"
    if frontend is None:
        return "neither conda nor mamba is on PATH" + (f", and {channel}" if channel else "")
    return channel


SNAKEFILE = """
rule where:
    output:
        "where.yaml",
    conda:
        "{env}"
    shell:
        "python -c 'import sys, genpromp, torch; print(sys.prefix); print(genpromp.__file__); print(torch.__version__)' > {{output}}"
"""


@pytest.mark.slow
def test_rule_runs_inside_the_conda_env(tmp_path):
    why = conda_unavailable()
    if why:
        print(f"\nconda deployment test skipped: {why}")
        pytest.skip(f"--sdm conda cannot create environment.yml here: {why}")
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(env=ENV_FILE))
    run_snakemake(tmp_path, "--sdm", "conda", snakefile=tmp_path / "Snakefile", cores=1, timeout=3600,
                  env={"GENPROMP_SOURCE": str(REPO)})
    prefix, module, torch_version = (tmp_path / "where.yaml").read_text().split()
    assert Path(prefix).is_relative_to(tmp_path / ".snakemake" / "conda"), prefix
    assert Path(module).resolve() == (REPO / "genpromp" / "__init__.py").resolve()
    pins = [d for d in yaml.safe_load(ENV_FILE.read_text())["dependencies"] if isinstance(d, dict)][0]["pip"]
    assert f"torch=={torch_version.split('+')[0]}" in pins
