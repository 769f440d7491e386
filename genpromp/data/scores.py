"""Classifier score import: original JSON / CSV → ``results/<dataset>/scores/<classifier>.parquet``.

Inputs (docs/FORMATS.md § Classifier scores):

* JSON ``{image_name: {"pred_scores": [C floats]}, ...}`` — the reference's format. It is parsed
  **incrementally**: the file is read in chunks, each entry is matched by a regular expression and
  its numbers are parsed by numpy in C (``np.fromstring``); entries that do not have the canonical
  ``{"pred_scores": [...]}`` shape (extra keys, other order) fall back to ``json`` for that entry
  only. Memory stays at ≈ the score matrix (N × C float32) plus one chunk, instead of the ~30×
  blow-up of ``json.load`` (Python floats in lists).
* CSV ``image_id,s0,...,s{C-1}`` with a header, read in chunks by pandas.

Keys are the index's ``image_id``; a trailing image extension (``.jpg``, ``.JPEG``, ``.png``, …) is
accepted and stripped (CUB's reference keys are ``images.txt`` paths with extension).

Checks: every test image of the index must have exactly C finite scores, C = the number of rows of
``classes.parquet`` — all classes, also when ``keep_class`` filtered the images (score vectors
and top-5 always range over all C classes, as in the reference). Missing, malformed (wrong count,
unparsable, NaN/inf) or duplicate entries raise ``InputError`` naming the first few, their count,
and the line of the first. Images not in the index (e.g. removed by ``keep_class``) are logged as
a warning and ignored.

Output rows follow the index's test order: ``image_id``, ``top5_ids`` (int32, best first; ties
broken by the lower class id), ``top5_scores`` (float32), ``scores`` (float32 [C]), written in
row groups of ``ROW_GROUP`` rows.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import GenprompError, InputError
from ..io import atomic_path

__all__ = [
    "read_top5",
    "SCORES_SCHEMA", "ROW_GROUP", "IMAGE_EXTENSIONS", "ScoreTable", "iter_json_scores", "iter_csv_scores",
    "collect_scores", "topk_ids", "write_scores", "import_scores", "register_cli",
]

log = logging.getLogger(__name__)

ROW_GROUP = 4096
CHUNK_BYTES = 16 << 20
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
SCORES_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("top5_ids", pa.list_(pa.int32())),
    ("top5_scores", pa.list_(pa.float32())), ("scores", pa.list_(pa.float32())),
])

_WS = re.compile(rb"\s*")
_ENTRY = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*\{\s*"pred_scores"\s*:\s*\[([^\[\]{}"]*)\]\s*\}')
_KEY = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*')


@dataclass
class ScoreTable:
    """Scores collected for the index's test images."""

    image_ids: list
    scores: np.ndarray                       # float32 [N, C]
    extra: list = field(default_factory=list)  # keys not in the index


def _decode_key(raw):
    return json.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode("utf-8")


def _parse_floats(text):
    """float64 array from ``"1.0, 2e-3, ..."``; None if malformed."""
    body = text.strip()
    if not body:
        return np.zeros(0)
    if body.endswith(b","):
        return None
    try:
        values = np.fromstring(body, dtype=np.float64, sep=",")
    except ValueError:
        return None
    if len(values) != body.count(b",") + 1:
        return None
    return values


class _JsonStream:
    """Chunked byte buffer over a file with line tracking."""

    def __init__(self, fh, chunk):
        self.fh, self.chunk = fh, chunk
        self.buf, self.pos, self.eof = b"", 0, False
        self.counted_pos, self.counted_lines = 0, 1   # line number at buffer offset counted_pos

    def more(self):
        """Read another chunk (dropping consumed bytes); False at end of file."""
        if self.eof:
            return False
        if self.pos:
            self.line(self.pos)
            self.buf, self.counted_pos, self.pos = self.buf[self.pos:], 0, 0
        data = self.fh.read(self.chunk)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def line(self, pos=None):
        """1-based line number at buffer offset ``pos`` (offsets must not decrease)."""
        pos = self.pos if pos is None else pos
        self.counted_lines += self.buf.count(b"\n", self.counted_pos, pos)
        self.counted_pos = pos
        return self.counted_lines

    def skip_ws(self):
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self.more():
                return

    def peek(self):
        self.skip_ws()
        return self.buf[self.pos:self.pos + 1]


