"""Dataset indexing: CUB_200_2011, ILSVRC2012_list and wsolevaluation metadata → parquet tables.

Output (docs/FORMATS.md § Index tables): ``train.parquet`` / ``test.parquet`` (image_id, path,
label, width, height, boxes) and ``classes.parquet`` (class_id, name, synonyms, wnid, meta_token,
concept_token, plus ``kept``: whether the class survives ``keep_class``).

Decisions (documented here, tested in tests/test_indexing.py):

* ``image_id`` is the image path relative to the split's image folder, without extension
  (CUB: ``001.X/X_0001``, ImageNet: ``n01440764/n01440764_10026`` and, for the test split,
  ``n01440764/ILSVRC2012_val_00000293``; wsol: the metadata path without extension). ``path`` is
  relative to the dataset root (CUB: ``images/...``, ImageNet: ``train/...`` / ``val/...``); for
  the wsol layout it is relative to ``image_root`` (see ``image_root_for``).
* Boxes are ``[x1, y1, x2, y2]`` float64 in original pixels (CUB ``x y w h`` → ``x, y, x+w, y+h``),
  stored as given (not clipped). A box may stick out of the image by at most ``BOX_TOLERANCE``
  = 1 px (annotation rounding, 1-based ImageNet coordinates); more is an error, as are
  ``x2 < x1``, ``y2 < y1`` and zero-area boxes. A CUB line may carry several ``x y w h`` groups
  (as the reference reads it); real CUB has one.
* Labels are 0-based; CUB's 1-based labels are shifted; a label outside ``[0, C)`` is an error.
* ``keep_class``: ``None`` keeps all; a 2-element list ``[first, last]`` is an inclusive range;
  any other list is an explicit set of 0-based ids. Only train/test rows are filtered; the class
  table keeps **all** C classes (with original ids and a ``kept`` flag) because classifier score
  vectors and top-5 predictions range over all C classes.
* Images: every image is opened and its size read from the header (cheap, catches missing and
  non-image files). With ``verify="test"`` (default) test images are also decoded completely
  (catches truncated/corrupt files; the test split is what CAMs are computed on: ~50 k ImageNet
  images ≈ a few CPU-minutes, spread over ``threads``); ``"all"`` decodes train images too
  (1.28 M ImageNet images: slow), ``"header"`` decodes none.
* Every index-file problem raises ``InputError(file, message, line)``; nothing is written unless
  all three tables were built.
"""

from __future__ import annotations

import csv
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import layout
from ..errors import GenprompError, InputError
from ..io import atomic_path, resolve_inside
from ..prompts import concept_token, meta_token_for
from .images import check_decodes, image_size

__all__ = [
    "BOX_TOLERANCE", "IMAGE_SCHEMA", "CLASS_SCHEMA", "DatasetIndex", "ImageRecord", "ClassRecord",
    "index_cub", "index_imagenet", "index_wsol", "index_dataset", "keep_class_ids", "read_kept_class_ids",
    "image_root_for",
    "write_index", "read_index", "register_cli",
]

log = logging.getLogger(__name__)

BOX_TOLERANCE = 1.0
VERIFY_CHOICES = ("test", "all", "header")

IMAGE_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("path", pa.string()), ("label", pa.int32()),
    ("width", pa.int32()), ("height", pa.int32()), ("boxes", pa.list_(pa.list_(pa.float64()))),
])
CLASS_SCHEMA = pa.schema([
    ("class_id", pa.int32()), ("name", pa.string()), ("synonyms", pa.string()), ("wnid", pa.string()),
    ("meta_token", pa.string()), ("concept_token", pa.string()), ("kept", pa.bool_()),
])


@dataclass
class ImageRecord:
    """One listed image before its size is read: where it came from, for error messages."""

    image_id: str
    path: str          # relative to the dataset root (wsol: to image_root)
    full: Path
    label: int
    boxes: list        # [[x1, y1, x2, y2], ...] floats
    source: Path       # index file
    line: int
    box_source: Path | None = None   # file the boxes came from (default: source)
    box_line: int | None = None


@dataclass
class ClassRecord:
    """One class: name and synonyms as the dataset gives them."""

    name: str
    synonyms: str
    wnid: str = ""


@dataclass
class DatasetIndex:
    """The three index tables."""

    train: pd.DataFrame
    test: pd.DataFrame
    classes: pd.DataFrame


