"""Job resources (genpromp.resources) and how the rules use them: requests grow with Snakemake's retry
attempt, CPUs follow the loader workers and training processes, multi-GPU jobs stay on one node."""

import re
from pathlib import Path

import pytest

from genpromp.config import load_config
from genpromp.resources import MIN_THREADS, for_attempt, job_resources, job_threads, per_attempt

REPO = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))


def test_for_attempt_multiplies_and_rounds_up():
    assert [for_attempt(300, a) for a in (1, 2, 3)] == [300, 600, 900]
    assert for_attempt(2.5, 1) == 3
    with pytest.raises(ValueError, match="attempt"):
        for_attempt(300, 0)


def test_per_attempt_is_a_resource_callable_of_attempt():
    mem = per_attempt(2000)
    assert (mem(None, attempt=1), mem(None, attempt=2)) == (2000, 4000)


@pytest.mark.parametrize("name", ["cub.yaml", "imagenet.yaml"])
@pytest.mark.parametrize("rule", ["train_token", "train_unet", "extract_cams", "embeddings"])
def test_retry_gets_more_memory_and_time(name, rule):
    config = load_config(REPO / "config" / name)
    dataset = next(iter(config["datasets"]))
    first = job_resources(rule, config, dataset)
    second = job_resources(rule, config, dataset, attempt=2)
    assert second["mem_mb"] == 2 * first["mem_mb"] and second["runtime"] == 2 * first["runtime"]
    assert second["gpu_mem_mb"] == first["gpu_mem_mb"]  # the model's GPU memory does not change


def test_threads_follow_loader_workers_and_training_processes():
    paper = load_config(REPO / "config" / "imagenet.yaml")
    assert paper["compute"]["num_workers"] == 4 and paper["compute"]["gpus"] == 1
    # one process + 4 loader workers; stage 1 loads in its main process
    assert job_threads("train_unet", paper) == 5 and job_threads("extract_cams", paper) == 5
    assert job_threads("train_token", paper) == MIN_THREADS
    two = {"compute": {"gpus": 2, "num_workers": 4}}
    assert job_threads("train_unet", two) == 10  # 2 processes x (1 + 4 workers)
    assert job_threads("extract_cams", two) == 5  # CAM jobs use one GPU whatever compute.gpus says
    assert job_threads("train_token", {"compute": {"gpus": 4, "num_workers": 0}}) == 4
    assert job_threads("train_unet", {"compute": {"gpus": 0, "num_workers": 0}}) == MIN_THREADS


def _resource_blocks(text):
    """The `resources:` blocks of a rule file: [(rule name, block text)]."""
    blocks = []
    for m in re.finditer(r"^(\s*)(?:rule|checkpoint) (\w+):\n(.*?)(?=^\1(?:rule|checkpoint) |\Z)", text, re.M | re.S):
        body = m.group(3)
        res = re.search(r"^(\s+)resources:\n((?:\1\s+.*\n)+)", body, re.M)
        threads = re.search(r"^\s+threads: (.+)$", body, re.M)
        blocks.append((m.group(2), res.group(2) if res else "", threads.group(1) if threads else None))
    return blocks


def test_every_rule_scales_memory_and_runtime_with_attempt():
    offenders, rules = [], 0
    for path in RULE_FILES:
        for rule, block, _ in _resource_blocks(path.read_text()):
            rules += 1
            for key in ("mem_mb", "runtime"):
                line = re.search(rf"^\s+{key}=(.+)$", block, re.M)
                ok = line and re.match(r"(per_attempt\(|measured\(|lambda [^:]*\battempt\b)", line.group(1))
                if not ok:
                    offenders.append(f"{path.name}: rule {rule}: {key}={line.group(1) if line else '(missing)'}")
    assert rules >= 20
    assert not offenders, "requests that do not grow on a retry:\n" + "\n".join(offenders)


def test_gpu_rules_request_cpus_for_their_processes_and_one_node():
    seen = {}
    for path in RULE_FILES:
        for rule, block, threads in _resource_blocks(path.read_text()):
            seen[rule] = (block, threads)
    for rule in ("train_token", "train_unet"):
        block, threads = seen[rule]
        assert threads == f'job_threads("{rule}", config)', rule
        assert re.search(r"^\s+nodes=1,$", block, re.M), f"{rule}: multi-GPU jobs must stay on one node"
    for rule, (block, threads) in seen.items():
        if 'measured("extract_cams"' in block:
            assert threads == 'job_threads("extract_cams", config)', rule