def _slow_entry(stream):
    """Parse one ``"key": value`` with the json module; None if the buffer ends inside it."""
    m = _KEY.match(stream.buf, stream.pos)
    if not m:
        return None
    window = 1 << 16
    while True:
        raw = stream.buf[m.end():m.end() + window]
        text = raw.decode("utf-8", errors="surrogateescape")
        try:
            value, used = json.JSONDecoder().raw_decode(text)
            break
        except json.JSONDecodeError:
            if m.end() + window >= len(stream.buf):
                return None
            window *= 4
    end = m.end() + len(text[:used].encode("utf-8", errors="surrogateescape"))
    key = _decode_key(m.group(1))
    scores = value.get("pred_scores") if isinstance(value, dict) else None
    try:
        arr = np.asarray(scores, dtype=np.float64) if scores is not None else None
    except (TypeError, ValueError):
        arr = None
    if arr is not None and arr.ndim != 1:
        arr = None
    return key, arr, end


def iter_json_scores(path, chunk_bytes=CHUNK_BYTES):
    """Yield ``(key, scores float64 [C] or None if malformed, line)`` from the original JSON,
    incrementally. Structural JSON errors raise InputError with the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "scores file not found")
    with open(path, "rb") as fh:
        stream = _JsonStream(fh, chunk_bytes)
        stream.more()
        if stream.buf.startswith(b"\xef\xbb\xbf"):
            stream.pos = 3
        if stream.peek() != b"{":
            raise InputError(path, "expected a JSON object {image_name: {\"pred_scores\": [...]}}", stream.line())
        stream.pos += 1
        first = True
        while True:
            c = stream.peek()
            if c == b"}":
                stream.pos += 1
                break
            if not first:
                if c != b",":
                    raise InputError(path, f"expected ',' or '}}' between entries, found {c!r}", stream.line())
                stream.pos += 1
                stream.skip_ws()
            first = False
            while True:
                line = stream.line()
                m = _ENTRY.match(stream.buf, stream.pos)
                if m:
                    yield _decode_key(m.group(1)), _parse_floats(m.group(2)), line
                    stream.pos = m.end()
                    break
                got = _slow_entry(stream)
                if got is not None:
                    key, arr, end = got
                    yield key, arr, line
                    stream.pos = end
                    break
                if not stream.more():
                    raise InputError(path, "malformed or truncated JSON entry (expected "
                                           "\"image_name\": {\"pred_scores\": [numbers]})", line)
        stream.skip_ws()
        if stream.pos < len(stream.buf):
            raise InputError(path, "unexpected data after the closing '}'", stream.line())


def iter_csv_scores(path, n_classes, chunk_rows=ROW_GROUP):
    """Yield ``(key, scores float64 [C] or None, line)`` from ``image_id,s0,...`` CSV."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "scores file not found")
    try:
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"CSV error: {exc}", 1) from None
    if not header or header[0] != "image_id":
        raise InputError(path, f"the header must start with image_id, got {header[:3]}", 1)
    if len(header) - 1 != n_classes:
        raise InputError(path, f"the header has {len(header) - 1} score columns; the index has {n_classes} classes", 1)
    line = 2
    try:
        reader = pd.read_csv(path, chunksize=chunk_rows, dtype={"image_id": str}, skip_blank_lines=False)
        for chunk in reader:
            ids = chunk["image_id"].tolist()
            values = chunk.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
            for k, key in enumerate(ids):
                yield key, values[k], line + k
            line += len(chunk)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(path, f"CSV error: {exc}") from None


def _strip_known_ext(key, wanted):
    if key in wanted:
        return key
    stem, dot, ext = key.rpartition(".")
    if dot and "." + ext.lower() in IMAGE_EXTENSIONS and stem in wanted:
        return stem
    return key


def _summarise(items, n=5):
    return ", ".join(repr(i) for i in items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else f" ({len(items)} in all)")


def collect_scores(entries, image_ids, n_classes, source):
    """Fill a float32 [N, C] matrix in ``image_ids`` order from ``(key, scores, line)`` entries.

    Raises InputError naming missing / malformed / duplicate entries (first few + count).
    """
    row_of = {k: i for i, k in enumerate(image_ids)}
    scores = np.zeros((len(image_ids), n_classes), np.float32)
    seen = np.zeros(len(image_ids), bool)
    seen_line = {}
    bad, extra = [], []
    first_bad_line = None
    for key, values, line in entries:
        image_id = _strip_known_ext(key, row_of)
        row = row_of.get(image_id)
        if row is None:
            extra.append(key)
            continue
        if seen[row]:
            raise InputError(source, f"image {image_id!r} has scores twice (first on line {seen_line[row]})", line)
        seen[row], seen_line[row] = True, line
        problem = None
        if values is None:
            problem = "unparsable scores"
        elif len(values) != n_classes:
            problem = f"{len(values)} scores, expected {n_classes}"
        elif not np.isfinite(values).all():
            problem = "NaN or infinite score"
        if problem:
            bad.append(f"{key} ({problem})")
            first_bad_line = first_bad_line or line
            continue
        scores[row] = values
    if bad:
        raise InputError(source, f"malformed score entries: {_summarise(bad)}; each test image needs "
                                 f"{n_classes} finite scores (one per class of the index)", first_bad_line)
    missing = [image_ids[i] for i in np.flatnonzero(~seen)]
    if missing:
        raise InputError(source, f"no scores for {len(missing)} test images: {_summarise(missing)}; "
                                 "run the classifier on the whole test split (keys = image ids, "
                                 "optionally with the image extension)")
    if extra:
        log.warning("%s: %d entries are not test images of the index and are ignored (e.g. %s)",
                    source, len(extra), ", ".join(map(repr, extra[:3])))
    return ScoreTable(list(image_ids), scores, extra)


