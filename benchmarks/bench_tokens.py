"""Stage-1 throughput: our shard trainer vs the reference's one-class-at-a-time loop, side by side.

Baseline (faithful to the reference): for every class, reload the models, create a fresh
Accelerator, optimizer and data loader (images decoded and resized every step), train that class.
Ours: load once, cache resized images, train ``--concurrent`` classes per batched forward.
Both produce the same tokens (tests/test_tokens.py); this prints wall time and the ratio.

    .venv/bin/python benchmarks/bench_tokens.py --classes 8            # tiny model, CPU
    .venv/bin/python benchmarks/bench_tokens.py --sd14 --classes 8     # SD-1.4 architecture, random weights, GPU
"""

from __future__ import annotations

import argparse
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
from genpromp.training.data import load_training_table  # noqa: E402


def build_model(out, sd14):
    tok = REPO / "resources" / "assets" / "clip_tokenizer"
    if sd14:
        return build_tiny_model(out, tok, resolution=512, block_out_channels=(320, 640, 1280, 1280),
                                 cross_attention_dim=768, text_hidden_size=768, text_layers=12, heads=8,
                                 vae_channels=(128, 256, 512, 512))
    return build_tiny_model(out, tok, resolution=64, block_out_channels=(16, 16, 32, 32), cross_attention_dim=32,
                            text_hidden_size=32, text_layers=1, heads=2, vae_channels=(8, 8, 16, 16))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=8, help="number of classes N")
    ap.add_argument("--images", type=int, default=4, help="training images per class")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--concurrent", type=int, default=8, help="classes per batched forward (ours)")
    ap.add_argument("--sd14", action="store_true", help="SD-1.4 architecture (random weights, 512 px); use a GPU")
    ap.add_argument("--skip-check", action="store_true", help="do not compare the tokens")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_model(tmp / "model", args.sd14)
        res = 512 if args.sd14 else 64
        train, classes, root = make_dataset(tmp / "data", args.classes, (args.images,))
        settings = token_stage.Stage1Settings(resolution=res, batch_size=args.batch_size, num_train_epochs=args.epochs,
                                         learning_rate=1e-3, scale_lr=False, seed=0,
                                         concurrent_classes=args.concurrent, checkpoint_every=10**9)
        table = load_training_table(train, classes, root)
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        t0 = time.perf_counter()
        base = {c.class_id: token_stage.train_class_plain(model, c, table.images[c.class_id], table.classes, settings)
                for c in table.classes}
        sync()
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = token_stage.train_token_shard(model, train, classes, root, tmp / "tok" / "shard-0.safetensors", 0, 1,
                                       settings, progress=False)
        sync()
        t_ours = time.perf_counter() - t0
        from genpromp.training.checkpoints import load_tokens
        ours = load_tokens(out)
        diff = max((ours[c.concept_token] - base[c.class_id]).abs().max().item() for c in table.classes)
        steps = sum(token_stage.class_schedule(settings, c.class_id, args.images).total_steps for c in table.classes)
        dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        print(f"device {dev}; {args.classes} classes x {args.images} images, batch {args.batch_size}, "
              f"{args.epochs} epochs = {steps} optimizer steps; resolution {res}")
        print(f"baseline (one class at a time, reload per class): {t_base:8.2f} s  {steps / t_base:7.2f} steps/s")
        print(f"ours (load once, {args.concurrent} classes per batch): {t_ours:8.2f} s  {steps / t_ours:7.2f} steps/s")
        print(f"speed-up ratio baseline/ours: {t_base / t_ours:.2f}x   max |token diff| {diff:.2e}")


if __name__ == "__main__":
    main()
