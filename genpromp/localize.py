"""Localize an object in your own images: GenPromp's CAM for one class, its boxes, an overlay.

:func:`localize` runs the workflow's CAM extraction (``genpromp.cams.extract.extract_cams``: the same
preprocessing, noise seeded by (seed, image id), cross-attention capture and group averaging) on any
images, for one class given as

- a class of a class table (``classes.parquet``) by its name (``Black_footed_Albatross``), its
  concept token (``<cub-3>``) or its id, with either a run's ``embeddings.safetensors`` (exactly what
  the workflow used) or a token table (``tokens.safetensors``; f_r and f_d are computed for that class
  with the loaded text encoder), or neither (the meta word alone: f_r = f_d);
- a concept token of a token table alone (its meta word comes from the table);
- a free word (``dog``; one CLIP token): f_r = f_d = the word's captions, so the ratio has no effect.

The map is stored as the CAM cache stores it (float16 [S, S], S = ``test.cam_size``), and the boxes
are computed from that float16 map by the evaluation code: the TS-CAM box at ``cam_thr`` in the
``evaluation.frame`` square, and the wsolevaluation boxes (largest contour and all contours) at each
τ in the ``evaluation.wsol_frame`` square. An image's id seeds its noise; with ``root`` it is the path
relative to ``root`` without extension, as the dataset index names it, so a dataset image localised
with its index id and the run's embeddings gets the map of the workflow's CAM cache.

Files per image (``<name>`` = image id with ``/`` replaced by ``__``; docs/FORMATS.md § Localize output):
``<name>.npy`` (float16 [S, S]), ``<name>.heatmap.png`` (the map resized bilinearly to the image size,
8-bit grey), ``<name>.json`` (target, settings, boxes in frame and image pixels) and
``<name>.overlay.png`` (heat map over the image with the TS-CAM box, in the TS-CAM frame).
CLI: ``genpromp localize`` (``--help`` has an example).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import layout
from .cams.overlay import draw_overlay, overlay_name
from .data.images import read_rgb
from .errors import GenprompError, InputError
from .io import atomic_path

__all__ = ["Target", "Localization", "resolve_target", "target_embeddings", "image_ids_for", "localize",
           "write_localization", "register_cli"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What to localize. kind: ``class`` | ``token`` | ``word``; concept_token None for a word (or a class
    localized with its meta word only); class_id None for a word."""

    kind: str
    name: str
    meta_token: str
    concept_token: str | None = None
    class_id: int | None = None


@dataclass
class Localization:
    """One image's result: cam float16 [S, S]; tscam_box [4] in the frame; wsol {τ: (largest [4], all [B, 4])}
    in the wsol frame (all boxes x1y1x2y2 inclusive)."""

    image: str
    image_id: str
    width: int
    height: int
    cam: np.ndarray
    tscam_box: list
    wsol: dict = field(default_factory=dict)


def _close(spec, candidates):
    near = difflib.get_close_matches(spec, [str(c) for c in candidates], n=3, cutoff=0.6)
    return f" (did you mean {', '.join(map(repr, near))}?)" if near else ""