# ---------------------------------------------------------------------------------------------
# Line-level parsing helpers
# ---------------------------------------------------------------------------------------------

def _lines(path, sep=None):
    """Yield ``(line_number, fields)`` of the non-blank lines of a text file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found (is the dataset root right?)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc})") from None
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            yield number, ([f.strip() for f in raw.split(sep)] if sep else raw.split())


def _int(text, path, line, what):
    try:
        return int(text)
    except ValueError:
        raise InputError(path, f"{what} {text!r} is not an integer", line) from None


def _float(text, path, line, what):
    try:
        value = float(text)
    except ValueError:
        raise InputError(path, f"{what} {text!r} is not a number", line) from None
    if not np.isfinite(value):
        raise InputError(path, f"{what} {text!r} is not finite", line)
    return value


def _check_box(box, path, line):
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        raise InputError(path, f"box {box} has x2 < x1 or y2 < y1 (expected x1 y1 x2 y2)", line)
    if x2 == x1 or y2 == y1:
        raise InputError(path, f"box {box} has zero area", line)


def _strip_ext(rel):
    return os.path.splitext(rel)[0]


def keep_class_ids(keep_class, n_classes):
    """The kept 0-based class ids (sorted) for ``keep_class`` (None | [first, last] | list)."""
    if keep_class is None:
        return list(range(n_classes))
    keep = [int(k) for k in keep_class]
    if len(keep) == 2:
        if keep[0] > keep[1]:
            raise GenprompError(f"keep_class range {keep} is empty")
        keep = list(range(keep[0], keep[1] + 1))
    bad = [k for k in keep if k < 0 or k >= n_classes]
    if bad:
        raise GenprompError(f"keep_class {keep_class}: ids {bad[:5]} are outside 0..{n_classes - 1}")
    return sorted(set(keep))


def read_kept_class_ids(classes_parquet):
    """Ids (sorted) of the kept classes of a written class table: the classes the method trains.

    A class table without the ``kept`` column (made by hand) keeps every class; a table that keeps
    none raises InputError.
    """
    df = pd.read_parquet(classes_parquet)
    if "class_id" not in df.columns:
        raise InputError(classes_parquet, "missing column class_id; regenerate the index (docs/FORMATS.md)")
    if "kept" in df.columns:
        df = df[df["kept"].astype(bool)]
    ids = sorted(int(c) for c in df["class_id"])
    if not ids:
        raise InputError(classes_parquet, "no class is marked kept; check datasets.<name>.keep_class and "
                                          "rebuild the index")
    return ids


def _record_label(rec, n_classes):
    if not 0 <= rec.label < n_classes:
        raise InputError(rec.source, f"label {rec.label} is outside 0..{n_classes - 1} "
                                     f"({n_classes} classes)", rec.line)


def _check_unique(records):
    seen = {}
    for rec in records:
        if rec.image_id in seen:
            raise InputError(rec.source, f"duplicate image {rec.image_id!r} (first listed on line "
                                         f"{seen[rec.image_id]})", rec.line)
        seen[rec.image_id] = rec.line


# ---------------------------------------------------------------------------------------------
# Image sizes and table building
# ---------------------------------------------------------------------------------------------

def _measure(records, decode, threads):
    """``[(width, height)]`` of every record's image; errors name the index file and line."""
    reader = check_decodes if decode else image_size

    def one(rec):
        try:
            return reader(rec.full)
        except InputError as exc:
            raise InputError(rec.source, f"image {rec.path}: {exc}", rec.line) from None

    if threads <= 1 or len(records) < 8:
        return [one(r) for r in records]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, records))


def _records_to_frame(records, decode, threads):
    sizes = _measure(records, decode, threads)
    for rec, (w, h) in zip(records, sizes):
        for box in rec.boxes:
            x1, y1, x2, y2 = box
            if x1 < -BOX_TOLERANCE or y1 < -BOX_TOLERANCE or x2 > w + BOX_TOLERANCE or y2 > h + BOX_TOLERANCE:
                raise InputError(rec.box_source or rec.source, f"box {box} lies outside the {w}x{h} image "
                                 f"{rec.path} (tolerance {BOX_TOLERANCE:g} px)", rec.box_line or rec.line)
    return pd.DataFrame({
        "image_id": pd.Series([r.image_id for r in records], dtype=object),
        "path": pd.Series([r.path for r in records], dtype=object),
        "label": np.array([r.label for r in records], np.int32),
        "width": np.array([s[0] for s in sizes], np.int32),
        "height": np.array([s[1] for s in sizes], np.int32),
        "boxes": pd.Series([[list(map(float, b)) for b in r.boxes] for r in records], dtype=object),
    })