def topk_ids(scores, k=5):
    """Top-``k`` class ids [N, k] int32 of float scores [N, C], best first; ties → lower id first."""
    k = min(k, scores.shape[1])
    if k == 0 or len(scores) == 0:
        return np.zeros((len(scores), k), np.int32)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=-1)
    top = np.take_along_axis(part, order, axis=1)
    # ties at the k-th place: argpartition may pick any of them; redo those rows exactly
    kth = np.take_along_axis(scores, top[:, -1:], axis=1)
    tied = np.flatnonzero((scores >= kth).sum(1) > k)
    if len(tied):
        top[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :k]
    return top.astype(np.int32)


def _list_array(values, dtype):
    n, width = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1).astype(dtype, copy=False)))


def write_scores(table, dest, row_group=ROW_GROUP):
    """Write a ScoreTable to parquet (atomically, in row groups)."""
    with atomic_path(dest) as tmp:
        with pq.ParquetWriter(tmp, SCORES_SCHEMA) as writer:
            for start in range(0, len(table.image_ids), row_group):
                block = table.scores[start:start + row_group]
                top = topk_ids(block)
                top_scores = np.take_along_axis(block, top, axis=1)
                batch = pa.RecordBatch.from_arrays([
                    pa.array(table.image_ids[start:start + row_group], pa.string()),
                    _list_array(top, np.int32), _list_array(top_scores, np.float32),
                    _list_array(block, np.float32),
                ], schema=SCORES_SCHEMA)
                writer.write_batch(batch, row_group_size=row_group)
    return Path(dest)


def import_scores(scores_path, index_dir, dest, fmt=None):
    """Import a classifier's scores for the index in ``index_dir`` and write ``dest``.

    ``fmt``: ``json`` | ``csv`` (default: from the file suffix).
    """
    scores_path, index_dir = Path(scores_path), Path(index_dir)
    fmt = fmt or ("csv" if scores_path.suffix.lower() == ".csv" else "json")
    test_ids = pq.read_table(index_dir / "test.parquet", columns=["image_id"]).column(0).to_pylist()
    n_classes = pq.read_metadata(index_dir / "classes.parquet").num_rows
    if fmt == "json":
        entries = iter_json_scores(scores_path)
    elif fmt == "csv":
        entries = iter_csv_scores(scores_path, n_classes)
    else:
        raise GenprompError(f"unknown scores format {fmt!r} (json | csv)")
    table = collect_scores(entries, test_ids, n_classes, scores_path)
    write_scores(table, dest)
    log.info("imported %d x %d scores from %s into %s", len(test_ids), n_classes, scores_path, dest)
    return table


def read_top5(path):
    """``{image_id: top-5 class ids tuple}`` from a scores parquet (docs/FORMATS.md § Classifier scores)."""
    table = pq.read_table(path, columns=["image_id", "top5_ids"])
    return {str(i): tuple(int(c) for c in ids)
            for i, ids in zip(table.column("image_id").to_pylist(), table.column("top5_ids").to_pylist())}


def _cli(args):
    import_scores(args.scores, args.index, args.out, args.format)


def register_cli(sub):
    p = sub.add_parser("import-scores", help="import a classifier's scores (original JSON or CSV) into parquet",
                       description="Read {image_name: {\"pred_scores\": [C floats]}} JSON (streamed; "
                                   "keys may carry the image extension) or image_id,s0,...,s{C-1} CSV, "
                                   "check that every test image of the index has C finite scores, and "
                                   "write image_id / top5_ids / top5_scores / scores parquet.")
    p.add_argument("scores", help="classifier output file (.json or .csv)")
    p.add_argument("--index", required=True, help="index folder with test.parquet and classes.parquet "
                                                  "(results/<dataset>/index)")
    p.add_argument("--out", required=True, help="output parquet (results/<dataset>/scores/<classifier>.parquet)")
    p.add_argument("--format", choices=["json", "csv"], default=None,
                   help="input format (default: from the file suffix; .csv = csv, otherwise json)")
    p.set_defaults(func=_cli)
