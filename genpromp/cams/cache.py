"""The CAM cache: shards of class activation maps plus an index (docs/FORMATS.md § CAM cache).

This is the contract between a CAM producer (ours or any other method's) and the evaluator.

- ``shard-<k>.npz`` (k zero-padded to 5 digits) holds ``image_ids`` (``<U`` [N]),
  ``class_ids`` (int32 [N, K]) and ``cams`` (float16 [N, K, S, S], finite, non-negative).
- ``index.parquet`` has one row per (image, role): image_id, shard, row, slot, class_id, role.

Roles per mode: ``gtk`` → (gt), ``top1`` → (top1, gt), ``top5`` → (top1 … top5, gt); slot j of a
row holds the map of role j.  Every file is written atomically; every problem found while reading
raises :class:`genpromp.errors.InputError` naming the shard file and the row.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import GenprompError, InputError
from ..layout import MODE_ROLES, Variant, roles_for_mode
from ..layout import cam_shard_name as shard_filename
from ..io import atomic_path

__all__ = [
    "MODE_ROLES", "INDEX_NAME", "CamShard", "CamCache",
    "roles_for_mode", "shard_filename", "shard_number", "validate_cams",
    "write_cam_shard", "read_cam_shard", "cam_index_rows", "write_cam_index", "register_cli",
]

INDEX_NAME = "index.parquet"
INDEX_COLUMNS = ("image_id", "shard", "row", "slot", "class_id", "role")
_SHARD_RE = re.compile(r"^shard-(\d+)\.npz$")


@dataclass(frozen=True)
class CamShard:
    """One shard's arrays: image_ids <U [N], class_ids int32 [N, K], cams float16 [N, K, S, S]."""

    path: Path
    image_ids: np.ndarray
    class_ids: np.ndarray
    cams: np.ndarray

    def __len__(self):
        return len(self.image_ids)


def shard_number(path):
    """Parse k from ``.../shard-<k>.npz``; raise InputError for any other name."""
    match = _SHARD_RE.match(Path(path).name)
    if not match:
        raise InputError(path, "a CAM shard must be named shard-<k>.npz (k zero-padded to 5 digits)")
    return int(match.group(1))


def validate_cams(path, image_ids, class_ids, cams):
    """Check the shard arrays; raise InputError naming ``path`` and the first bad row.

    image_ids: [N] strings; class_ids: integer [N, K]; cams: float [N, K, S, S], finite and >= 0.
    """
    if image_ids.ndim != 1:
        raise InputError(path, f"image_ids must be 1-D, got shape {image_ids.shape}")
    n = len(image_ids)
    if cams.ndim != 4 or cams.shape[0] != n or cams.shape[2] != cams.shape[3] or cams.shape[2] < 1:
        raise InputError(path, f"cams must have shape [N={n}, K, S, S], got {tuple(cams.shape)}")
    if class_ids.shape != cams.shape[:2]:
        raise InputError(path, f"class_ids must have shape {tuple(cams.shape[:2])} (N, K), got {tuple(class_ids.shape)}")
    if not np.issubdtype(class_ids.dtype, np.integer):
        raise InputError(path, f"class_ids must be integers, got {class_ids.dtype}")
    if not np.issubdtype(cams.dtype, np.floating):
        raise InputError(path, f"cams must be floating point, got {cams.dtype}")
    if len(set(image_ids.tolist())) != n:
        raise InputError(path, "image_ids contains duplicates; each image appears in one row")
    flat = cams.reshape(n, -1)
    for check, what in ((~np.isfinite(flat), "a NaN or infinite value"), (flat < 0, "a negative value")):
        bad = np.flatnonzero(check.any(axis=1))
        if bad.size:
            r = int(bad[0])
            raise InputError(path, f"row {r} (image_id {str(image_ids[r])!r}) has {what}; CAMs must be finite "
                                   f"and non-negative ({bad.size} bad rows in total)")
    if (class_ids < 0).any():
        r = int(np.flatnonzero((class_ids < 0).any(axis=1))[0])
        raise InputError(path, f"row {r} (image_id {str(image_ids[r])!r}) has a negative class id")


def write_cam_shard(path, image_ids, class_ids, cams, compress=False):
    """Validate and atomically write one CAM shard.

    image_ids: sequence of N strings; class_ids: int [N, K]; cams: float [N, K, S, S], finite,
    non-negative (stored as float16; a value that overflows float16 is an error).
    Returns the written path.
    """
    path = Path(path)
    shard_number(path)
    image_ids = np.asarray(list(image_ids), dtype=str)
    class_ids = np.asarray(class_ids)
    cams = np.asarray(cams)
    validate_cams(path, image_ids, class_ids, cams)
    with np.errstate(over="ignore"):
        cams16 = cams.astype(np.float16)
    validate_cams(path, image_ids, class_ids, cams16)  # overflow to inf after the cast
    save = np.savez_compressed if compress else np.savez
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            save(fh, image_ids=image_ids, class_ids=class_ids.astype(np.int32), cams=cams16)
    return path