def _class_frame(classes, prefix, meta_word, tokenizer, kept):
    if meta_word is not None:
        if tokenizer is not None and len(tokenizer.tokenize(meta_word)) != 1:
            raise GenprompError(f"meta_word {meta_word!r} is not a single CLIP token")
        metas = [meta_word] * len(classes)
    else:
        if tokenizer is None:
            raise GenprompError("a tokenizer is needed to choose per-class meta tokens (or set meta_word)")
        metas = [meta_token_for(c.synonyms, tokenizer) for c in classes]
    kept = set(kept)
    return pd.DataFrame({
        "class_id": np.arange(len(classes), dtype=np.int32),
        "name": pd.Series([c.name for c in classes], dtype=object),
        "synonyms": pd.Series([c.synonyms for c in classes], dtype=object),
        "wnid": pd.Series([c.wnid for c in classes], dtype=object),
        "meta_token": pd.Series(metas, dtype=object),
        "concept_token": pd.Series([concept_token(prefix, i) for i in range(len(classes))], dtype=object),
        "kept": np.array([i in kept for i in range(len(classes))], bool),
    })


def _build(train, test, classes, keep_class, prefix, meta_word, tokenizer, verify, threads):
    if verify not in VERIFY_CHOICES:
        raise GenprompError(f"verify must be one of {VERIFY_CHOICES}, got {verify!r}")
    n = len(classes)
    if n == 0:
        raise GenprompError("the dataset lists no classes")
    for recs in (train, test):
        _check_unique(recs)
        for rec in recs:
            _record_label(rec, n)
    kept = keep_class_ids(keep_class, n)
    keep = set(kept)
    train = [r for r in train if r.label in keep]
    test = [r for r in test if r.label in keep]
    if not test:
        raise GenprompError("no test images left (after keep_class filtering)")
    return DatasetIndex(
        train=_records_to_frame(train, verify == "all", threads),
        test=_records_to_frame(test, verify in ("all", "test"), threads),
        classes=_class_frame(classes, prefix, meta_word, tokenizer, kept),
    )


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------

def _id_table(path, n_fields, what):
    """``{id: (fields, line)}`` from an ``id f1 f2 ...`` file; ids unique positive integers."""
    table = {}
    for line, fields in _lines(path):
        if len(fields) < n_fields + 1 or (n_fields and len(fields) != n_fields + 1 and what != "box"):
            raise InputError(path, f"expected 'id {what}' ({n_fields + 1} fields), got {' '.join(fields)!r}", line)
        image_num = _int(fields[0], path, line, "image id")
        if image_num in table:
            raise InputError(path, f"duplicate image id {image_num} (first on line {table[image_num][1]})", line)
        table[image_num] = (fields[1:], line)
    return table


