"""How a job was launched, for the command that resumes it (qkvlab/train/cluster.py)."""

from __future__ import annotations

import subprocess
import sys

from qkvlab.train.cluster import torchrun_prefix

ARGS = ["variant=k_eq_v", "train.steps=50"]


def test_the_resume_prefix_is_the_torchrun_command_as_launched():
    console = ["/venv/bin/python", "/venv/bin/torchrun", "--nnodes=1", "--nproc_per_node=8", "-m", "qkvlab", "train", *ARGS]
    assert torchrun_prefix(ARGS, {}, console) == ["torchrun", "--nnodes=1", "--nproc_per_node=8", "-m", "qkvlab", "train"]
    script = ["/venv/bin/python", "/venv/bin/torchrun", "--nproc_per_node=2", "--no-python", "qkvlab", "train", *ARGS]
    assert torchrun_prefix(ARGS, {}, script) == ["torchrun", "--nproc_per_node=2", "--no-python", "qkvlab", "train"]
    module = ["/usr/bin/python3", "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "qkvlab", "train", *ARGS]
    assert torchrun_prefix(ARGS, {}, module) == ["python", "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "qkvlab", "train"]


def test_without_the_launchers_command_line_the_prefix_comes_from_torchruns_environment():
    env = {"WORLD_SIZE": "32", "LOCAL_WORLD_SIZE": "8"}
    want = ["torchrun", "--nnodes=4", "--nproc_per_node=8", "-m", "qkvlab", "train"]
    assert torchrun_prefix(ARGS, env, []) == want
    assert torchrun_prefix(ARGS, env, ["/usr/bin/python", "other.py", "x"]) == want


def test_a_rank_leaving_a_stopped_job_finishes_leaving_when_the_launcher_sends_sigterm():
    """torchrun (and srun) SIGTERM the tasks still running once one has exited. A rank past
    leave_together has agreed to stop and the checkpoint is written: it must still leave with the
    stop's own code (143), not die by the launcher's signal halfway through its exit."""
    code = (
        "import os, signal\n"
        "from qkvlab.train.cluster import leave_together\n"
        "from qkvlab.train.distributed import SINGLE\n"
        "leave_together(SINGLE)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "raise SystemExit(143)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, (done.returncode, done.stderr[-2000:])
