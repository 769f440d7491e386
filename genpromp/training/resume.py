"""Resumable training state without pickles: tensors in safetensors, the rest in JSON.

A checkpoint is a folder written with :func:`genpromp.io.atomic_dir`, so it is either complete or
absent. Optimizer state (``torch.optim`` state dicts) is flattened to ``state.<param>.<key>``
tensors plus a JSON description of the parameter groups; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..io import atomic_dir

__all__ = [
    "optimizer_state_tensors", "load_optimizer_state", "write_checkpoint", "read_checkpoint",
    "fingerprint", "launch_accelerate",
]

log = logging.getLogger(__name__)
STATE_JSON = "state.json"
TENSORS = "tensors.safetensors"


def fingerprint(obj):
    """Short SHA-256 of a JSON-serialisable description (settings + inputs) of a training job."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def optimizer_state_tensors(optimizer, prefix="opt"):
    """Flatten ``optimizer.state_dict()`` into (tensors dict, JSON-able meta). Scalars become 0-d tensors."""
    sd = optimizer.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{prefix}.state.{pid}.{key}"] = t.detach().to("cpu").contiguous()
    meta = {"param_groups": sd["param_groups"]}
    return tensors, meta


def load_optimizer_state(optimizer, tensors, meta, prefix="opt"):
    """Inverse of :func:`optimizer_state_tensors`; loads into ``optimizer`` (moved to its params' device)."""
    state = {}
    head = f"{prefix}.state."
    for name, value in tensors.items():
        if not name.startswith(head):
            continue
        pid, key = name[len(head):].split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def write_checkpoint(folder, tensors, state):
    """Atomically (re)write ``folder`` with ``tensors.safetensors`` and ``state.json``."""
    with atomic_dir(folder) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(Path(tmp) / TENSORS))
        (Path(tmp) / STATE_JSON).write_text(json.dumps(state, indent=1, sort_keys=True))


def read_checkpoint(folder, expect_fingerprint=None):
    """(tensors, state) from ``folder``, or None when absent or made by a different job set-up."""
    folder = Path(folder)
    if not (folder / STATE_JSON).is_file():
        return None
    try:
        state = json.loads((folder / STATE_JSON).read_text())
        tensors = load_file(str(folder / TENSORS))
    except (OSError, ValueError) as exc:
        raise InputError(folder, f"unreadable training checkpoint ({exc}); delete the folder to start over") from None
    if expect_fingerprint is not None and state.get("fingerprint") != expect_fingerprint:
        log.warning("%s: checkpoint was made with other settings or inputs; starting from scratch", folder)
        return None
    return tensors, state


def launch_if_multi_gpu(cli_args, config, scratch):
    """Run ``genpromp <cli_args>`` under ``accelerate launch`` when compute.gpus > 1 (True), else nothing
    (False: the caller trains in this process)."""
    gpus = int(config.get("compute", {}).get("gpus", 0))
    if gpus <= 1:
        return False
    launch_accelerate(cli_args, config, gpus, scratch)
    return True


def launch_accelerate(cli_args, config, gpus, scratch):
    """Run ``genpromp <cli_args>`` under ``accelerate launch`` on ``gpus`` processes (multi-GPU jobs).

    The resolved ``config`` is written to ``scratch/config.yaml`` and passed with ``--config`` so
    the child processes see exactly the rule's configuration. Raises GenprompError on failure.
    """
    import subprocess
    import sys

    import yaml

    from ..errors import GenprompError

    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    cfg = scratch / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
           "-m", "genpromp.cli", *cli_args, "--config", str(cfg)]
    log.info("launching: %s", " ".join(cmd))
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise GenprompError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}; see the log above")
