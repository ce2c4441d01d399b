"""How a job was launched, for the command that resumes it (qkvlab/train/cluster.py)."""

from __future__ import annotations

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