def index_cub(root, keep_class=None, tokenizer=None, meta_word="bird", token_prefix="cub",
              verify="test", threads=1):
    """Index a CUB_200_2011 folder (``images.txt``, ``image_class_labels.txt``,
    ``train_test_split.txt``, ``bounding_boxes.txt``, ``classes.txt``, ``images/``)."""
    root = Path(root)
    f_images, f_labels = root / "images.txt", root / "image_class_labels.txt"
    f_split, f_boxes, f_classes = root / "train_test_split.txt", root / "bounding_boxes.txt", root / "classes.txt"
    classes = []
    for line, fields in _lines(f_classes):
        if len(fields) != 2:
            raise InputError(f_classes, "expected 'id NNN.Class_Name'", line)
        if _int(fields[0], f_classes, line, "class id") != len(classes) + 1:
            raise InputError(f_classes, f"class ids must be 1, 2, 3, ... in order; expected {len(classes) + 1}", line)
        name = fields[1].split(".", 1)[1] if "." in fields[1] else fields[1]
        classes.append(ClassRecord(name=name, synonyms=name.replace("_", " ")))
    images = _id_table(f_images, 1, "path")
    labels = _id_table(f_labels, 1, "label")
    split = _id_table(f_split, 1, "is_train")
    boxes = _id_table(f_boxes, 4, "box")
    for other, table in ((f_labels, labels), (f_split, split), (f_boxes, boxes)):
        missing = sorted(set(images) - set(table))
        if missing:
            raise InputError(other, f"has no line for image ids {missing[:5]} ({len(missing)} missing) "
                                    f"listed in {f_images}")
        extra = sorted(set(table) - set(images))
        if extra:
            raise InputError(other, f"lists image id {extra[0]} which {f_images} does not have", table[extra[0]][1])
    train, test = [], []
    for num, ((rel,), line) in images.items():
        full = resolve_inside(root / "images", rel, f_images, line)
        (lab_txt,), lab_line = labels[num]
        label = _int(lab_txt, f_labels, lab_line, "label")
        if not 1 <= label <= len(classes):
            raise InputError(f_labels, f"label {label} is outside 1..{len(classes)} (CUB labels are 1-based)", lab_line)
        (flag,), split_line = split[num]
        if flag not in ("0", "1"):
            raise InputError(f_split, f"split flag {flag!r} must be 1 (train) or 0 (test)", split_line)
        vals, box_line = boxes[num]
        if len(vals) % 4:
            raise InputError(f_boxes, f"expected 'id x y w h' (groups of 4 numbers), got {len(vals)} numbers", box_line)
        rec_boxes = []
        for k in range(0, len(vals), 4):
            x, y, w, h = (_float(v, f_boxes, box_line, "box coordinate") for v in vals[k:k + 4])
            box = [x, y, x + w, y + h]
            if w < 0 or h < 0:
                raise InputError(f_boxes, f"box x y w h = {x} {y} {w} {h} has negative width/height "
                                          "(x2 < x1)", box_line)
            _check_box(box, f_boxes, box_line)
            rec_boxes.append(box)
        rec = ImageRecord(_strip_ext(rel), f"images/{rel}", full, label - 1, rec_boxes, f_images, line,
                          f_boxes, box_line)
        (train if flag == "1" else test).append(rec)
    return _build(train, test, classes, keep_class, token_prefix, meta_word, tokenizer, verify, threads)


def _read_synset_mapping(path):
    classes = []
    for line, fields in _lines(path):
        if len(fields) < 2 or not fields[0].startswith("n"):
            raise InputError(path, "expected 'nXXXXXXXX description'", line)
        desc = " ".join(fields[1:])
        classes.append(ClassRecord(name=desc.split(",")[0].strip(), synonyms=desc, wnid=fields[0]))
    wnids = [c.wnid for c in classes]
    if len(set(wnids)) != len(wnids):
        raise InputError(path, "lists a synset id twice")
    return classes


def _imagenet_list(path, image_dir, prefix, with_boxes):
    records = []
    for line, fields in _lines(path):
        if len(fields) < 2:
            raise InputError(path, "expected 'relative/path.JPEG label [x1 y1 x2 y2 ...]'", line)
        rel = fields[0]
        full = resolve_inside(image_dir, rel, path, line)
        label = _int(fields[1], path, line, "label")
        vals = fields[2:]
        boxes = []
        if with_boxes:
            if not vals or len(vals) % 4:
                raise InputError(path, f"expected one or more 'x1 y1 x2 y2' boxes after the label, "
                                       f"got {len(vals)} numbers", line)
            for k in range(0, len(vals), 4):
                box = [_float(v, path, line, "box coordinate") for v in vals[k:k + 4]]
                _check_box(box, path, line)
                boxes.append(box)
        elif vals:
            raise InputError(path, f"expected 'path label', got {len(fields)} fields", line)
        records.append(ImageRecord(_strip_ext(rel), f"{prefix}/{rel}", full, label, boxes, path, line))
    return records


def index_imagenet(root, keep_class=None, synset_mapping=None, tokenizer=None, meta_word=None,
                   token_prefix="imagenet", verify="test", threads=1):
    """Index an ILSVRC folder: ``ILSVRC2012_list/{LOC_synset_mapping,train,val_folder_new}.txt``,
    images under ``train/`` and ``val/`` (list paths are relative to those folders)."""
    root = Path(root)
    lists = root / "ILSVRC2012_list"
    classes = _read_synset_mapping(synset_mapping or lists / "LOC_synset_mapping.txt")
    train = _imagenet_list(lists / "train.txt", root / "train", "train", with_boxes=False)
    test = _imagenet_list(lists / "val_folder_new.txt", root / "val", "val", with_boxes=True)
    return _build(train, test, classes, keep_class, token_prefix, meta_word, tokenizer, verify, threads)


