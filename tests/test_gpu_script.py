"""bench/gpu.sh on the CPU with a few events: every step of the GPU run works before a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from graphsr.inference import SuperResolver

ROOT = Path(__file__).resolve().parents[1]


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
