"""genpromp.logs: one format; a workflow script's records, stderr and traceback end in the rule's log."""

import io
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

from genpromp.logs import LOG_FORMAT, setup_logging

REPO = Path(__file__).resolve().parents[1]


def _run_script(tmp_path, body, append):
    """Run ``body`` as a workflow script would run: a fresh interpreter with a ``snakemake`` object."""
    log = tmp_path / "rule.log"
    code = textwrap.dedent(f"""
        import logging, sys, types
        from genpromp.logs import script_logging
        snakemake = types.SimpleNamespace(log=[{str(log)!r}], rule="demo_rule")
        sm = script_logging(snakemake, append={append})
    """) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    return proc, log


def test_records_stderr_and_traceback_go_to_the_rule_log(tmp_path):
    proc, log = _run_script(tmp_path, """
        logging.getLogger("genpromp.x").info("working on %d images", 3)
        print("a library warning", file=sys.stderr)
        raise ValueError("bad row 7")
    """, append=False)
    text = log.read_text()
    assert proc.returncode != 0
    assert "INFO genpromp.x: working on 3 images" in text
    assert "a library warning" in text
    assert "ERROR genpromp: rule demo_rule failed" in text and "ValueError: bad row 7" in text
    assert "Traceback" in text
    # the job's own stderr (Snakemake's output) still says why it failed
    assert "ValueError: bad row 7" in proc.stderr and "working on" not in proc.stderr


def test_resumable_jobs_append_others_start_empty(tmp_path):
    _run_script(tmp_path, 'logging.getLogger("genpromp").info("first attempt")', append=False)
    _, log = _run_script(tmp_path, 'logging.getLogger("genpromp").info("second attempt")', append=True)
    assert "first attempt" in log.read_text() and "second attempt" in log.read_text()
    _, log = _run_script(tmp_path, 'logging.getLogger("genpromp").info("third attempt")', append=False)
    assert "first attempt" not in log.read_text() and "third attempt" in log.read_text()


def test_setup_logging_keeps_existing_handlers_unless_replacing():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        root.handlers = [logging.NullHandler()]
        setup_logging(stream=io.StringIO())
        assert len(root.handlers) == 1 and isinstance(root.handlers[0], logging.NullHandler)
        stream = io.StringIO()
        setup_logging(stream=stream, replace=True)
        logging.getLogger("genpromp.t").warning("visible")
        assert stream.getvalue().endswith("WARNING genpromp.t: visible\n")
        assert root.handlers[0].formatter._fmt == LOG_FORMAT
    finally:
        root.handlers, _ = saved
        root.setLevel(saved[1])