def _csv_rows(path, n_fields, what):
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found (is the metadata root right?)")
    with open(path, newline="", encoding="utf-8") as fh:
        try:
            rows = list(csv.reader(fh))
        except csv.Error as exc:
            raise InputError(path, f"CSV error: {exc}") from None
    for line, row in enumerate(rows, 1):
        if not row or not "".join(row).strip():
            continue
        row = [c.strip() for c in row]
        if len(row) != n_fields:
            raise InputError(path, f"expected {what} ({n_fields} comma-separated fields), got {len(row)}", line)
        yield line, row


def _wsol_split(meta, image_root, split, need_boxes):
    folder = Path(meta) / split
    f_ids, f_labels = folder / "image_ids.txt", folder / "class_labels.txt"
    f_sizes, f_loc = folder / "image_sizes.txt", folder / "localization.txt"
    order = {}
    for line, fields in _lines(f_ids, sep="\n"):
        rel = fields[0]
        if rel in order:
            raise InputError(f_ids, f"duplicate image {rel!r} (first on line {order[rel]})", line)
        order[rel] = line
    labels = {}
    for line, (rel, lab) in _csv_rows(f_labels, 2, "path,label"):
        if rel not in order:
            raise InputError(f_labels, f"image {rel!r} is not in {f_ids}", line)
        if rel in labels:
            raise InputError(f_labels, f"duplicate image {rel!r}", line)
        labels[rel] = (_int(lab, f_labels, line, "label"), line)
    missing = [r for r in order if r not in labels]
    if missing:
        raise InputError(f_labels, f"no label for {missing[:5]} ({len(missing)} images)")
    sizes = {}
    if f_sizes.is_file():
        for line, (rel, w, h) in _csv_rows(f_sizes, 3, "path,width,height"):
            sizes[rel] = (_int(w, f_sizes, line, "width"), _int(h, f_sizes, line, "height"), line)
    boxes = {r: [] for r in order}
    if f_loc.is_file():
        for line, (rel, *coords) in _csv_rows(f_loc, 5, "path,x0,y0,x1,y1"):
            if rel not in order:
                raise InputError(f_loc, f"image {rel!r} is not in {f_ids}", line)
            box = [_float(v, f_loc, line, "box coordinate") for v in coords]
            _check_box(box, f_loc, line)
            boxes[rel].append(box)
    elif need_boxes:
        raise InputError(f_loc, "file not found: the test split needs boxes")
    if need_boxes:
        nobox = [r for r, b in boxes.items() if not b]
        if nobox:
            raise InputError(f_loc, f"no box for {nobox[:5]} ({len(nobox)} test images)")
    records = []
    for rel, line in order.items():
        full = resolve_inside(image_root, rel, f_ids, line)
        label, lab_line = labels[rel]
        records.append(ImageRecord(_strip_ext(rel), rel, full, label, boxes[rel], f_labels, lab_line))
    return records, sizes, f_sizes


def index_wsol(metadata_root, image_root, class_names=None, keep_class=None, tokenizer=None, meta_word=None,
               token_prefix="wsol", verify="test", threads=1):
    """Index clovaai/wsolevaluation metadata (``<split>/image_ids.txt``, ``class_labels.txt``,
    ``image_sizes.txt``, ``localization.txt`` for splits ``train`` and ``test``). ``class_names``
    is a LOC_synset_mapping-style file; without it classes are named ``class_<i>``. Sizes given in
    ``image_sizes.txt`` must match the image files."""
    train, _, _ = _wsol_split(metadata_root, image_root, "train", need_boxes=False)
    test, sizes, f_sizes = _wsol_split(metadata_root, image_root, "test", need_boxes=True)
    if class_names:
        classes = _read_synset_mapping(class_names)
    else:
        n = max(r.label for r in train + test) + 1
        classes = [ClassRecord(name=f"class_{i}", synonyms=f"class {i}") for i in range(n)]
    index = _build(train, test, classes, keep_class, token_prefix, meta_word, tokenizer, verify, threads)
    for row in index.test.itertuples():
        if row.path in sizes:
            w, h, line = sizes[row.path]
            if (w, h) != (row.width, row.height):
                raise InputError(f_sizes, f"size {w}x{h} of {row.path} disagrees with the file ({row.width}x{row.height})", line)
    return index