def resolve_target(spec=None, word=None, classes=None, tokens=None):
    """A :class:`Target` from a class spec (name, concept token or id) or a free ``word``.

    classes: class table path (docs/FORMATS.md § Class table) or None; tokens: token table path or None.
    Unknown classes raise InputError naming the table and close matches.
    """
    if (spec is None) == (word is None):
        raise GenprompError("give exactly one of a class (name, concept token or id) and a free word")
    if word is not None:
        word = str(word).strip()
        if not word or " " in word:
            raise GenprompError(f"the free word must be one word, got {word!r}")
        return Target("word", word, word)
    spec = str(spec).strip()
    if classes is not None:
        from .cams.embeddings import read_classes

        df = read_classes(classes)
        hit = df.iloc[:0]
        for column in [c for c in ("name", "concept_token") if c in df.columns]:
            hit = df[df[column].astype(str) == spec]
            if len(hit) == 0 and column == "name":
                hit = df[df[column].astype(str).str.lower() == spec.lower()]
            if len(hit):
                break
        if len(hit) == 0 and spec.isdigit():
            hit = df[df["class_id"] == int(spec)]
        if len(hit) == 0:
            names = list(df["name"]) if "name" in df.columns else []
            raise InputError(classes, f"no class {spec!r}{_close(spec, names + list(df['concept_token']))}: give a "
                                      f"class name, concept token or class id of this table ({len(df)} classes, e.g. "
                                      f"{(names or list(df['concept_token']))[:3]}), or a free word with --word")
        row = hit.iloc[0]
        return Target("class", str(row["name"]) if "name" in df.columns else spec, str(row["meta_token"]),
                      str(row["concept_token"]), int(row["class_id"]))
    if tokens is not None:
        from .training.checkpoints import read_token_table

        table = read_token_table(tokens)
        if spec not in table.concept_tokens:
            raise InputError(tokens, f"no concept token {spec!r} in this token table (it has {len(table.concept_tokens)}, "
                                     f"e.g. {table.concept_tokens[:3]}){_close(spec, table.concept_tokens)}; give "
                                     "--classes to name classes")
        i = table.concept_tokens.index(spec)
        if not table.meta_tokens:
            raise InputError(tokens, "this token table records no meta words; give --classes (classes.parquet)")
        return Target("token", spec, str(table.meta_tokens[i]), spec, int(table.class_ids[i]))
    raise GenprompError(f"class {spec!r}: give the class table (--classes) or the token table (--tokens) it is "
                        "in, or use --word for a free word")


def _check_single_token(tokenizer, word, what):
    if len(tokenizer(word, add_special_tokens=False).input_ids) != 1:
        raise GenprompError(f"{what} {word!r} is not a single CLIP token, and the CAM reads one token position; "
                            "use a one-token synonym")


def target_embeddings(comps, target, embeddings=None, tokens=None):
    """A one-row :class:`~genpromp.cams.embeddings.ClassEmbeddings` for ``target`` (row id = its class id or 0).

    embeddings: a run's ``embeddings.safetensors`` (class targets; rows copied as the workflow uses them);
    tokens: a token table or original ``tokens/`` folder (concept-token targets: computed here). The
    tokenizer and text encoder of ``comps`` get the concept token installed when it is computed.
    """
    import torch

    from .cams.embeddings import ClassEmbeddings, encode_captions, load_token_vectors, read_embeddings
    from .prompts import add_concept_tokens

    cid = target.class_id if target.class_id is not None else 0
    ids = torch.tensor([cid], dtype=torch.int64)
    if embeddings is not None and target.class_id is not None:
        emb = read_embeddings(embeddings)
        row = emb.rows([cid], embeddings)
        return ClassEmbeddings(emb.f_r[row].clone(), emb.f_d[row].clone(), ids)
    if embeddings is not None:
        raise GenprompError(f"run embeddings hold classes only; {target.name!r} is a free word (drop --embeddings)")
    _check_single_token(comps.tokenizer, target.meta_token, "meta word" if target.kind != "word" else "word")
    f_d = encode_captions(comps.tokenizer, comps.text_encoder, [target.meta_token])
    if target.concept_token is None or tokens is None:
        if target.kind != "word":
            log.info("%s: no token table or run embeddings given; using its meta word %r only (f_r = f_d)",
                     target.name, target.meta_token)
        return ClassEmbeddings(f_d, f_d.clone(), ids)
    vectors = load_token_vectors(tokens)
    if target.concept_token not in vectors:
        raise InputError(tokens, f"no learned vector for {target.concept_token}")
    vec = vectors[target.concept_token]
    weight = comps.text_encoder.get_input_embeddings().weight
    if vec.numel() != weight.shape[1]:
        raise InputError(tokens, f"{target.concept_token}: vector of size {vec.numel()}, this model's text encoder "
                                 f"needs {weight.shape[1]}; the tokens belong to another model")
    if target.concept_token not in comps.tokenizer.get_vocab():
        (tok_id,) = add_concept_tokens(comps.tokenizer, comps.text_encoder, [target.concept_token],
                                       [target.meta_token])
        with torch.no_grad():
            comps.text_encoder.get_input_embeddings().weight[tok_id] = vec.to(weight.dtype)
    f_r = encode_captions(comps.tokenizer, comps.text_encoder, [target.concept_token])
    return ClassEmbeddings(f_r, f_d, ids)


