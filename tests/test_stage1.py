"""Stage 1: batched multi-class training == plain per-class loop, weight-decay fix/defect, loss, resume."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from train_fixtures import REPO, TINY_RES, stage1_settings, tiny_dataset, tiny_model  # noqa: F401
from genpromp.training import stage1
from genpromp.training.checkpoints import read_token_table
from genpromp.training.data import StepSchedule, load_training_table, read_image, resize_image


def _images(table, settings):
    return {c: [resize_image(read_image(p), settings.resolution) for p in paths] for c, paths in table.images.items()}


def test_schedule_matches_reference_loop():
    # 5 images, batch 2 -> 3 batches/epoch; accum 2 -> sync after batch 1 and after the last (end of loader).
    s = StepSchedule(5, 2, 2, epochs=2, max_steps=None, seed=0, keys=(0,))
    steps = list(s.micro_steps())
    assert s.total_steps == 4
    assert [(m.epoch, m.batch, m.sync) for m in steps] == [(0, 0, False), (0, 1, True), (0, 2, True),
                                                            (1, 0, False), (1, 1, True), (1, 2, True)]
    assert [len(m.items) for m in steps] == [2, 2, 1, 2, 2, 1]
    assert sorted(i for m in steps[:3] for i in m.items) == [0, 1, 2, 3, 4]
    assert [m.index for m in s.micro_steps(start=4)] == [4, 5]
    assert StepSchedule(5, 2, 2, epochs=2, max_steps=3, seed=0, keys=(0,)).total_steps == 3


def test_shard_classes_contiguous():
    assert [stage1.shard_classes(range(7), 3, k) for k in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]


def test_concurrent_equals_plain_per_class_loop(tiny_model, tiny_dataset):
    """Batched (2 classes per forward, refilled as classes finish) == fresh loop per class."""
    settings = stage1_settings(gradient_accumulation_steps=2, concurrent_classes=2, num_train_epochs=1)
    table = load_training_table(*tiny_dataset)
    acc = Accelerator()
    models = stage1.load_stage1_models(tiny_model, table.classes, acc.device)
    plain_models = stage1.load_stage1_models(tiny_model, table.classes, acc.device)  # frozen: shareable
    ids = [c.class_id for c in table.classes]
    rows = stage1.train_classes_concurrent(models, ids, _images(table, settings), settings, acc, progress=False)
    for info in table.classes:
        plain = stage1.train_class_plain(tiny_model, info, table.images[info.class_id], table.classes, settings,
                                         components=plain_models)
        moved = (plain - models.initial_rows[info.class_id]).abs().max().item()
        diff = (plain - rows[info.class_id]).abs().max().item()
        assert moved > 1e-4, "token did not train"
        assert diff <= 1e-5 and diff < moved / 100, (info.class_id, diff, moved)


def test_fix_freezes_other_rows_defect_shrinks_them(tiny_model, tiny_dataset):
    table = load_training_table(*tiny_dataset)
    info = table.classes[0]
    for defect in (False, True):
        settings = stage1_settings(reproduce_weight_decay_defect=defect, adam_weight_decay=0.5, learning_rate=1e-2,
                                   num_train_epochs=1)
        models = stage1.load_stage1_models(tiny_model, table.classes)
        before = models.text_encoder.get_input_embeddings().weight.detach().clone()
        row = stage1.train_class_plain(tiny_model, info, table.images[0], table.classes, settings, components=models)
        after = models.text_encoder.get_input_embeddings().weight.detach()
        tok = models.token_ids[0]
        others = torch.ones(len(before), dtype=torch.bool)
        others[tok] = False
        assert not torch.allclose(row, models.initial_rows[0]), "concept row must change"
        if not defect:
            assert torch.equal(after, before), "with the fix no row of the embedding matrix changes"
        else:
            n = stage1.class_schedule(settings, 0, len(table.images[0])).total_steps
            factor = (1 - 1e-2 * 0.5) ** n
            torch.testing.assert_close(after[others], before[others] * factor, rtol=1e-5, atol=1e-7)
            assert torch.equal(after[tok], row)


def test_defect_mode_shard_matches_sequential_reference(tiny_model, tiny_dataset, tmp_path):
    """Defect mode in shard 1 (class 2 alone) == the reference's sequential loop over classes 0, 1, 2."""
    settings = stage1_settings(reproduce_weight_decay_defect=True, adam_weight_decay=0.5, learning_rate=1e-2,
                               num_train_epochs=1, max_train_steps=2)
    table = load_training_table(*tiny_dataset)
    models = stage1.load_stage1_models(tiny_model, table.classes)
    ref = {}
    for info in table.classes:  # the reference: one matrix shared by the sequential per-class loops
        ref[info.class_id] = stage1.train_class_plain(tiny_model, info, table.images[info.class_id], table.classes,
                                                      settings, components=models)
    out = stage1.train_token_shard(tiny_model, *tiny_dataset, tmp_path / "shard-1.safetensors", shard=1, n_shards=2,
                                   settings=settings, progress=False)
    got = read_token_table(out)
    assert got.class_ids.tolist() == [2]
    torch.testing.assert_close(got.embeddings[0], ref[2], rtol=1e-5, atol=1e-6)