def read_cam_shard(path, validate=True):
    """Read a shard written by :func:`write_cam_shard` (no pickles); return a :class:`CamShard`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "CAM shard not found; re-run the CAM extraction for this variant")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"image_ids", "class_ids", "cams"} - set(data.files)
            if missing:
                raise InputError(path, f"CAM shard lacks arrays {sorted(missing)}; see docs/FORMATS.md")
            shard = CamShard(path, data["image_ids"], data["class_ids"], data["cams"])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(path, f"cannot read CAM shard ({exc}); the file is damaged, re-create it") from exc
    if validate:
        validate_cams(path, shard.image_ids, shard.class_ids, shard.cams)
    return shard


def cam_index_rows(k, image_ids, class_ids, roles):
    """Index rows (list of dicts, columns as in FORMATS.md) for shard ``k``.

    class_ids: int [N, K] with K == len(roles); slot j of every row gets role roles[j].
    """
    class_ids = np.asarray(class_ids)
    if class_ids.ndim != 2 or class_ids.shape[1] != len(roles):
        raise InputError(shard_filename(k), f"shard has {class_ids.shape[1:] or '?'} maps per row but roles {list(roles)} name {len(roles)}")
    return [
        {"image_id": str(iid), "shard": int(k), "row": r, "slot": j, "class_id": int(class_ids[r, j]), "role": role}
        for r, iid in enumerate(image_ids)
        for j, role in enumerate(roles)
    ]


def _index_table(rows):
    return pa.table({
        "image_id": pa.array([r["image_id"] for r in rows], pa.string()),
        "shard": pa.array([r["shard"] for r in rows], pa.int32()),
        "row": pa.array([r["row"] for r in rows], pa.int32()),
        "slot": pa.array([r["slot"] for r in rows], pa.int32()),
        "class_id": pa.array([r["class_id"] for r in rows], pa.int32()),
        "role": pa.array([r["role"] for r in rows], pa.string()),
    })


def write_cam_index(shard_paths, out_path, roles):
    """Build ``index.parquet`` from shard files (read lazily, maps not loaded) and write it atomically.

    An image in two shards is an error. Returns the number of index rows.
    """
    rows, seen = [], {}
    for p in sorted(shard_paths, key=shard_number):
        p = Path(p)
        if not p.is_file():
            raise InputError(p, "CAM shard not found; it must exist before the index is written")
        try:
            with np.load(p, allow_pickle=False) as data:
                image_ids, class_ids = data["image_ids"], data["class_ids"]
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise InputError(p, f"cannot read CAM shard ({exc}); delete it and rerun its extraction job") from None
        k = shard_number(p)
        for iid in image_ids.tolist():
            if iid in seen:
                raise InputError(p, f"image_id {iid!r} is also in {seen[iid]}; each image belongs to one shard")
            seen[iid] = p.name
        rows.extend(cam_index_rows(k, image_ids, class_ids, roles))
    with atomic_path(out_path) as tmp:
        pq.write_table(_index_table(rows), tmp)
    return len(rows)


class CamCache:
    """Reader of one CAM cache folder (``shard-*.npz`` + ``index.parquet``).

    ``get(image_id, role)`` returns ``(class_id, cam)`` with cam float32 [S, S]; ``iter_shards()``
    yields ``(k, CamShard, index rows of that shard)`` one shard at a time (memory ~ one shard).
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.index_path = self.folder / INDEX_NAME
        self.index = self._read_index()
        self._key = {(i, r): n for n, (i, r) in enumerate(zip(self.index["image_id"], self.index["role"]))}
        self._loaded = None  # (k, CamShard)

    def _read_index(self):
        if not self.index_path.is_file():
            raise InputError(self.index_path, "CAM cache index not found; run the CAM extraction (or write "
                                              "index.parquet as in docs/FORMATS.md)")
        df = pq.read_table(self.index_path).to_pandas()
        missing = [c for c in INDEX_COLUMNS if c not in df.columns]
        if missing:
            raise InputError(self.index_path, f"index lacks columns {missing}; see docs/FORMATS.md")
        df = df[list(INDEX_COLUMNS)].reset_index(drop=True)
        dup = df.duplicated(["image_id", "role"])
        if dup.any():
            r = int(np.flatnonzero(dup.to_numpy())[0])
            raise InputError(self.index_path, f"(image_id, role) {df.image_id[r]!r}/{df.role[r]!r} listed twice", r)
        for k in sorted(df["shard"].unique()):
            p = self.folder / shard_filename(k)
            if not p.is_file():
                r = int(np.flatnonzero((df["shard"] == k).to_numpy())[0])
                raise InputError(self.index_path, f"row {r} references shard {k} but {p} does not exist; "
                                                  "re-run the CAM extraction for this variant", r)
        return df

    @property
    def roles(self):
        """Roles present in the index, e.g. ``['top1', 'gt']``."""
        return list(dict.fromkeys(self.index["role"]))

    @property
    def image_ids(self):
        """Image ids in index order, each once."""
        return list(dict.fromkeys(self.index["image_id"]))

    def shard_numbers(self):
        return sorted(int(k) for k in self.index["shard"].unique())

    def load_shard(self, k):
        """Read shard k and check it against the index rows that reference it."""
        if self._loaded is not None and self._loaded[0] == k:
            return self._loaded[1]
        shard = read_cam_shard(self.folder / shard_filename(k))
        self._check_against_index(k, shard)
        self._loaded = (k, shard)
        return shard

    def _check_against_index(self, k, shard):
        rows = self.index[self.index["shard"] == k]
        n, kk = shard.class_ids.shape
        for pos, (iid, row, slot, cid) in zip(rows.index, rows[["image_id", "row", "slot", "class_id"]].itertuples(index=False)):
            if not (0 <= row < n and 0 <= slot < kk):
                raise InputError(self.index_path, f"row/slot {row}/{slot} out of range for {shard.path.name} "
                                                  f"(N={n}, K={kk})", int(pos))
            if shard.image_ids[row] != iid or int(shard.class_ids[row, slot]) != int(cid):
                raise InputError(self.index_path, f"index says {shard.path.name} row {row} slot {slot} is image "
                                                  f"{iid!r} class {cid}, the shard holds {str(shard.image_ids[row])!r} "
                                                  f"class {int(shard.class_ids[row, slot])}; rebuild the index", int(pos))

    def get(self, image_id, role):
        """Return ``(class_id, cam)``: cam float32 [S, S] of ``image_id`` for ``role``."""
        try:
            n = self._key[(image_id, role)]
        except KeyError:
            raise InputError(self.index_path, f"no map for image {image_id!r} role {role!r}") from None
        rec = self.index.iloc[n]
        shard = self.load_shard(int(rec["shard"]))
        return int(rec["class_id"]), shard.cams[int(rec["row"]), int(rec["slot"])].astype(np.float32)

    def iter_shards(self):
        """Yield ``(k, CamShard, index rows of shard k as a DataFrame)`` in shard order."""
        for k in self.shard_numbers():
            shard = self.load_shard(k)
            yield k, shard, self.index[self.index["shard"] == k]