def image_ids_for(images, root=None):
    """Image ids: the path relative to ``root`` without extension (as the dataset index names them),
    else the file name without extension; duplicates are an error (an id names the output files)."""
    ids = []
    for p in map(Path, images):
        if root is not None:
            try:
                rel = p.resolve().relative_to(Path(root).resolve())
            except ValueError:
                raise InputError(p, f"image is not inside --root {root}") from None
            ids.append(rel.with_suffix("").as_posix())
        else:
            ids.append(p.stem)
    seen = {}
    for p, i in zip(images, ids):
        if i in seen:
            raise InputError(p, f"image id {i!r} is also the id of {seen[i]}; give --root so that ids are paths, "
                                "or rename one")
        seen[i] = p
    return ids


def _load_config(config):
    from .config import load_config

    if isinstance(config, dict):
        return config
    path = Path(config)
    if not path.is_file():
        raise GenprompError(f"config file {path} not found; pass --config (the workflow's config/config.yaml)")
    return load_config(path)


def _default_cam_thr(config, dataset):
    datasets = config["datasets"]
    if dataset is not None:
        if dataset not in datasets:
            raise GenprompError(f"dataset {dataset!r} is not in the config (datasets: {', '.join(datasets)})")
        return float(datasets[dataset]["cam_thr"])
    name = next(iter(datasets))
    log.info("TS-CAM threshold: cam_thr %s of dataset %s (give --threshold or --dataset to choose)",
             datasets[name]["cam_thr"], name)
    return float(datasets[name]["cam_thr"])


def _image_sizes(images):
    """(width, height) of every image; decoding them all first makes a bad file fail before the model loads."""
    sizes = []
    for p in images:
        h, w = read_rgb(p).shape[:2]
        sizes.append((w, h))
    return sizes


def _cam_options(config, ratio, timesteps, cam_thr, taus, dataset):
    """Ratio, timesteps, TS-CAM threshold and τ list, defaulted from ``config`` and checked."""
    test = config["test"]
    ratio = float(test["combine_ratio"] if ratio is None else ratio)
    timesteps = tuple(int(t) for t in (test["timesteps"] if timesteps is None else timesteps))
    cam_thr = _default_cam_thr(config, dataset) if cam_thr is None else float(cam_thr)
    taus = [cam_thr] if taus is None else [float(t) for t in taus]
    for name, values in (("ratio", [ratio]), ("threshold", [cam_thr]), ("tau", taus)):
        if any(not 0.0 <= v <= 1.0 for v in values):
            raise GenprompError(f"{name} must lie in [0, 1], got {values}")
    if not timesteps or any(not 0 <= t < 1000 for t in timesteps):
        raise GenprompError(f"timesteps must be integers in [0, 1000), got {list(timesteps)}")
    return ratio, timesteps, cam_thr, taus


def _device_and_dtype(precision, device):
    from .cams.extract import choose_device, resolve_precision

    if device is None:
        return choose_device(precision)
    import torch

    device = torch.device(device)
    return device, resolve_precision(precision, device)


def _localizations(records, sizes, cams, cam_thr, taus, frame, wsol_frame):
    """One :class:`Localization` per image from its float32 map ``cams[i]``: boxes from the float16 map."""
    from .evaluation.metrics import tscam_box, wsol_boxes
    from .evaluation.tscam import prepare_tscam_cam
    from .evaluation.wsol import prepare_wsol_cam

    results = []
    for rec, (w, h), cam in zip(records, sizes, cams):
        cam16 = cam.astype(np.float16)       # as the CAM cache stores it
        cam32 = cam16.astype(np.float32)     # as the evaluation reads it
        res = Localization(rec.path, rec.image_id, w, h, cam16,
                           [int(v) for v in tscam_box(prepare_tscam_cam(cam32, frame), cam_thr)])
        u8w = prepare_wsol_cam(cam32, wsol_frame)
        for tau in taus:
            res.wsol[tau] = (wsol_boxes(u8w, tau, False)[0].tolist(), wsol_boxes(u8w, tau, True).tolist())
        results.append(res)
    return results