def test_loss_decreases_on_tiny_example(tiny_model, tiny_dataset, capsys, tmp_path):
    """Fixed evaluation batch: MSE before vs after 40 steps of token training (curve printed)."""
    settings = stage1_settings(max_train_steps=16, num_train_epochs=16, learning_rate=1e-1, batch_size=2)
    table = load_training_table(*tiny_dataset)
    acc = Accelerator()
    models = stage1.load_stage1_models(tiny_model, table.classes, acc.device)
    images = _images(table, settings)
    from genpromp.training.data import MicroStep
    eval_steps = [MicroStep(0, 0, 10_000 + k, (0, 1, 2), False) for k in range(4)]

    def eval_loss(row):
        embed = models.text_encoder.get_input_embeddings()
        embed.set_rows({models.token_ids[1]: torch.nn.Parameter(row)})
        with torch.no_grad():
            return sum(stage1._forward_loss(models, *stage1._step_inputs(models, settings, 1, images[1], st),
                                            accelerator=acc).mean().item() for st in eval_steps) / len(eval_steps)

    log = tmp_path / "log.csv"
    rows = stage1.train_classes_concurrent(models, [1], images, settings, acc, progress=False, log_path=log)
    curve = [float(r.split(",")[5]) for r in log.read_text().splitlines()[1:]]
    before, after = eval_loss(models.initial_rows[1].clone()), eval_loss(rows[1])
    with capsys.disabled():
        print(f"\nstage-1 eval loss before {before:.4f} after {after:.4f}; training curve (means of 4): "
              + " ".join(f"{sum(curve[i:i + 4]) / 4:.4f}" for i in range(0, len(curve), 4)))
    assert after < before


def _run_shard_script(model, data, out, settings, pause_after_first_checkpoint):
    code = f"""
import sys, time
sys.path.insert(0, {str(REPO / 'tests')!r})
from genpromp.training import stage1, resume
from train_fixtures import stage1_settings
if {pause_after_first_checkpoint!r}:
    real = stage1.write_checkpoint
    def slow(*a, **k):
        real(*a, **k)
        print("CHECKPOINT", flush=True)
        time.sleep(60)
    stage1.write_checkpoint = slow
stage1.train_token_shard({str(model)!r}, *{tuple(map(str, data))!r}, {str(out)!r}, 0, 1,
                         stage1_settings(**{settings!r}), {str(out) + '.log.csv'!r}, progress=False)
print("DONE", flush=True)
"""
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=REPO)


def test_resume_after_sigkill_matches_uninterrupted(tiny_model, tiny_dataset, tmp_path):
    kw = dict(gradient_accumulation_steps=2, checkpoint_every=1, concurrent_classes=2)
    killed_out = tmp_path / "killed" / "shard-0.safetensors"
    proc = _run_shard_script(tiny_model, tiny_dataset, killed_out, kw, True)
    deadline = time.time() + 120
    line = ""
    while time.time() < deadline and "CHECKPOINT" not in line:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
    assert "CHECKPOINT" in line, "first checkpoint never written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = killed_out.with_name("shard-0.partial")
    assert not killed_out.exists() and (partial / "rank-0-of-1" / "checkpoint" / "state.json").is_file()
    # rerun in-process: resumes from the checkpoint
    stage1.train_token_shard(tiny_model, *tiny_dataset, killed_out, 0, 1, stage1_settings(**kw),
                             str(killed_out) + ".log.csv", progress=False)
    assert not partial.exists()
    straight = stage1.train_token_shard(tiny_model, *tiny_dataset, tmp_path / "straight" / "shard-0.safetensors", 0, 1,
                                        stage1_settings(**kw), progress=False)
    a, b = read_token_table(killed_out), read_token_table(straight)
    assert a.class_ids.tolist() == b.class_ids.tolist() == [0, 1, 2]
    assert (a.embeddings - b.embeddings).abs().max().item() <= 1e-6
    log_rows = Path(str(killed_out) + ".log.csv").read_text().strip().splitlines()
    iters = [int(r.split(",")[0]) for r in log_rows[1:]]
    assert iters == sorted(iters) and len(set(zip(iters, [r.split(",")[1] for r in log_rows[1:]]))) == len(iters)
