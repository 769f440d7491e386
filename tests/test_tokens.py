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

from train_fixtures import REPO, TINY_RES, kept_dataset, stage1_settings, tiny_dataset, tiny_model  # noqa: F401
from genpromp.training import tokens as token_stage
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
    assert [token_stage.shard_classes(range(7), 3, k) for k in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]


def test_concurrent_equals_plain_per_class_loop(tiny_model, tiny_dataset):
    """Batched (2 classes per forward, refilled as classes finish) == fresh loop per class."""
    settings = stage1_settings(gradient_accumulation_steps=2, concurrent_classes=2, num_train_epochs=1)
    table = load_training_table(*tiny_dataset)
    acc = Accelerator()
    models = token_stage.load_stage1_models(tiny_model, table.classes, acc.device)
    plain_models = token_stage.load_stage1_models(tiny_model, table.classes, acc.device)  # frozen: shareable
    ids = [c.class_id for c in table.classes]
    rows = token_stage.train_classes_concurrent(models, ids, _images(table, settings), settings, acc, progress=False)
    for info in table.classes:
        plain = token_stage.train_class_plain(tiny_model, info, table.images[info.class_id], table.classes, settings,
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
        models = token_stage.load_stage1_models(tiny_model, table.classes)
        before = models.text_encoder.get_input_embeddings().weight.detach().clone()
        row = token_stage.train_class_plain(tiny_model, info, table.images[0], table.classes, settings, components=models)
        after = models.text_encoder.get_input_embeddings().weight.detach()
        tok = models.token_ids[0]
        others = torch.ones(len(before), dtype=torch.bool)
        others[tok] = False
        assert not torch.allclose(row, models.initial_rows[0]), "concept row must change"
        if not defect:
            assert torch.equal(after, before), "with the fix no row of the embedding matrix changes"
        else:
            n = token_stage.class_schedule(settings, 0, len(table.images[0])).total_steps
            factor = (1 - 1e-2 * 0.5) ** n
            torch.testing.assert_close(after[others], before[others] * factor, rtol=1e-5, atol=1e-7)
            assert torch.equal(after[tok], row)


def test_defect_mode_shard_matches_sequential_reference(tiny_model, tiny_dataset, tmp_path):
    """Defect mode in shard 1 (class 2 alone) == the reference's sequential loop over classes 0, 1, 2."""
    settings = stage1_settings(reproduce_weight_decay_defect=True, adam_weight_decay=0.5, learning_rate=1e-2,
                               num_train_epochs=1, max_train_steps=2)
    table = load_training_table(*tiny_dataset)
    models = token_stage.load_stage1_models(tiny_model, table.classes)
    ref = {}
    for info in table.classes:  # the reference: one matrix shared by the sequential per-class loops
        ref[info.class_id] = token_stage.train_class_plain(tiny_model, info, table.images[info.class_id], table.classes,
                                                      settings, components=models)
    out = token_stage.train_token_shard(tiny_model, *tiny_dataset, tmp_path / "shard-1.safetensors", shard=1, n_shards=2,
                                   settings=settings, progress=False)
    got = read_token_table(out)
    assert got.class_ids.tolist() == [2]
    torch.testing.assert_close(got.embeddings[0], ref[2], rtol=1e-5, atol=1e-6)


def test_loss_decreases_on_tiny_example(tiny_model, tiny_dataset, capsys, tmp_path):
    """Fixed evaluation batch: MSE before vs after 40 steps of token training (curve printed)."""
    settings = stage1_settings(max_train_steps=16, num_train_epochs=16, learning_rate=1e-1, batch_size=2)
    table = load_training_table(*tiny_dataset)
    acc = Accelerator()
    models = token_stage.load_stage1_models(tiny_model, table.classes, acc.device)
    images = _images(table, settings)
    from genpromp.training.data import MicroStep
    eval_steps = [MicroStep(0, 0, 10_000 + k, (0, 1, 2), False) for k in range(4)]

    def eval_loss(row):
        embed = models.text_encoder.get_input_embeddings()
        embed.set_rows({models.token_ids[1]: torch.nn.Parameter(row)})
        with torch.no_grad():
            return sum(token_stage._forward_loss(models, *token_stage._step_inputs(models, settings, 1, images[1], st),
                                            accelerator=acc).mean().item() for st in eval_steps) / len(eval_steps)

    log = tmp_path / "log.csv"
    rows = token_stage.train_classes_concurrent(models, [1], images, settings, acc, progress=False, log_path=log)
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
from genpromp.training import tokens as token_stage, resume
from train_fixtures import stage1_settings
if {pause_after_first_checkpoint!r}:
    real = token_stage.write_checkpoint
    def slow(*a, **k):
        real(*a, **k)
        print("CHECKPOINT", flush=True)
        time.sleep(60)
    token_stage.write_checkpoint = slow
token_stage.train_token_shard({str(model)!r}, *{tuple(map(str, data))!r}, {str(out)!r}, 0, 1,
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
    token_stage.train_token_shard(tiny_model, *tiny_dataset, killed_out, 0, 1, stage1_settings(**kw),
                             str(killed_out) + ".log.csv", progress=False)
    assert not partial.exists()
    straight = token_stage.train_token_shard(tiny_model, *tiny_dataset, tmp_path / "straight" / "shard-0.safetensors", 0, 1,
                                        stage1_settings(**kw), progress=False)
    a, b = read_token_table(killed_out), read_token_table(straight)
    assert a.class_ids.tolist() == b.class_ids.tolist() == [0, 1, 2]
    assert (a.embeddings - b.embeddings).abs().max().item() <= 1e-6
    log_rows = Path(str(killed_out) + ".log.csv").read_text().strip().splitlines()
    iters = [int(r.split(",")[0]) for r in log_rows[1:]]
    assert iters == sorted(iters) and len(set(zip(iters, [r.split(",")[1] for r in log_rows[1:]]))) == len(iters)


# ---------------------------------------------------------------- keep_class and shard planning

def test_keep_class_trains_only_kept_classes_in_capped_shards(tiny_model, kept_dataset, tmp_path):
    """6 classes in the table, images for 0-2, kept {0, 2}; shards: 5 -> 2 jobs of one class each."""
    from genpromp.errors import GenprompError
    from genpromp.training.checkpoints import merge_token_tables

    train, classes, root = kept_dataset
    table = load_training_table(train, classes, root)
    assert table.class_ids == [0, 2] and len(table.all_classes) == 6
    assert token_stage.token_shard_count(classes, 5) == 2 and token_stage.token_shard_count(classes, 1) == 1
    settings = stage1_settings(num_train_epochs=1, max_train_steps=1)
    outs = [token_stage.train_token_shard(tiny_model, train, classes, root, tmp_path / f"shard-{k}.safetensors", shard=k,
                                     n_shards=5, settings=settings, progress=False) for k in range(2)]
    tables = [read_token_table(p) for p in outs]
    assert [t.class_ids.tolist() for t in tables] == [[0], [2]]
    assert [t.concept_tokens for t in tables] == [["<cub-0>"], ["<cub-2>"]]
    with pytest.raises(GenprompError, match="shard 2 out of range: there are 2 shards"):
        token_stage.train_token_shard(tiny_model, train, classes, root, tmp_path / "shard-2.safetensors", shard=2,
                                 n_shards=5, settings=settings, progress=False)
    merged = read_token_table(merge_token_tables(outs, tmp_path / "tokens.safetensors", classes))
    assert merged.class_ids.tolist() == [0, 2]
    # every class's token is registered, so <cub-i> keeps token id vocab + i
    models = token_stage.load_stage1_models(tiny_model, table.all_classes)
    base = min(models.token_ids.values())
    assert {c: t - base for c, t in models.token_ids.items()} == {i: i for i in range(6)}


def test_shards_beyond_class_count_are_capped():
    from genpromp.errors import GenprompError

    assert token_stage.planned_shards(20, 3) == 3 and token_stage.planned_shards(2, 3) == 2
    assert [token_stage.shard_classes([0, 2], 5, k) for k in range(2)] == [[0], [2]]
    with pytest.raises(GenprompError, match="5 capped at the 2 classes"):
        token_stage.shard_classes([0, 2], 5, 2)


# ---------------------------------------------------------------- the original's data-parallel schedule

def _reference_shards(n, b, processes):
    """accelerate's BatchSamplerShard (even_batches, drop_last False) over batches of ``range(n)``:
    the batches each process gets, written out as that code does it (one process: no sharding)."""
    batches = [list(range(i, min(i + b, n))) for i in range(0, n, b)]
    if processes == 1:
        return [batches]
    shards = []
    for r in range(processes):
        initial, out, to_yield = [], [], []
        for idx, batch in enumerate(batches):
            if idx < processes:
                initial += batch
            if idx % processes == r:
                to_yield = batch
            if idx % processes == processes - 1 and len(batch) == b:
                out.append(to_yield)
                to_yield = []
        if len(to_yield) == b:
            out.append(to_yield)
        while len(initial) < processes * b:
            initial += initial
        batch, idx = batches[-1], len(batches) - 1
        if len(batch) == b:
            batch, idx = [], idx + 1
        cycle = 0
        while idx % processes != 0 or batch:
            end = cycle + b - len(batch)
            batch = batch + initial[cycle:end]
            if idx % processes == r:
                out.append(batch)
            cycle, batch, idx = end, [], idx + 1
        shards.append(out)
    return shards


def _reference_loop(n, b, ga, processes, epochs):
    """The reference's per-class loop on P processes, with its break tests (they leave only the inner
    loop, so every later epoch still runs one micro-step). Returns ([(epoch, items of the P batches,
    sync)], number of micro-steps up to the one that used up the step budget)."""
    shards = _reference_shards(n, b, processes)
    m = len(shards[0])
    assert all(len(s) == m for s in shards)
    max_steps = epochs * math.ceil(math.ceil(n / b) / ga) // processes
    micro, g, done = [], 0, None
    for epoch in range(epochs):
        for k in range(m):
            sync = (k + 1) % ga == 0 or k == m - 1
            micro.append((epoch, [i for s in shards for i in s[k]], sync))
            g += int(sync)
            if g >= max_steps:
                done = len(micro) if done is None else done
                break
    return micro, done or len(micro)


def test_data_parallel_schedule_matches_reference_loop():
    """Every micro-step (items of the P batches, sync) of the reference's loop, including the single
    micro-steps of the epochs after the step budget ran out."""
    tails = 0
    for n in range(1, 14):
        for b in (1, 2, 3):
            for ga in (1, 2):
                for p in (1, 2, 3):
                    ref, done = _reference_loop(n, b, ga, p, epochs=2)
                    tails += done < len(ref)
                    s = StepSchedule(n, b, ga, epochs=2, max_steps=None, seed=0, keys=(0,), processes=p)
                    got = list(s.micro_steps())
                    perms = {e: s.permutation(e).tolist() for e in (0, 1)}
                    assert s.total_steps == sum(sync for _, _, sync in ref), (n, b, ga, p)
                    assert [(m.epoch, m.sync) for m in got] == [(e, sync) for e, _, sync in ref], (n, b, ga, p)
                    assert [list(m.items) for m in got] == [[perms[e][i] for i in items] for e, items, _ in ref]
    assert tails > 10  # the grid includes budgets used up before the last epoch


def test_data_parallel_lr_and_steps_formula():
    s = stage1_settings(learning_rate=5e-5, batch_size=4, gradient_accumulation_steps=2, scale_lr=True,
                        data_parallel_processes=3)
    assert s.effective_lr() == pytest.approx(5e-5 * 4 * 2 * 3)
    assert stage1_settings(learning_rate=5e-5, scale_lr=False, data_parallel_processes=3).effective_lr() == 5e-5
    # CUB-sized class: 30 images, batch 4 -> 8 batches; 2 epochs on 2 processes -> 8 steps of 8 images
    sched = token_stage.class_schedule(stage1_settings(batch_size=4, num_train_epochs=2, data_parallel_processes=2), 0, 30)
    assert sched.total_steps == 2 * 8 // 2 == 8 and sched.items_per_micro == 8 and sched.micro_per_epoch == 4
    last = list(sched.micro_steps())[3]   # last micro-step of epoch 0: 6 real images + 2 from the epoch's start
    perm = sched.permutation(0).tolist()
    assert list(last.items) == perm[24:30] + perm[:2]
    # 3 processes: budget 16 // 3 = 5 steps, reached in the second epoch (3 micro-steps per epoch)
    three = token_stage.class_schedule(stage1_settings(batch_size=4, num_train_epochs=2, data_parallel_processes=3), 0, 30)
    assert three.total_steps == 5 and [m.epoch for m in three.micro_steps()] == [0, 0, 0, 1, 1]


def test_two_processes_equal_double_batch(tiny_model, tiny_dataset):
    """P = 2 with batch b == one process with batch 2b (same images per step, same scaled lr); P changes the result."""
    table = load_training_table(*tiny_dataset)
    acc = Accelerator()
    models = token_stage.load_stage1_models(tiny_model, table.classes, acc.device)
    runs = {}
    for name, kw in {"p2": dict(batch_size=1, data_parallel_processes=2), "b2": dict(batch_size=2),
                     "p1": dict(batch_size=1)}.items():
        settings = stage1_settings(scale_lr=True, learning_rate=5e-3, num_train_epochs=2, **kw)
        images = _images(table.subset([2]), settings)          # class 2: 2 images
        runs[name] = (settings, token_stage.train_classes_concurrent(models, [2], images, settings, acc, progress=False)[2])
    assert runs["p2"][0].effective_lr() == runs["b2"][0].effective_lr() == 2 * runs["p1"][0].effective_lr()
    assert token_stage.class_schedule(runs["p2"][0], 2, 2).total_steps == 2
    assert token_stage.class_schedule(runs["p1"][0], 2, 2).total_steps == 4
    moved = (runs["p2"][1] - models.initial_rows[2]).abs().max().item()
    assert moved > 1e-4
    assert (runs["p2"][1] - runs["b2"][1]).abs().max().item() <= 1e-6
    assert (runs["p2"][1] - runs["p1"][1]).abs().max().item() > moved / 10


def test_data_parallel_concurrent_equals_plain_loop_with_padding(tiny_model, tiny_dataset):
    """P = 2 on class 0 (3 images, batch 1: the second micro-step is padded) — batched == reference loop."""
    settings = stage1_settings(batch_size=1, data_parallel_processes=2, num_train_epochs=2, learning_rate=5e-3)
    table = load_training_table(*tiny_dataset)
    acc = Accelerator()
    models = token_stage.load_stage1_models(tiny_model, table.classes, acc.device)
    plain_models = token_stage.load_stage1_models(tiny_model, table.classes, acc.device)
    rows = token_stage.train_classes_concurrent(models, [0], _images(table.subset([0]), settings), settings, acc,
                                           progress=False)
    plain = token_stage.train_class_plain(tiny_model, table.classes[0], table.images[0], table.classes, settings,
                                     components=plain_models)
    moved = (plain - models.initial_rows[0]).abs().max().item()
    assert moved > 1e-4 and (plain - rows[0]).abs().max().item() <= 1e-5
