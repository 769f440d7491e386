"""Model folders as complete diffusers pipeline folders.

A Stable Diffusion folder that ``StableDiffusionPipeline.from_pretrained`` accepts holds the five
component folders (``tokenizer/``, ``text_encoder/``, ``vae/``, ``unet/``, ``scheduler/``) and a
``model_index.json`` naming each component's library and class. genpromp writes that file into every
model folder it builds (the tiny demo model) and assembles pipeline folders from a pretrained folder and
a finetuned ``unet/`` (``genpromp export-pipeline``), so the result of stage 2 can be used by any
diffusers code. No safety checker or feature extractor is listed (``requires_safety_checker: false``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path

from ..errors import GenprompError
from ..io import atomic_dir, current_umask

__all__ = ["MODEL_INDEX_NAME", "COMPONENTS", "model_index", "export_pipeline", "register_cli"]

log = logging.getLogger(__name__)

MODEL_INDEX_NAME = "model_index.json"
# Component folder -> (library, class) as diffusers' model_index.json lists them.
COMPONENTS = {
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "unet": ("diffusers", "UNet2DConditionModel"),
}


def model_index(scheduler_class):
    """The ``model_index.json`` dict of a StableDiffusionPipeline folder without safety checker."""
    import diffusers

    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
             "safety_checker": [None, None], "scheduler": ["diffusers", str(scheduler_class)]}
    index.update({name: list(lib_cls) for name, lib_cls in COMPONENTS.items()})
    return dict(sorted(index.items()))


def _scheduler_class(folder):
    path = Path(folder) / "scheduler" / "scheduler_config.json"
    try:
        return json.loads(path.read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as exc:
        raise GenprompError(f"{path}: cannot read the scheduler class ({exc}); expected a diffusers "
                            "scheduler/ folder") from None


def _link_or_copy(src, dst):
    """Hard-link ``src`` to ``dst`` (no extra disk for multi-GB weights) when its mode is already the one
    the finished folder gets (atomic_dir applies the umask to the tree, and a chmod through a hard link
    would change the source file); copy otherwise, or across filesystems."""
    mode = os.stat(src).st_mode & 0o777
    wanted = (0o777 if mode & stat.S_IXUSR else 0o666) & ~current_umask()
    if mode == wanted:
        with contextlib.suppress(OSError):
            os.link(src, dst)
            return dst
    shutil.copy2(src, dst)
    return dst


def export_pipeline(pretrained, out_dir, unet=None):
    """A complete pipeline folder at ``out_dir``: the pretrained folder's components, with ``unet/`` taken
    from ``unet`` when given (e.g. ``results/<dataset>/unet``, stage 2's output), and a model_index.json.
    Files are hard-linked where the filesystem allows. Returns ``out_dir``."""
    pretrained = Path(pretrained)
    sources = {name: pretrained / name for name in (*COMPONENTS, "scheduler")}
    if unet is not None:
        sources["unet"] = Path(unet)
    missing = [f"{name}/ ({src})" for name, src in sources.items() if not src.is_dir()]
    if missing:
        raise GenprompError(f"cannot assemble a pipeline: missing {', '.join(missing)}; point --pretrained at a "
                            "Stable Diffusion folder and --unet at a diffusers unet/ folder")
    if not (sources["unet"] / "config.json").is_file():
        raise GenprompError(f"{sources['unet']}: no config.json; expected a diffusers unet/ folder")
    with atomic_dir(out_dir) as tmp:
        for name, src in sources.items():
            shutil.copytree(src, tmp / name, copy_function=_link_or_copy)
        (tmp / MODEL_INDEX_NAME).write_text(json.dumps(model_index(_scheduler_class(tmp)), indent=2) + "\n")
    log.info("pipeline folder %s (unet from %s)", out_dir, sources["unet"])
    return Path(out_dir)


def _cli(args):
    export_pipeline(args.pretrained, args.out, args.unet)


def register_cli(sub):
    p = sub.add_parser("export-pipeline", help="assemble a diffusers pipeline folder (pretrained + finetuned UNet)",
                       description="Write a folder that diffusers' StableDiffusionPipeline.from_pretrained loads: "
                                   "the pretrained folder's tokenizer, text encoder, VAE and scheduler, the UNet "
                                   "from --unet (default: the pretrained one) and a model_index.json. Files are "
                                   "hard-linked when possible. Example: genpromp export-pipeline --pretrained "
                                   "ckpts/pretrains/stable-diffusion-v1-4 --unet results/cub/unet "
                                   "--out results/cub/pipeline")
    p.add_argument("--pretrained", required=True, help="Stable Diffusion folder (diffusers layout)")
    p.add_argument("--unet", default=None, help="finetuned unet/ folder (default: the pretrained folder's)")
    p.add_argument("--out", required=True, help="pipeline folder to write (replaced as a whole)")
    p.set_defaults(func=_cli)
