"""bench/gpu.sh on the CPU with a few events: every step of the GPU run works before a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from graphsr.inference import SuperResolver

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the whole GPU run in miniature (~30 s): make test-slow
def test_gpu_script_runs_every_step_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run([str(ROOT / "bench" / "gpu.sh"), "--device", "cpu", "--tiny"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((tmp_path / "gpu_metrics.json").read_text())
    assert figures["training"]["steps"] > 0 and figures["training"]["events_per_s"] > 0
    assert set(figures["super_resolution_events_per_s"]) == {"teacher_4_evaluations", "student_1_evaluation"}
    assert set(figures["evaluation"]) == {"teacher", "student"} and figures["held_out_events"] > 0
    # the slim checkpoints sample without their optimiser state; the student in one step
    student = SuperResolver(tmp_path / "student.pt", device="cpu")
    assert student.sampling_sigmas is not None and len(student.sampling_sigmas) == 2
    assert "optimizer" not in torch.load(tmp_path / "teacher.pt", weights_only=True)
    assert "super-resolution" in (tmp_path / "gpu_log.txt").read_text()


@pytest.mark.slow  # ~60 s
def test_multi_particle_gpu_script_runs_every_step_on_the_cpu(tmp_path):
    """bench/gpu_multi.sh with a tiny model and a few factor-4 events: simulate, train, super-resolve the two
    particle-flow files, train the SR-input particle-flow model on both, evaluate with all three; what comes back."""
    from graphsr.cli import main
    from graphsr.io import write_cocoa
    from graphsr.simulation import MultiParticleGun, simulate_events

    cache = tmp_path / "cache"
    for name, events, seed in (("eval.root", 12, 4), ("reco.root", 30, 12), ("reco_b.root", 20, 13)):
        write_cocoa(tmp_path / name, simulate_events(MultiParticleGun(), events, factor=4, seed=seed,
                                                     neighbour_branches=False))
    sr_config, reco_config = tmp_path / "sr.yaml", tmp_path / "reco.yaml"
    sr_config.write_text(f"data: {{train: [unused.root], cache: '{cache}', layers: [0, 1, 2]}}\n"
                         "model: {width: 8, depth: 1, coarse_depth: 1, heads: 2, context_tokens: 1}\n"
                         "train: {steps: 3, batch_size: 4, warmup: 1, val_every: 3}\n"
                         "sample: {sampler: ddim, steps: 2, ensemble: 2, calibration_events: 4}\n")
    reco_config.write_text(f"data: {{train: ['{tmp_path / 'reco.root'}', '{tmp_path / 'reco_b.root'}'], "
                           f"cache: '{cache}', layers: [0, 1, 2]}}\n"
                           "model: {width: 8, depth: 1, decoder_depth: 1, heads: 2, context_tokens: 1, k: 4, "
                           "k_between: 1}\ntrain: {steps: 3, batch_size: 8, warmup: 1, val_every: 3}\n")
    for input_type in ("coarse", "truth"):
        assert main(["train-reco", "--config", str(reco_config), "--input-type", input_type, "--out",
                     str(tmp_path / input_type), "--device", "cpu"]) == 0
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "DEVICE": "cpu", "EVENTS": "40", "PROCS": "2",
           "TRAIN_SECONDS": "60", "EVAL_EVENTS": "6", "CONFIG": str(sr_config), "RECO_CONFIG": str(reco_config)}
    done = subprocess.run([str(ROOT / "bench" / "gpu_multi.sh"), str(tmp_path / "eval.root"),
                           str(tmp_path / "coarse" / "checkpoint.pt"), str(tmp_path / "truth" / "checkpoint.pt"),
                           str(tmp_path / "reco.root"), str(tmp_path / "reco_b.root")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "history.csv", "log.txt", "metrics.json",
                                                     "reco_sr.pt", "reco_test_metrics.json", "report.md"]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert "optimizer" not in state and state["step"] == 3
    reco = json.loads((out / "metrics.json").read_text())["reco"]
    assert reco["events"] == 6 and "sr-trained on sr" in reco["learned"]
    # the SR-input model held out 10% of the events of both files (50), not of the first one alone (30)
    assert json.loads((out / "reco_test_metrics.json").read_text())["events"] == 5
    assert "super-resolved the particle-flow events (2 files)" in (out / "log.txt").read_text()
    assert "done" in (out / "log.txt").read_text()
