"""One logging set-up for the command line and for every workflow script.

Both write ``LOG_FORMAT`` lines. A workflow script calls :func:`script_logging` first: the rule's log file
then receives the log records, everything written to stderr (warnings, library messages) and the
traceback of an exception that ends the job, which is also printed to the job's original stderr so that
Snakemake's own output still shows why the job failed. Progress bars are drawn only on a terminal
(:func:`genpromp.tracking.show_progress`), so logs hold lines, not bar redraws.
"""

from __future__ import annotations

import logging
import sys
import traceback

__all__ = ["LOG_FORMAT", "setup_logging", "script_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level=logging.INFO, stream=None, replace=False):
    """Send log records of ``level`` and above to ``stream`` (default: stderr) in LOG_FORMAT. Without
    ``replace``, a process that already has log handlers (an embedding application, pytest) keeps them."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=stream or sys.stderr, force=replace)


def script_logging(snakemake, append=False):
    """Log set-up of a workflow script: records, stderr and a failing job's traceback go to the rule's log.

    ``append``: keep what earlier attempts wrote (resumable jobs, whose log tells how often they resumed);
    otherwise the log starts empty. Returns the ``snakemake`` object, so a script can write
    ``sm = script_logging(snakemake)``.
    """
    original = sys.stderr
    stream = open(snakemake.log[0], "a" if append else "w", buffering=1)
    sys.stderr = stream
    setup_logging(stream=stream, replace=True)

    def report_failure(exc_type, exc, tb):
        logging.getLogger("genpromp").error("%s failed", f"rule {snakemake.rule}", exc_info=(exc_type, exc, tb))
        traceback.print_exception(exc_type, exc, tb, file=original)

    sys.excepthook = report_failure
    return snakemake