# ---------------------------------------------------------------------------------------------
# Writing, reading, config entry point
# ---------------------------------------------------------------------------------------------

def write_index(index, out_dir):
    """Write ``train.parquet``, ``test.parquet``, ``classes.parquet`` into ``out_dir`` (atomically each)."""
    out_dir = Path(out_dir)
    tables = {
        "train": pa.Table.from_pandas(index.train, schema=IMAGE_SCHEMA, preserve_index=False),
        "test": pa.Table.from_pandas(index.test, schema=IMAGE_SCHEMA, preserve_index=False),
        "classes": pa.Table.from_pandas(index.classes, schema=CLASS_SCHEMA, preserve_index=False),
    }
    for name, table in tables.items():
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp)
    return out_dir


def read_index(out_dir):
    """Read the three tables back as a DatasetIndex."""
    out_dir = Path(out_dir)
    return DatasetIndex(*(pd.read_parquet(out_dir / f"{n}.parquet") for n in ("train", "test", "classes")))


def image_root_for(dataset):
    """Folder that the index's ``path`` column is relative to (wsol: ``image_root``)."""
    if dataset["layout"] == "wsol":
        return dataset.get("image_root") or dataset["root"]
    return dataset["root"]


def _load_tokenizer(path):
    if path is None:
        return None
    from transformers import CLIPTokenizer
    if not Path(path).is_dir():
        raise GenprompError(f"tokenizer folder {path} not found (run `genpromp assets`)")
    return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)


def index_dataset(dataset, out_dir=None, tokenizer=None, verify="test", threads=1):
    """Index one ``datasets.<name>`` config entry; write the tables when ``out_dir`` is given.

    ``tokenizer`` is a CLIPTokenizer or the path of a tokenizer folder.
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _load_tokenizer(tokenizer)
    layout = dataset["layout"]
    common = dict(keep_class=dataset.get("keep_class"), tokenizer=tokenizer, meta_word=dataset.get("meta_word"),
                  token_prefix=dataset.get("token_prefix") or layout, verify=verify, threads=threads)
    if layout == "cub":
        index = index_cub(dataset["root"], **common)
    elif layout == "imagenet":
        index = index_imagenet(dataset["root"], **common)
    elif layout == "wsol":
        index = index_wsol(dataset["root"], image_root_for(dataset), dataset.get("class_names"), **common)
    else:
        raise GenprompError(f"unknown dataset layout {layout!r}")
    log.info("indexed %s: %d train, %d test images, %d classes (%d kept)", dataset["root"], len(index.train),
             len(index.test), len(index.classes), int(index.classes["kept"].sum()))
    if out_dir is not None:
        write_index(index, out_dir)
    return index


def _cli(args):
    from ..config import load_config
    config = load_config(args.config)
    if args.dataset not in config["datasets"]:
        raise GenprompError(f"dataset {args.dataset!r} is not in {args.config} (have {sorted(config['datasets'])})")
    out = args.out or layout.index_dir(args.dataset)
    index_dataset(config["datasets"][args.dataset], out, args.tokenizer, args.verify, args.threads)


def register_cli(sub):
    p = sub.add_parser("index", help="index a dataset (CUB / ImageNet / wsol layout) into parquet tables",
                       description="Read a dataset's original index files, check every entry (paths, "
                                   "labels, boxes, image files) and write results/<dataset>/index/"
                                   "{train,test,classes}.parquet (docs/FORMATS.md).")
    p.add_argument("dataset", help="dataset name: a key of `datasets:` in the config")
    p.add_argument("--config", default="config/config.yaml", help="workflow config YAML (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: results/<dataset>/index)")
    p.add_argument("--tokenizer", default="resources/assets/clip_tokenizer",
                   help="CLIP tokenizer folder used to pick meta tokens (default: %(default)s)")
    p.add_argument("--verify", choices=VERIFY_CHOICES, default="test",
                   help="which images to decode completely to catch truncated/corrupt files: test "
                        "split only (default), all, or header (only open each file and read its size)")
    p.add_argument("--threads", type=int, default=2, help="threads for reading images (default: %(default)s)")
    p.set_defaults(func=_cli)
