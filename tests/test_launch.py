"""The trainers' command line and launchers (utils/training/launch.py): the registry's trainers and
their default configs, SLURM variables and node lists, and a two-node run started the way srun
starts it (one task per node, gloo on the CPU), which must end with the same weights as
torchrun --nproc_per_node=2."""
import importlib
import os
import socket
import subprocess
import sys

import pytest
import torch

import networks
from test_train_syn import script, sub_env, weights
from utils.training.launch import SLURM_PORT_BASE, SLURM_PORT_SPAN, build_parser, first_host, slurm_environment

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.parametrize("nodelist, host", [("node7", "node7"), ("gpu[03-05,9],cpu1", "gpu03"), ("a,b", "a"),
                                            ("rack-[1-2]-ib", "rack-1-ib"), ("127.0.0.1", "127.0.0.1")])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_slurm_variables_become_torchrun_variables():
    task = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[12-15]",
            "SLURM_JOB_ID": "123456"}
    assert slurm_environment(task) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu12",
                                       "MASTER_PORT": str(SLURM_PORT_BASE + 123456 % SLURM_PORT_SPAN)}
    given = slurm_environment({**task, "MASTER_ADDR": "head", "MASTER_PORT": "29400"})
    assert (given["MASTER_ADDR"], given["MASTER_PORT"]) == ("head", "29400")
    assert slurm_environment({**task, "RANK": "0"}) == {}  # torchrun started inside an allocation wins
    assert slurm_environment({"SLURM_JOB_ID": "1"}) == {}  # an allocation, but not an srun task


@pytest.mark.parametrize("task", list(networks.TASKS))
def test_every_registered_trainer_exists_and_defaults_to_its_config(root, task):
    module, name = networks.TASKS[task].trainer.split(":")
    task_cls = getattr(importlib.import_module(module), name)
    assert task_cls.task == task
    default = build_parser(task_cls).get_default("config")
    assert (root / default).is_file() and default.startswith(f"configs/{networks.TASKS[task].configs}")


@pytest.mark.parametrize("rank, world, status", [("1", "2", 3), ("0", "2", 0), ("0", "1", 0)])
def test_only_ranks_other_than_0_leave_at_once_with_their_output_flushed(root, rank, world, status):
    program = ("import sys; from utils.training.distributed import leave_if_peer; print('done', end=''); "
               "leave_if_peer(3); sys.exit(0)")
    proc = subprocess.run([sys.executable, "-c", program], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**sub_env(), "PYTHONPATH": str(root), "RANK": rank, "WORLD_SIZE": world})
    assert (proc.returncode, proc.stdout) == (status, "done")


def _free_slurm_port() -> int:
    """A port of the range the SLURM launcher derives from job ids that is free now."""
    for port in range(SLURM_PORT_BASE + os.getpid() % 1000, SLURM_PORT_BASE + SLURM_PORT_SPAN, 997):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port in the SLURM range")


@pytest.mark.slow
def test_two_slurm_tasks_train_like_torchrun(root, tmp_path):
    common = ["--opt", "iters_per_epoch=3", "--opt", "epochs=1", "--opt", "val_freq=0", "--opt", "save_freq=0"]
    base = {k: v for k, v in sub_env().items() if k not in LAUNCH_VARIABLES and not k.startswith("SLURM_")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *script(root, "--save_dir", str(tmp_path / "torchrun"), *common)[1:]]
    proc = subprocess.run(cmd, cwd=root, env=base, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # two nodes with one task each, as srun starts them; the rendezvous is the first host of the node
    # list and the port derived from the job id (chosen here so that it is free)
    job = _free_slurm_port() - SLURM_PORT_BASE
    tasks = [subprocess.Popen(script(root, "--save_dir", str(tmp_path / "slurm"), *common), cwd=root,
                              env={**base, "SLURM_JOB_ID": str(job), "SLURM_JOB_NODELIST": "localhost,localhost",
                                   "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank), "SLURM_NODEID": str(rank),
                                   "SLURM_LOCALID": "0"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [task.communicate(timeout=300) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], [err[-2000:] for _, err in outputs]
    assert "2 process(es), global batch 4 (2 per process)" in outputs[0][0]
    a, b = weights(tmp_path / "torchrun"), weights(tmp_path / "slurm")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