def _index_cli(args):
    folder = Path(args.folder)
    mode = args.mode
    if mode is None:
        try:
            mode = Variant.parse(folder.name).mode
        except GenprompError:
            raise InputError(folder, "cannot tell the CAM mode from the folder name (expected a variant name such "
                                     "as top1_w0.60_t0-99); pass --mode gtk|top1|top5") from None
    shards = sorted(folder.glob("shard-*.npz"), key=shard_number) if folder.is_dir() else []
    if not shards:
        raise InputError(folder, "no shard-<k>.npz files here; run `genpromp extract-cams` for every shard first")
    numbers = [shard_number(p) for p in shards]
    if args.shards is not None and numbers != list(range(args.shards)):
        missing = sorted(set(range(args.shards)) - set(numbers))
        raise InputError(folder, f"expected shards 0..{args.shards - 1}; missing {missing[:10]}"
                                 + (f", unexpected {sorted(set(numbers) - set(range(args.shards)))[:10]}"
                                    if set(numbers) - set(range(args.shards)) else ""))
    rows = write_cam_index(shards, folder / INDEX_NAME, roles_for_mode(mode))
    print(f"{rows} index rows from {len(shards)} shards -> {folder / INDEX_NAME}")


def register_cli(sub):
    p = sub.add_parser("cam-index", help="write a CAM cache's index.parquet from its shard files",
                       description="Read image_ids and class_ids of every shard-<k>.npz in FOLDER (maps not loaded) "
                                   "and write FOLDER/index.parquet (docs/FORMATS.md § CAM cache), the step between "
                                   "`genpromp extract-cams` and `genpromp evaluate`.")
    p.add_argument("folder", help="CAM cache folder, e.g. results/<dataset>/<run>/cams/<variant>")
    p.add_argument("--mode", choices=sorted(MODE_ROLES), default=None,
                   help="CAM mode (default: read from the folder's variant name)")
    p.add_argument("--shards", type=int, default=None,
                   help="expected number of shards (ceil(test images / test.shard_size)); refuse a partial cache")
    p.set_defaults(func=_index_cli)