def localize(images, target, *, config="config/config.yaml", model=None, unet=None, embeddings=None, tokens=None,
             ratio=None, timesteps=None, cam_thr=None, taus=None, dataset=None, root=None, image_ids=None,
             device=None, out_dir=None):
    """Localize ``target`` (a :class:`Target`, see :func:`resolve_target`) in ``images`` (paths).

    config: validated config dict or YAML path (test.* and evaluation.* settings, ``pretrained``, seed);
    model: SD-1.x diffusers folder (default ``pretrained``); unet: replacement UNet folder (e.g. a run's
    stage-2 UNet); ratio / timesteps: default ``test.combine_ratio`` / ``test.timesteps``; cam_thr: TS-CAM
    threshold (default: the ``cam_thr`` of ``dataset``, else of the config's first dataset); taus:
    wsolevaluation thresholds (default [cam_thr]); image_ids: ids (default :func:`image_ids_for`);
    device: e.g. ``"cpu"`` (default: the accelerator when there is one). Writes the files into
    ``out_dir`` when given. Returns a list of :class:`Localization`.
    """
    from .cams.extract import ImageRecord, extract_cams, settings_from_config
    from .models.loading import load_components
    from .prompts import token_index

    images = [str(p) for p in images]
    if not images:
        raise GenprompError("no images given")
    config = _load_config(config)
    ids = list(image_ids) if image_ids is not None else image_ids_for(images, root)
    if len(ids) != len(images):
        raise GenprompError(f"{len(ids)} image ids for {len(images)} images")
    sizes = _image_sizes(images)
    ratio, timesteps, cam_thr, taus = _cam_options(config, ratio, timesteps, cam_thr, taus, dataset)
    device, dtype = _device_and_dtype(config["test"]["inference_precision"], device)
    comps = load_components(model or config["pretrained"], unet_path=unet)
    emb = target_embeddings(comps, target, embeddings=embeddings, tokens=tokens)
    settings = settings_from_config(config, "gtk", ratio, timesteps, token_index(comps.tokenizer))
    label = int(emb.class_ids[0])
    records = [ImageRecord(i, p, label) for i, p in zip(ids, images)]
    _, _, cams = extract_cams(comps, emb, records, settings, device, dtype)
    frame, wsol_frame = int(config["evaluation"]["frame"]), int(config["evaluation"]["wsol_frame"])
    results = _localizations(records, sizes, cams[:, 0], cam_thr, taus, frame, wsol_frame)
    if out_dir is not None:
        meta = {"target": dataclasses.asdict(target), "model": str(model or config["pretrained"]),
                "unet": None if unet is None else str(unet), "embeddings": None if embeddings is None else str(embeddings),
                "tokens": None if tokens is None else str(tokens), "ratio": ratio, "timesteps": list(timesteps),
                "cam_size": settings.cam_size, "resolution": settings.resolution, "seed": settings.seed,
                "precision": str(dtype).removeprefix("torch."), "device": str(device)}
        for res in results:
            write_localization(res, out_dir, meta, cam_thr, frame, wsol_frame)
        log.info("%d localizations of %s -> %s", len(results), target.name, out_dir)
    return results


def _to_image(box, width, height, frame_w, frame_h=None):
    """Frame-pixel box → image pixels (each coordinate scaled by image size / frame size, 2 decimals)."""
    frame_h = frame_w if frame_h is None else frame_h
    sx, sy = width / frame_w, height / frame_h
    return [round(box[0] * sx, 2), round(box[1] * sy, 2), round(box[2] * sx, 2), round(box[3] * sy, 2)]


def _write_png(path, image):
    with atomic_path(path) as tmp:
        ok, data = cv2.imencode(".png", image)
        if not ok:
            raise GenprompError(f"could not encode {path}")
        Path(tmp).write_bytes(data.tobytes())


