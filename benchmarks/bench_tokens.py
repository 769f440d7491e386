"""Stage-1 throughput: our shard trainer vs the original's one-class-at-a-time loop, side by side.

Baseline (the original's stage 1): the tokenizer, text encoder, VAE and UNet are loaded once and all
concept tokens registered; then the classes are trained one after another on those same models, each
with a fresh Accelerator, AdamW and data loader (images decoded and resized at every step). As in the
original, AdamW is given the whole token-embedding matrix: every step builds the dense gradient of
the matrix, zeroes all rows but the class's own, and updates moments and decoupled weight decay over
every row, so each class starts from the matrix the earlier classes left behind
(``reproduce_weight_decay_defect=True``).
Ours (default settings): load once, cache resized images, train ``--concurrent`` classes per batched
forward, each concept row its own parameter, so weight decay touches the concept rows only.

The timed sides therefore differ in one respect besides scheduling: the weight-decay update (every
row in the baseline, concept rows only in ours); the printed "timed sides differ by" is its effect.
Both sides run ``--repeat`` times, alternating; the figures are each side's fastest wall time (the one
least disturbed by other jobs sharing the CPU), and every time is printed.
The equivalence check (untimed, after the timing) compares like with like, within ``TOLERANCE``:
  1. ours (the timed tokens) vs the same one-class-at-a-time loop with our concept-row update;
  2. our defect-reproducing mode (``reproduce_weight_decay_defect=True``) vs the baseline's tokens.
A failed check ends the run with an error.

    .venv/bin/python benchmarks/bench_tokens.py --classes 8            # tiny model, CPU
    .venv/bin/python benchmarks/bench_tokens.py --sd14 --classes 8     # SD-1.4 architecture, random weights, GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from train_fixtures import make_dataset  # noqa: E402

from genpromp.demo.tiny import build_tiny_model  # noqa: E402
from genpromp.training import tokens as token_stage  # noqa: E402
from genpromp.training.checkpoints import load_tokens  # noqa: E402
from genpromp.training.data import load_training_table  # noqa: E402

TOLERANCE = 1e-5  # max |token difference| between runs of the same update (tests/test_tokens.py's bound)


def build_model(out, sd14):
    tok = REPO / "resources" / "assets" / "clip_tokenizer"
    if sd14:
        return build_tiny_model(out, tok, resolution=512, block_out_channels=(320, 640, 1280, 1280),
                                 cross_attention_dim=768, text_hidden_size=768, text_layers=12, heads=8,
                                 vae_channels=(128, 256, 512, 512))
    return build_tiny_model(out, tok, resolution=64, block_out_channels=(16, 16, 32, 32), cross_attention_dim=32,
                            text_hidden_size=32, text_layers=1, heads=2, vae_channels=(8, 8, 16, 16))


def sequential_loop(model, table, settings):
    """The original's loop: models loaded once, then one class after another on the same models, each
    with a fresh Accelerator, optimizer and loader. {class_id: float32 [D]}."""
    from accelerate import PartialState

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(settings.mixed_precision, torch.float32)
    components = token_stage.load_stage1_models(model, table.all_classes, PartialState().device, weight_dtype)
    return {c.class_id: token_stage.train_class_plain(model, c, table.images[c.class_id], table.all_classes,
                                                      settings, components=components)
            for c in table.classes}


def shard_tokens(model, dataset, out, settings):
    """Our shard trainer on every class (one shard). {class_id: float32 [D]}."""
    train, classes, root = dataset
    path = token_stage.train_token_shard(model, train, classes, root, out, 0, 1, settings, progress=False)
    table, tokens = load_training_table(train, classes, root), load_tokens(path)
    return {c.class_id: tokens[c.concept_token] for c in table.classes}


def max_diff(a, b):
    return max((a[c] - b[c]).abs().max().item() for c in a)


def timed(fn, *args):
    """``fn(*args)`` and its wall time in seconds."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    result = fn(*args)
    sync()
    return result, time.perf_counter() - t0


