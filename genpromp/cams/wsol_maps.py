"""wsolevaluation score maps in and out of the CAM cache (docs/FORMATS.md § wsolevaluation score maps).

wsolevaluation (Choe et al., CVPR'20) keeps one score map per test image at
``<scoremap_root>/<wsol image id>.npy``, where the wsol image id is the image's path as its metadata
lists it, extension included (``val/ILSVRC2012_val_00000001.JPEG`` →
``val/ILSVRC2012_val_00000001.JPEG.npy``). A map is a 2-D float array with values in [0, 1]
(wsolevaluation's own inference writes float64 maps at 224 × 224, bicubically resized from the
network's map and min-max normalised; its box evaluator compares them with ground-truth boxes
rescaled to 224 × 224, so that is the size a box evaluation needs).

- :func:`import_wsol_maps` turns such a folder into a CAM cache of mode ``gtk``: one map per test
  image of the index, role ``gt``, class = the image's label. A map whose size is not the cache's
  ``S × S`` is resized bicubically in float64; every map is clamped at 0 and divided by its maximum
  (a no-op for a valid map of the cache's size, whose maximum is 1). Our image id is the wsol id with
  a trailing image extension removed (``val/ILSVRC2012_val_00000001``), as the index stores it.
  wsolevaluation requires maps that attain 0 and 1 and evaluates them as stored, while the evaluation
  here min-max normalises every map; for such maps both count the same, other maps are imported with
  a warning that names one of them.
- :func:`export_wsol_maps` writes a cache's ``gt``-role maps in that layout: each map is resized
  bicubically (float64) to ``size`` × ``size`` (default: the wsolevaluation frame, 224) or to the
  image's own width × height (``size="original"``), then min-max normalised in float64 exactly as the
  wsolevaluation protocol of ``genpromp evaluate`` does before quantising (a constant map becomes all
  zeros). Exported at the frame size, wsolevaluation's box evaluator on the exported files therefore
  counts exactly what ``genpromp evaluate`` reports for the cache (MaxBoxAcc and MaxBoxAccV2).

Both write atomically (the cache folder / the map folder appears complete or not at all).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..errors import GenprompError, InputError
from ..evaluation.metrics import normalize_minmax
from ..io import atomic_dir, resolve_inside
from .cache import INDEX_NAME, CamCache, roles_for_mode, shard_filename, write_cam_index, write_cam_shard

__all__ = [
    "MAP_SUFFIX", "IMAGE_EXTENSIONS", "wsol_map_path", "read_wsol_map", "list_wsol_maps", "image_id_of",
    "map_to_cache", "cache_to_wsol_map", "import_wsol_maps", "export_wsol_maps", "register_cli",
]

log = logging.getLogger(__name__)

MAP_SUFFIX = ".npy"
# Extensions removed from a wsol image id to get our image id (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def wsol_map_path(root, wsol_id):
    """``<root>/<wsol_id>.npy``; an id that is absolute or leaves ``root`` (``..``) is an InputError."""
    return resolve_inside(root, f"{wsol_id}{MAP_SUFFIX}", root)


def read_wsol_map(path):
    """Load one score map (no pickles) and check it: 2-D, floating point, finite, values in [0, 1].

    Returns float64 [H, W]; raises InputError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "score map not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(path, f"cannot read score map ({exc}); expected a .npy array written by np.save") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or min(arr.shape) < 1:
        raise InputError(path, f"a score map must be a 2-D array [H, W], got shape {getattr(arr, 'shape', None)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(path, f"a score map must be floating point, got {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(path, "score map has a NaN or infinite value; maps must be finite, in [0, 1]")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(path, f"score map values span [{lo:g}, {hi:g}]; wsolevaluation maps lie in [0, 1] "
                               "(min-max normalise them)")
    return arr


def list_wsol_maps(root):
    """Sorted wsol image ids of every ``*.npy`` under ``root`` (relative path without ``.npy``)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "score map folder not found")
    return sorted(p.relative_to(root).as_posix()[:-len(MAP_SUFFIX)] for p in root.rglob(f"*{MAP_SUFFIX}")
                  if p.is_file())


def image_id_of(wsol_id):
    """Our image id of a wsol image id: a trailing image extension (any case) removed."""
    stem, dot, ext = wsol_id.rpartition(".")
    if dot and "/" not in ext and f".{ext.lower()}" in IMAGE_EXTENSIONS:
        return stem
    return wsol_id


def map_to_cache(score_map, cam_size):
    """A wsol score map [H, W] → cache map float64 [S, S]: bicubic resize (float64) when the size
    differs, clamped at 0, divided by its maximum (an all-zero map stays zero)."""
    cam = np.asarray(score_map, dtype=np.float64)
    if cam.shape != (cam_size, cam_size):
        cam = cv2.resize(cam, (int(cam_size), int(cam_size)), interpolation=cv2.INTER_CUBIC)
    cam = np.maximum(cam, 0.0)
    peak = cam.max()
    return cam / peak if peak > 0 else cam


def cache_to_wsol_map(cam, width, height):
    """A cache map [S, S] → wsolevaluation map float64 [height, width] in [0, 1]: bicubic resize and
    min-max normalisation, both in float64 (the wsolevaluation protocol's own steps)."""
    resized = cv2.resize(np.asarray(cam, dtype=np.float64), (int(width), int(height)), interpolation=cv2.INTER_CUBIC)
    return normalize_minmax(resized, np.float64)


def _read_index(index_path):
    df = pd.read_parquet(index_path)
    missing = [c for c in ("image_id", "path", "label", "width", "height") if c not in df.columns]
    if missing:
        raise InputError(index_path, f"index lacks columns {missing}; rebuild it with `genpromp index`")
    return df.reset_index(drop=True)


def import_wsol_maps(map_root, index_path, out_dir, cam_size=None, shard_size=500):
    """Import a folder of wsolevaluation score maps as a ``gtk`` CAM cache in ``out_dir``.

    index_path: the test index (image ids, labels); every image in it needs a map (an error names the
    first missing ones), maps of images not in it are logged and left out. cam_size: the cache's S
    (None: the maps' own side, which must then be one square size for all). shard_size: images per
    CAM shard. Returns the number of imported maps.
    """
    map_root = Path(map_root)
    index = _read_index(index_path)
    found = {}
    for wsol_id in list_wsol_maps(map_root):
        iid = image_id_of(wsol_id)
        if iid in found:
            raise InputError(map_root, f"two score maps for image {iid!r}: {found[iid]}.npy and {wsol_id}.npy")
        found[iid] = wsol_id
    ids = index["image_id"].astype(str).tolist()
    if not ids:
        raise InputError(index_path, "the test index lists no images; nothing to import")
    missing = [i for i in ids if i not in found]
    if missing:
        raise InputError(map_root, f"no score map for {len(missing)} of {len(ids)} test images (first: "
                                   f"{missing[:3]}); expected <root>/<image path with extension>.npy, e.g. "
                                   f"{index['path'].iloc[ids.index(missing[0])]}.npy")
    extra = sorted(set(found) - set(ids))
    if extra:
        log.warning("%s: %d score maps are not test images of %s and are left out (e.g. %s)", map_root,
                    len(extra), index_path, ", ".join(map(repr, extra[:3])))
    if cam_size is None:
        h, w = read_wsol_map(wsol_map_path(map_root, found[ids[0]])).shape
        if h != w:
            raise InputError(wsol_map_path(map_root, found[ids[0]]),
                             f"map is {h} x {w}, not square; give the cache map size (cam_size / --cam-size)")
        cam_size = h
    cam_size, shard_size = int(cam_size), int(shard_size)
    if cam_size < 1 or shard_size < 1:
        raise GenprompError(f"cam_size ({cam_size}) and shard_size ({shard_size}) must be positive")
    roles = roles_for_mode("gtk")
    labels = index["label"].astype(np.int64).tolist()
    unnormalised = []
    with atomic_dir(out_dir) as tmp:
        shards = []
        for k, lo in enumerate(range(0, len(ids), shard_size)):
            part = range(lo, min(len(ids), lo + shard_size))
            cams = np.empty((len(part), 1, cam_size, cam_size), np.float64)
            for n, r in enumerate(part):
                score_map = read_wsol_map(wsol_map_path(map_root, found[ids[r]]))
                if score_map.any() and (score_map.min() != 0.0 or score_map.max() != 1.0):
                    unnormalised.append(found[ids[r]])
                cams[n, 0] = map_to_cache(score_map, cam_size)
            shards.append(write_cam_shard(Path(tmp) / shard_filename(k), [ids[r] for r in part],
                                          [[labels[r]] for r in part], cams))
        write_cam_index(shards, Path(tmp) / INDEX_NAME, roles)
    if unnormalised:
        log.warning("%s: %d score maps do not span [0, 1] exactly (e.g. %s.npy); the evaluation min-max normalises "
                    "every map, wsolevaluation's evaluator uses them as stored, so their scores can differ",
                    map_root, len(unnormalised), unnormalised[0])
    log.info("imported %d score maps from %s into %s (S = %d)", len(ids), map_root, out_dir, cam_size)
    return len(ids)


def export_wsol_maps(cache_dir, out_root, index_path=None, size=224, extension=None, role="gt"):
    """Write the ``role`` maps of a CAM cache as wsolevaluation score maps under ``out_root``.

    size: an int (maps of size × size; 224 = wsolevaluation's frame, what its box evaluator expects)
    or ``"original"`` (each image's width × height from the index). extension: appended to the image id
    to form the wsol id (default: the extension of the index's ``path`` when an index is given, else
    none). Returns {image id: written path}.
    """
    cache = CamCache(cache_dir)
    if role not in cache.roles:
        raise InputError(cache.index_path, f"the cache has no {role!r} maps (roles: {cache.roles})")
    index = _read_index(index_path).set_index("image_id", drop=False) if index_path is not None else None
    if size != "original":
        size = int(size)
        if size < 1:
            raise GenprompError(f"export size must be a positive integer or 'original', got {size}")
    elif index is None:
        raise GenprompError("size 'original' needs the test index (image widths and heights)")
    written = {}
    with atomic_dir(out_root) as tmp:
        for image_id in cache.image_ids:
            rec = None
            if index is not None:
                if image_id not in index.index:
                    raise InputError(cache.index_path, f"image {image_id!r} is not in the test index {index_path}")
                rec = index.loc[image_id]
            ext = extension if extension is not None else (Path(str(rec["path"])).suffix if rec is not None else "")
            _, cam = cache.get(image_id, role)
            w, h = (int(rec["width"]), int(rec["height"])) if size == "original" else (size, size)
            out = resolve_inside(tmp, f"{image_id}{ext}{MAP_SUFFIX}", cache.index_path)
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, cache_to_wsol_map(cam, w, h))
            written[image_id] = Path(out_root) / f"{image_id}{ext}{MAP_SUFFIX}"
    log.info("exported %d score maps from %s to %s", len(written), cache_dir, out_root)
    return written


def _import_cli(args):
    shard_size = args.shard_size
    if shard_size is None:
        from ..config import load_config

        shard_size = load_config(args.config)["test"]["shard_size"]
    import_wsol_maps(args.maps, args.index, args.out, cam_size=args.cam_size, shard_size=shard_size)


def _export_cli(args):
    size = args.size
    if size is None:
        from ..config import load_config

        size = load_config(args.config)["evaluation"]["wsol_frame"]
    export_wsol_maps(args.cams, args.out, index_path=args.index, size=size, extension=args.extension,
                     role=args.role)


def _size(text):
    if text == "original":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an integer nor 'original'") from None


def register_cli(sub):
    p = sub.add_parser(
        "import-wsol-maps", help="import wsolevaluation .npy score maps into a CAM cache",
        description="Read <maps>/<image path with extension>.npy score maps (wsolevaluation's layout, values "
                    "in [0, 1]) for every test image of the index and write a gtk CAM cache (docs/FORMATS.md), "
                    "which `genpromp evaluate` scores. Example: genpromp import-wsol-maps train_log/scoremaps "
                    "--index results/cub/index/test.parquet --out results/cub/other/cams/gtk_imported")
    p.add_argument("maps", help="score map root folder (scoremap_root)")
    p.add_argument("--index", required=True, help="test index parquet (results/<dataset>/index/test.parquet)")
    p.add_argument("--out", required=True, help="CAM cache folder to write (replaced as a whole)")
    p.add_argument("--cam-size", type=int, default=None,
                   help="cache map side S (default: the maps' own side when they are square)")
    p.add_argument("--shard-size", type=int, default=None, help="images per CAM shard (default: test.shard_size)")
    p.add_argument("--config", default="config/config.yaml", help="workflow config (for the defaults)")
    p.set_defaults(func=_import_cli)

    q = sub.add_parser(
        "export-wsol-maps", help="export a CAM cache as wsolevaluation .npy score maps",
        description="Write each test image's ground-truth-class map of a CAM cache as <out>/<image id><ext>.npy, "
                    "resized bicubically and min-max normalised in float64, which wsolevaluation's evaluation.py "
                    "reads. Example: genpromp export-wsol-maps results/cub/genpromp/cams/gtk_w0.60_t0-99 "
                    "--index results/cub/index/test.parquet --out scoremaps/")
    q.add_argument("cams", help="CAM cache folder")
    q.add_argument("--out", required=True, help="score map root folder to write (replaced as a whole)")
    q.add_argument("--index", default=None, help="test index parquet (image extensions; needed for --size original)")
    q.add_argument("--size", type=_size, default=None,
                   help="map side in pixels, or 'original' for each image's own size (default: "
                        "evaluation.wsol_frame, the size wsolevaluation's box evaluator expects)")
    q.add_argument("--extension", default=None,
                   help="extension appended to image ids (default: the index path's extension, or none)")
    q.add_argument("--role", default="gt", help="which map of each image to export (default: gt)")
    q.add_argument("--config", default="config/config.yaml", help="workflow config (for the defaults)")
    q.set_defaults(func=_export_cli)
