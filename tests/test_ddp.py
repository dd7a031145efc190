"""Distributed train-student: `torchrun` with 2 CPU processes (gloo) against one process.

Every rank computes the loss of the whole global batch from gathered features; the gather's backward
(sum over ranks) and DDP's gradient averaging give the single-process gradient. AdamW hides a
constant gradient scale (CLIP4Clip's AllGather is off by the world size and trains fine), so the
first test compares the loss *and the gradients* of one global batch directly; the slow one runs the
whole stage through the CLI under torchrun. Batch size 5 over 2 ranks gives uneven slices (3 + 2).

This file is also the torchrun worker script of the first test (see ``__main__`` at the bottom).
"""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TORCHRUN_TIMEOUT_S = 600


def first_batch_loss_and_gradients(manifest_dir, frames, caches, out_file):
    """Loss terms and parameter gradients of the first global batch, computed the way train_student
    does on this rank (DDP and gathering when launched by torchrun); rank 0 writes them."""
    from safetensors.torch import save_file

    from teachclip.core.config import BackboneConfig, StudentConfig, TrainStudentConfig
    from teachclip.core.manifest import load_manifest
    from teachclip.models.student import Student
    from teachclip.stages.train_student import (
        StudentStep,
        batch_losses,
        gather_soft_labels,
        init_distributed,
        loss_weights,
        rank_slice,
        select_teachers,
    )
    from teachclip.stores import open_for_manifest
    from teachclip.training.batches import caption_per_video_batches, training_data

    rank, world, device = init_distributed("cpu")
    config = TrainStudentConfig(batch_size=5)
    manifest = load_manifest(manifest_dir)
    store = open_for_manifest(frames, manifest)
    data = training_data(store, manifest)
    chosen = select_teachers([caches], None, store.fingerprint, data)
    terms = loss_weights(config, chosen)
    torch.manual_seed(0)
    student = Student(StudentConfig(backbone=BackboneConfig(name="teachclip-micro", precision="fp32"),
                                    head="seqTransf", temporal_layers=1))
    step_module = StudentStep(student)
    if world > 1:
        step_module = torch.nn.parallel.DistributedDataParallel(step_module)
    batch = caption_per_video_batches(data.captions_of_video, config.batch_size, config.seed, 0)[0]
    local, sizes = rank_slice(len(batch.videos), world, rank)
    frames_local, mask_local = store.read(data.store_rows[batch.videos[local]])
    tokens = student.tokenize([data.texts[i] for i in batch.captions[local]])
    outputs = step_module(torch.from_numpy(mask_local), tokens=tokens, frames=torch.from_numpy(frames_local))
    losses = batch_losses(outputs, gather_soft_labels(chosen, batch.captions, batch.videos, terms), terms, config, sizes)
    losses["loss"].backward()
    if rank == 0:
        tensors = {f"loss.{k}": v.detach().reshape(1) for k, v in losses.items()}
        tensors |= {f"grad.{n}": p.grad.contiguous() for n, p in student.named_parameters() if p.grad is not None}
        save_file(tensors, str(out_file))


def torchrun(arguments, timeout=TORCHRUN_TIMEOUT_S):
    launcher = shutil.which("torchrun") or pytest.fail("torchrun not on PATH (it ships with torch)")
    environment = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([launcher, "--standalone", "--nproc_per_node", "2", *arguments], capture_output=True,
                            text=True, env=environment, timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def data(student_data):
    return student_data  # the shared student data of tests/conftest.py (read-only)


def test_two_gloo_ranks_give_the_single_process_loss_and_gradients(data, tmp_path):
    from safetensors.torch import load_file

    manifest, frames, caches = data
    first_batch_loss_and_gradients(manifest, frames, caches, tmp_path / "single.safetensors")
    torchrun([__file__, "--manifest", str(manifest), "--frames", str(frames), "--teachers", str(caches),
              "--out", str(tmp_path / "ddp.safetensors")])
    single, ddp = load_file(str(tmp_path / "single.safetensors")), load_file(str(tmp_path / "ddp.safetensors"))
    assert single.keys() == ddp.keys()
    assert {"loss.nce", "loss.coarse", "loss.fine", "loss.loss"} <= single.keys()
    assert sum(k.startswith("grad.") for k in single) > 10
    for name in single:
        # the all_reduce sums the ranks' float32 gradients in another order than one process does: allow
        # that rounding, relative to the tensor's own scale (tiny entries of a large gradient included)
        scale = float(single[name].abs().max())
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=max(1e-6 * scale, 1e-7), msg=name)


PARAMS = """\
student:
  backbone: {name: teachclip-micro, precision: fp32}
  head: seqTransf
  temporal_layers: 1
train_student:
  epochs: 2
  batch_size: 5
  lr_backbone: 0.001
  lr_new: 0.001
  lr_afa: 0.001
  prefetch: false
compute: {device: cpu}
evaluate: {batch_videos: 4}
"""


@pytest.mark.slow
def test_torchrun_train_student_matches_one_process(data, tmp_path):
    from helpers import read_rows
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from teachclip.cli import app

    manifest, frames, caches = data
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    arguments = ["--params", str(params), "train-student", "--frames", str(frames), "--manifest", str(manifest),
                 "--teachers", str(caches)]
    single = CliRunner().invoke(app, [*arguments, "--out", str(tmp_path / "single")])
    assert single.exit_code == 0, single.output
    torchrun(["-m", "teachclip.cli", *arguments, "--out", str(tmp_path / "ddp")])

    single_rows, ddp_rows = read_rows(tmp_path / "single"), read_rows(tmp_path / "ddp")
    assert len(single_rows) == len(ddp_rows) == 2
    for one, two in zip(single_rows, ddp_rows, strict=True):
        assert one["optimizer_steps"] == two["optimizer_steps"]
        for term in ("nce", "coarse", "fine", "loss", "logit_scale", "test_t2v_R1"):
            assert float(two[term]) == pytest.approx(float(one[term]), rel=1e-5, abs=1e-6), term
    one = load_file(str(tmp_path / "single" / "model.safetensors"))
    two = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)


if __name__ == "__main__":  # the torchrun worker of the first test
    parser = argparse.ArgumentParser()
    for flag in ("--manifest", "--frames", "--teachers", "--out"):
        parser.add_argument(flag, type=Path, required=True)
    args = parser.parse_args()
    first_batch_loss_and_gradients(args.manifest, args.frames, args.teachers, args.out)
    sys.exit(0)