def best_of(repeat, model, dataset, table, base_settings, ours_settings, tmp):
    """Both sides ``repeat`` times, alternating. Returns the last round's tokens of each side and each
    side's wall times (seconds, in run order)."""
    t_base, t_ours = [], []
    for k in range(repeat):
        base, t = timed(sequential_loop, model, table, base_settings)
        t_base.append(t)
        ours, t = timed(shard_tokens, model, dataset, tmp / f"tok-{k}" / "shard-0.safetensors", ours_settings)
        t_ours.append(t)
    return base, ours, t_base, t_ours


def check_equivalence(model, dataset, table, settings, base, ours, tmp):
    """Compare like with like (see the module docstring); raises SystemExit when a pair differs."""
    plain = sequential_loop(model, table, settings)
    defect = shard_tokens(model, dataset, tmp / "defect" / "shard-0.safetensors",
                          dataclasses.replace(settings, reproduce_weight_decay_defect=True))
    pairs = {"ours vs one-class-at-a-time loop, concept-row update on both": max_diff(ours, plain),
             "our defect-reproducing mode vs baseline, whole-matrix update on both": max_diff(defect, base)}
    for name, diff in pairs.items():
        print(f"check {name}: max |token diff| {diff:.2e} ({'ok' if diff <= TOLERANCE else 'FAILED'}, "
              f"tolerance {TOLERANCE:.0e})")
    failed = [name for name, diff in pairs.items() if diff > TOLERANCE]
    if failed:
        raise SystemExit(f"equivalence check failed: {'; '.join(failed)}")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=8, help="number of classes N")
    ap.add_argument("--images", type=int, default=4, help="training images per class")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--concurrent", type=int, default=8, help="classes per batched forward (ours)")
    ap.add_argument("--sd14", action="store_true", help="SD-1.4 architecture (random weights, 512 px); use a GPU")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side, alternating; the fastest counts")
    ap.add_argument("--skip-check", action="store_true", help="do not compare the tokens")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_model(tmp / "model", args.sd14)
        res = 512 if args.sd14 else 64
        dataset = make_dataset(tmp / "data", args.classes, (args.images,))
        ours_settings = token_stage.Stage1Settings(resolution=res, batch_size=args.batch_size,
                                                   num_train_epochs=args.epochs, learning_rate=1e-3, scale_lr=False,
                                                   seed=0, concurrent_classes=args.concurrent,
                                                   checkpoint_every=10**9)
        base_settings = dataclasses.replace(ours_settings, reproduce_weight_decay_defect=True)
        table = load_training_table(*dataset)
        base, ours, all_base, all_ours = best_of(args.repeat, model, dataset, table, base_settings, ours_settings,
                                                 tmp)
        t_base, t_ours = min(all_base), min(all_ours)
        steps = sum(token_stage.class_schedule(ours_settings, c.class_id, args.images).total_steps
                    for c in table.classes)
        dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        print(f"device {dev}; {args.classes} classes x {args.images} images, batch {args.batch_size}, "
              f"{args.epochs} epochs = {steps} optimizer steps; resolution {res}; fastest of {args.repeat}")
        print(f"baseline (the original: load once, one class at a time, AdamW over the whole embedding matrix): "
              f"{t_base:8.2f} s  {steps / t_base:7.2f} steps/s  (all: {', '.join(f'{t:.1f}' for t in all_base)})")
        print(f"ours (load once, {args.concurrent} classes per batch, AdamW over the concept rows): "
              f"{t_ours:8.2f} s  {steps / t_ours:7.2f} steps/s  (all: {', '.join(f'{t:.1f}' for t in all_ours)})")
        print(f"speed-up ratio baseline/ours: {t_base / t_ours:.2f}x")
        print(f"timed sides differ by max |token diff| {max_diff(ours, base):.2e} "
              f"(weight decay on every embedding row vs on the concept rows only)")
        if not args.skip_check:
            check_equivalence(model, dataset, table, ours_settings, base, ours, tmp)


if __name__ == "__main__":
    main()
