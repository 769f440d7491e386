"""What the Snakemake workflow catalog checks: the files it reads (config/README.md, the catalog YAML,
LICENSE) and the formatting of the Snakemake files (`snakefmt`, pinned in the test extra and configured
in pyproject.toml [tool.snakefmt]). `snakemake --lint` is checked by tests/test_workflow.py."""

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def test_workflow_files_are_snakefmt_clean():
    files = ["Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "workflow" / "rules").glob("*.smk"))]
    snakefmt = Path(sys.executable).with_name("snakefmt")
    proc = subprocess.run([str(snakefmt), "--check", "--compact-diff", *files], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, ("snakefmt would reformat (fix: .venv/bin/snakefmt Snakefile workflow/rules/):\n"
                                  f"{proc.stdout[-4000:]}{proc.stderr[-2000:]}")


def test_config_readme_describes_every_config_and_section():
    text = (REPO / "config" / "README.md").read_text()
    for config in sorted((REPO / "config").glob("*.yaml")):
        assert f"`config/{config.name}`" in text, f"config/README.md does not describe {config.name}"
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    missing = [key for key in schema["properties"] if f"| `{key}` |" not in text]
    assert not missing, f"config/README.md has no row for the config sections {missing}"


def test_catalog_settings_and_license():
    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert usage["software-stack-deployment"]["conda"] is True
    assert "--configfile" in usage["mandatory-flags"]["flags"]
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
