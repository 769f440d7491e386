"""Experiment tracking (config ``compute.tracker``) and terminal-only progress bars.

With ``compute.tracker: tensorboard`` the training loops log their losses and learning rates through
accelerate's trackers into ``<compute.tracking_dir>/<dataset>/<stage>/`` (``tensorboard --logdir
logs/tracking``). TensorBoard is an optional dependency (``pip install 'genpromp[tracking]'``); asking
for it without the package installed is a :class:`~genpromp.errors.ConfigError` before any work.
Progress bars are drawn only when stderr is a terminal, so job log files do not fill with bars.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from .errors import ConfigError

__all__ = ["TRACKERS", "TrackingSpec", "tracking_spec", "check_tracker", "accelerator_kwargs", "start_tracking",
           "log_values", "standalone_tracker", "show_progress"]

#: tracker name -> the module it needs
TRACKERS = {"tensorboard": "tensorboard"}


class TrackingSpec:
    """Which tracker to use and where it writes: ``kind`` (None = off), ``logging_dir`` and ``run_name``."""

    def __init__(self, kind=None, logging_dir=None, run_name="genpromp"):
        self.kind, self.logging_dir, self.run_name = kind, logging_dir, run_name

    def __repr__(self):
        return f"TrackingSpec({self.kind!r}, {str(self.logging_dir)!r}, {self.run_name!r})"


def check_tracker(kind):
    """Refuse an unknown tracker or one whose package is missing (ConfigError naming compute.tracker)."""
    if kind is None:
        return
    if kind not in TRACKERS:
        raise ConfigError(f"config key compute.tracker: {kind!r} is not one of {sorted(TRACKERS)} (or null)")
    if not _installed(TRACKERS[kind]):
        raise ConfigError(f"config key compute.tracker is {kind!r} but the {TRACKERS[kind]} package is not "
                          f"installed; install it with `pip install 'genpromp[tracking]'` or set compute.tracker: null")


def tracking_spec(config, *parts):
    """The TrackingSpec of a stage from a validated config: logging dir ``<compute.tracking_dir>/<parts...>``,
    run name ``"/".join(parts)``; ``kind`` None when ``compute.tracker`` is null. Checks the package."""
    compute = config.get("compute", {})
    kind = compute.get("tracker")
    check_tracker(kind)
    folder = Path(compute.get("tracking_dir") or "logs/tracking").joinpath(*map(str, parts))
    return TrackingSpec(kind, folder if kind else None, "/".join(map(str, parts)) or "genpromp")


def accelerator_kwargs(spec):
    """Extra ``Accelerator(...)`` keyword arguments of a spec: ``log_with`` and ``project_dir`` (none when off)."""
    if spec is None or spec.kind is None:
        return {}
    check_tracker(spec.kind)
    return {"log_with": spec.kind, "project_dir": str(spec.logging_dir)}


def start_tracking(accelerator, spec, hparams=None):
    """``accelerator.init_trackers`` for a spec that is on (main process only, as accelerate does);
    ``hparams``: flat dict of scalars recorded with the run."""
    if spec is not None and spec.kind is not None:
        accelerator.init_trackers(spec.run_name, config=_scalars(hparams or {}))


def log_values(accelerator, spec, values, step):
    """``accelerator.log(values, step=step)`` when a tracker is on."""
    if spec is not None and spec.kind is not None:
        accelerator.log({k: float(v) for k, v in values.items()}, step=int(step))


def standalone_tracker(spec):
    """An accelerate tracker object for loops without an Accelerator (the demo pretraining), or None when off.
    It has ``log(values, step=)`` and ``finish()``."""
    if spec is None or spec.kind is None:
        return None
    check_tracker(spec.kind)
    from accelerate.tracking import TensorBoardTracker

    return TensorBoardTracker(spec.run_name, str(spec.logging_dir))


def show_progress(stream=None):
    """True when progress bars should be drawn: the stream (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _installed(module):
    return importlib.util.find_spec(module) is not None


def _scalars(values):
    return {k: v for k, v in values.items() if isinstance(v, (bool, int, float, str))}