def write_localization(res, out_dir, meta, cam_thr, frame, wsol_frame):
    """Write one image's four files (see the module docstring) atomically; return their paths."""
    out_dir = Path(out_dir)
    stem = overlay_name(res.image_id)[:-len(".png")]
    paths = {k: out_dir / f"{stem}{suffix}" for k, suffix in
             (("npy", ".npy"), ("heatmap", ".heatmap.png"), ("json", ".json"), ("overlay", ".overlay.png"))}
    with atomic_path(paths["npy"]) as tmp:
        np.save(tmp, res.cam)
    heat = cv2.resize(res.cam.astype(np.float32), (res.width, res.height), interpolation=cv2.INTER_LINEAR)
    _write_png(paths["heatmap"], np.clip(np.rint(heat * 255.0), 0, 255).astype(np.uint8))
    rgb = read_rgb(res.image)
    overlay, _ = draw_overlay(rgb, res.cam.astype(np.float32), np.zeros((0, 4)), cam_thr, frame)
    _write_png(paths["overlay"], cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    doc = {
        "image": res.image, "image_id": res.image_id, "width": res.width, "height": res.height, **meta,
        "tscam": {"cam_thr": cam_thr, "frame": frame, "box_frame": res.tscam_box,
                  "box_image": _to_image(res.tscam_box, res.width, res.height, frame)},
        "wsol": {"frame": wsol_frame, "boxes": [
            {"tau": tau, "largest_frame": largest, "largest_image": _to_image(largest, res.width, res.height, wsol_frame),
             "all_frame": every, "all_image": [_to_image(b, res.width, res.height, wsol_frame) for b in every]}
            for tau, (largest, every) in res.wsol.items()]},
        "files": {k: p.name for k, p in paths.items()},
    }
    with atomic_path(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")
    return paths


def _cli(args):
    target = resolve_target(args.cls, args.word, args.classes, args.tokens)
    localize(args.images, target, config=args.config, model=args.model, unet=args.unet, embeddings=args.embeddings,
             tokens=args.tokens, ratio=args.ratio, timesteps=args.timesteps, cam_thr=args.threshold, taus=args.tau,
             dataset=args.dataset, root=args.root, device=args.device, out_dir=args.out)


def register_cli(sub):
    import argparse

    p = sub.add_parser(
        "localize", help="localize a class in your own images (heat map, boxes, overlay)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compute GenPromp's cross-attention map of one class in each image (the workflow's CAM "
                    "extraction), and write per image <name>.npy (float16 map), <name>.heatmap.png, <name>.json "
                    "(TS-CAM box at the threshold, wsolevaluation boxes at each --tau, in frame and image pixels) "
                    "and <name>.overlay.png.",
        epilog="examples:\n"
               "  genpromp localize photos/*.jpg --class Black_footed_Albatross \\\n"
               f"      --classes {layout.index_table('cub', 'classes')} --embeddings {layout.embeddings('cub', 'trained')} "
               f"\\\n      --unet {layout.unet_dir('cub')} --out localized/\n"
               "  genpromp localize dog.jpg --word dog --model /models/stable-diffusion-v1-4 --out localized/\n"
               f"  genpromp localize bird.jpg --class '<cub-3>' --tokens {layout.tokens('cub')} "
               "--ratio 0.6 --timesteps 0 99 --threshold 0.23 --tau 0.2 0.4 --out localized/")
    p.add_argument("images", nargs="+", help="image files (any format Pillow decodes)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--class", dest="cls", help="class name, concept token (<cub-3>) or class id, looked up in "
                                                  "--classes (or a concept token of --tokens)")
    what.add_argument("--word", help="a free word (one CLIP token), e.g. dog")
    p.add_argument("--classes", help=f"class table ({layout.index_table('<dataset>', 'classes')})")
    p.add_argument("--tokens", help=f"token table ({layout.tokens('<dataset>')}) or original tokens/ folder")
    p.add_argument("--embeddings", help="a run's embeddings.safetensors (the workflow's class embeddings; "
                                        "takes precedence over --tokens)")
    p.add_argument("--model", help="SD-1.x diffusers folder (default: `pretrained` of the config)")
    p.add_argument("--unet", help=f"UNet folder replacing the model's (e.g. {layout.unet_dir('<dataset>')})")
    p.add_argument("--ratio", type=float, help="combine ratio w in f_c = w f_r + (1-w) f_d (default test.combine_ratio)")
    p.add_argument("--timesteps", type=int, nargs="+", help="diffusion timesteps to average (default test.timesteps)")
    p.add_argument("--threshold", type=float, help="TS-CAM box threshold (default: cam_thr of --dataset, else of "
                                                   "the config's first dataset)")
    p.add_argument("--tau", type=float, nargs="+", help="wsolevaluation box thresholds (default: the TS-CAM threshold)")
    p.add_argument("--dataset", help="config dataset whose cam_thr is the default threshold")
    p.add_argument("--root", help="image ids are paths relative to this folder without extension (as the dataset "
                                  "index names them; an id seeds the image's noise); default: the file name")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:1 (default: the accelerator when there is one)")
    p.add_argument("--config", default="config/config.yaml", help="workflow config (test.* and evaluation.* settings)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cli)
