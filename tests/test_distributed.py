"""Processes, devices and precision of a training run without a GPU: the launch variables checked
where they are read, the DataLoader workers per process, the CUDA RNG states of a checkpoint
restored where another number of GPUs is visible, DDP with one process (gloo), the gradient norms
of clipping groups, and fp16 training with its gradient scaler (on the CPU)."""
import os
import socket
import subprocess

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from test_devices import FakeCuda
from test_engine import ToyTask, toy_config, weights
from test_train_syn import script, sub_env
from utils import seeding
from utils.config import ConfigError
from utils.training import launch, train
from utils.training.distributed import (LaunchError, launch_variables, setup_distributed, slurm_tasks_on_node,
                                        workers_per_process)
from utils.training.loop import clip_norm, precision_choice
from utils.training.state import load_training_state

LAUNCH_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- launch variables


def test_launch_variables_of_a_plain_process_and_of_torchrun():
    plain = launch_variables({})
    assert (plain.rank, plain.world_size, plain.local_rank, plain.local_world_size) == (0, 1, 0, None)
    node = launch_variables({"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8",
                             "MASTER_PORT": "29500"})
    assert (node.rank, node.world_size, node.local_rank, node.local_world_size) == (9, 16, 1, 8)


@pytest.mark.parametrize("environ, name, allowed", [
    ({"RANK": "abc"}, "RANK", "an integer from 0 to 0"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK", "from 0 to 1 (WORLD_SIZE is 2)"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE", "an integer >= 1"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE", "an integer >= 1"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK", "an integer from 0 to 0"),
    ({"WORLD_SIZE": "4", "RANK": "1", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "2"}, "LOCAL_RANK",
     "(LOCAL_WORLD_SIZE is 2)"),
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "3"}, "LOCAL_WORLD_SIZE", "from 1 to 2"),
    ({"MASTER_PORT": "x"}, "MASTER_PORT", "from 1 to 65535"),
    ({"MASTER_PORT": "70000"}, "MASTER_PORT", "from 1 to 65535"),
])
def test_bad_launch_variables_are_one_line_naming_the_variable(environ, name, allowed):
    with pytest.raises(LaunchError) as err:
        launch_variables(environ)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"environment variable {name}=") and allowed in message


NUMBERISH = st.one_of(st.integers(-3, 70000).map(str), st.text(max_size=8), st.just("9" * 5000),
                      st.integers(0, 9).map(lambda n: f" {n} "))


@settings(max_examples=50 * int(os.environ.get("VIRNET_HYPOTHESIS_EXAMPLES", "4")), deadline=None, database=None,
          derandomize=os.environ.get("VIRNET_HYPOTHESIS_RANDOM", "") != "1")
@given(st.dictionaries(st.sampled_from(LAUNCH_NAMES[:4] + ("MASTER_PORT",)), NUMBERISH))
def test_any_launch_variables_give_a_consistent_launch_or_one_line(environ):
    """Whatever the launcher variables hold: a launch whose numbers fit together, or LaunchError with
    one short line naming a variable that is set; never another exception."""
    try:
        launch = launch_variables(environ)
    except LaunchError as err:
        message = str(err)
        assert "\n" not in message and len(message) < 300
        assert any(message.startswith(f"environment variable {name}=") for name in environ)
        return
    assert 0 <= launch.rank < launch.world_size
    local = launch.local_world_size or launch.world_size
    assert 0 <= launch.local_rank < local <= launch.world_size


@pytest.mark.parametrize("environ, message", [
    ({"SLURM_PROCID": "abc", "SLURM_NTASKS": "2"}, "SLURM_PROCID='abc': must be an integer from 0 to 1"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "0"}, "SLURM_NTASKS='0': must be an integer >= 1"),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "2"}, "SLURM_PROCID='2'"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "j1"}, "SLURM_JOB_ID='j1'"),
])
def test_bad_slurm_variables_are_one_line(environ, message):
    with pytest.raises(LaunchError, match=message.replace("(", r"\(")):
        launch.slurm_environment(environ)


@pytest.mark.parametrize("environ, tasks", [({}, None), ({"SLURM_NTASKS_PER_NODE": "4"}, 4),
                                            ({"SLURM_TASKS_PER_NODE": "8"}, 8),
                                            ({"SLURM_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "2"}, 2),
                                            ({"SLURM_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "3"}, 1)])
def test_slurm_tasks_on_this_node(environ, tasks):
    assert slurm_tasks_on_node(environ) == tasks


@pytest.mark.parametrize("environ", [{"SLURM_TASKS_PER_NODE": "2(x"}, {"SLURM_TASKS_PER_NODE": "0"},
                                     {"SLURM_TASKS_PER_NODE": "2(x3)", "SLURM_NODEID": "3"}])
def test_bad_slurm_task_counts_are_refused(environ):
    with pytest.raises(LaunchError, match="SLURM_"):
        slurm_tasks_on_node(environ)


BAD_LAUNCHES = [
    ({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK='abc'"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0'"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK='-1'"),
    ({"SLURM_PROCID": "abc", "SLURM_NTASKS": "2"}, "SLURM_PROCID='abc'"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "0"}, "SLURM_NTASKS='0'"),
    ({"MASTER_PORT": "x"}, "MASTER_PORT='x'"),
]


@pytest.mark.parametrize("variables, named", BAD_LAUNCHES)
def test_trainer_main_with_bad_launch_variables_returns_one_line(root, tmp_path, monkeypatch, capsys,
                                                                 variables, named):
    from train_denoising_syn import DenoisingSyn
    for name in [*LAUNCH_NAMES, *(k for k in launch.os.environ if k.startswith("SLURM_"))]:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(root)
    status = launch.main(DenoisingSyn, script(root, "--save_dir", str(tmp_path / "run"))[2:], prog="train")
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("train: error: environment variable " + named), err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("variables, named", BAD_LAUNCHES[::3])
def test_a_trainer_with_bad_launch_variables_ends_in_one_line(root, tmp_path, variables, named):
    base = {k: v for k, v in sub_env().items() if k not in LAUNCH_NAMES and not k.startswith("SLURM_")}
    proc = subprocess.run(script(root, "--save_dir", str(tmp_path / "run")), cwd=root, capture_output=True,
                          text=True, timeout=300, env={**base, **variables})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and "error: environment variable " + named in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- devices and workers


@pytest.mark.parametrize("num_workers, local_world, expected", [(8, 1, 8), (8, 8, 1), (8, 16, 1), (16, 8, 2),
                                                                (0, 4, 0), (3, 2, 1)])
def test_workers_are_divided_among_the_processes_of_a_node(num_workers, local_world, expected):
    assert workers_per_process(num_workers, local_world) == expected


def test_two_nodes_of_eight_processes_give_each_process_its_share_of_the_node():
    """16 processes on 2 nodes (torchrun sets LOCAL_WORLD_SIZE=8): 8 workers per node are 1 per
    process, not 8 // 16 = 0."""
    node = launch_variables({"RANK": "12", "WORLD_SIZE": "16", "LOCAL_RANK": "4", "LOCAL_WORLD_SIZE": "8"})
    assert workers_per_process(8, node.local_world_size) == 1


def test_gpu_id_with_fewer_gpus_than_local_processes_is_refused(monkeypatch):
    """``torchrun --nproc_per_node=2 train_x.py --gpu_id 0``: two processes would share GPU 0."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    environ = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    with pytest.raises(ConfigError, match=r"--gpu_id 0: 1 GPU\(s\) for the 2 processes on this node"):
        launch.apply_launcher_flags(["--gpu_id", "0"], launch.Path("x.py"), "x.py", environ)


def test_a_process_group_with_one_process_needs_a_launcher(monkeypatch):
    for name in LAUNCH_NAMES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="config key 'ddp': always .* torchrun --nproc_per_node=1"):
        setup_distributed("cpu", always=True)
    assert not dist.is_initialized()


# --------------------------------------------------------------------------- RNG states and GPUs


class FakeRng:
    """The CUDA RNG calls of ``utils.seeding`` on a machine with ``count`` GPUs, the current one
    ``current``; records which state went to which device."""

    def __init__(self, monkeypatch, count, current=0):
        self.count, self.current, self.restored = count, current, {}
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                            lambda: [torch.full((4,), i, dtype=torch.uint8) for i in range(self.count)])
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)

    def set_rng_state(self, state, device):
        assert device < self.count and device not in self.restored
        self.restored[device] = int(state[0])


def test_rng_state_saved_with_four_gpus_restores_where_one_is_visible(monkeypatch):
    """torchrun rank 2 of 4 (GPU 2 visible as cuda:2), resumed under srun with its own GPU as cuda:0:
    its own device's state goes to its device now, the other three are dropped in one line."""
    saver = FakeRng(monkeypatch, count=4, current=2)
    state = seeding.get_rng_state()
    assert state["cuda_current"] == 2 and len(state["cuda"]) == 4
    loader = FakeRng(monkeypatch, count=1, current=0)
    note = seeding.set_rng_state(state)
    assert loader.restored == {0: 2}
    assert note == "the CUDA RNG state(s) of GPU 0, 1, 3 of the 4 saved were not restored: 1 CUDA device(s) visible here"
    assert saver.count == 4


def test_rng_state_saved_with_one_gpu_restores_where_four_are_visible(monkeypatch):
    FakeRng(monkeypatch, count=1, current=0)
    state = seeding.get_rng_state()
    loader = FakeRng(monkeypatch, count=4, current=3)
    assert seeding.set_rng_state(state) is None
    assert loader.restored == {3: 0}


def test_rng_state_on_the_same_gpus_restores_every_device_as_it_was(monkeypatch):
    FakeRng(monkeypatch, count=4, current=1)
    state = seeding.get_rng_state()
    loader = FakeRng(monkeypatch, count=4, current=1)
    assert seeding.set_rng_state(state) is None
    assert loader.restored == {0: 0, 1: 1, 2: 2, 3: 3}


def test_rng_state_without_the_current_device_restores_by_index(monkeypatch):
    """A checkpoint written before it recorded the current device."""
    FakeRng(monkeypatch, count=2)
    state = {k: v for k, v in seeding.get_rng_state().items() if k != "cuda_current"}
    loader = FakeRng(monkeypatch, count=1)
    assert "GPU 1 of the 2 saved" in seeding.set_rng_state(state)
    assert loader.restored == {0: 0}


# --------------------------------------------------------------------------- one-process DDP


class SeenTask(ToyTask):
    """The toy task, recording whether each step's model is DDP-wrapped and the process group's backend."""

    seen: list = []

    def train_step(self, model, batch, ctx):
        SeenTask.seen.append((isinstance(model, nn.parallel.DistributedDataParallel),
                              dist.get_backend() if dist.is_initialized() else None))
        return super().train_step(model, batch, ctx)


def test_ddp_always_runs_the_real_ddp_path_in_one_process(tmp_path, monkeypatch):
    """``ddp: always`` under a launcher's variables (as torchrun --nproc_per_node=1 sets them) starts
    a gloo group of one and wraps the model in DDP; it trains to the weights of a plain run."""
    SeenTask.seen = []
    plain = train(SeenTask, toy_config(tmp_path / "plain", epochs=1), device="cpu")
    assert set(SeenTask.seen) == {(False, None)}
    SeenTask.seen = []
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(name, value)
    ddp = train(SeenTask, toy_config(tmp_path / "ddp", epochs=1, ddp="always"), device="cpu")
    assert set(SeenTask.seen) == {(True, "gloo")} and not dist.is_initialized()
    assert ddp.iteration == plain.iteration
    a, b = weights(tmp_path / "plain" / "run"), weights(tmp_path / "ddp" / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- clipping norms


def test_a_group_without_gradients_has_norm_zero_on_the_parameters_device():
    on_meta = [nn.Parameter(torch.ones(3, device="meta"))]
    norm = clip_norm(on_meta, 1.0)
    assert norm.device.type == "meta" and norm.dtype == torch.float32 and norm.dim() == 0
    assert clip_norm([nn.Parameter(torch.ones(3))], 1.0).item() == 0.0


def test_a_group_with_gradients_is_clipped_and_returns_its_norm_before():
    param = nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([3.0, 4.0])
    assert clip_norm([param], 1.0).item() == pytest.approx(5.0)
    assert param.grad.norm().item() == pytest.approx(1.0, rel=1e-5)


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize("values, capability, expected", [
    ({"bf16": False}, (7, 0), "fp32"), ({"bf16": "auto"}, (7, 0), "fp32"), ({"bf16": "auto"}, (8, 0), "bf16"),
    ({"precision": "auto", "bf16": True}, (7, 5), "fp32"), ({"precision": "auto"}, (9, 0), "bf16"),
    ({"precision": "fp16"}, (7, 0), "fp16"), ({"precision": "fp32", "bf16": True}, (9, 0), "fp32"),
    ({"precision": "bf16"}, (7, 0), "bf16"),
])
def test_precision_on_a_gpu(monkeypatch, values, capability, expected):
    FakeCuda(monkeypatch, [capability])
    cfg = {"bf16": False, "precision": None, **values}
    precision, why = precision_choice(cfg, torch.device("cuda", 0))
    assert precision == expected
    if values.get("precision") == "auto" and expected == "fp32":
        assert "no bf16 units" in why and "precision=fp16 would train with a gradient scaler" in why
    if values.get("precision") == "bf16" and capability < (8, 0):
        assert "slow here" in why


def test_fp16_training_on_the_cpu_lowers_its_scale_on_overflow_and_resumes_exactly(tmp_path):
    """fp16 + GradScaler (on the CPU, as on a GPU without bf16 units): the toy's gradients overflow
    fp16 at the scaler's first scales (65536 and its halves); those steps are skipped without
    counting as bad steps (max_bad_steps 2 would stop the run), the scaler's state is checkpointed,
    and a run killed mid-way resumes to the same weights and scale."""
    values = dict(precision="fp16", max_bad_steps=2, epochs=2)
    full = train(ToyTask, toy_config(tmp_path / "a", **values), device="cpu")
    log = (tmp_path / "a" / "run" / "train.log").read_text()
    assert "precision: fp16 autocast + gradient scaler" in log and "fp16 gradients overflowed" in log
    scale = load_training_state(tmp_path / "a" / "run" / "checkpoints" / "latest.pth")["scaler"]["scale"]
    assert scale < 65536.0 and full.history[-1]["train/loss"] == full.history[-1]["train/loss"]
    cfg = toy_config(tmp_path / "b", crash_at=8, **values)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(ToyTask, cfg, device="cpu")
    resumed = train(ToyTask, cfg.replace(crash_at=0, resume="auto"), device="cpu")
    assert resumed.iteration == full.iteration
    a, b = weights(tmp_path / "a" / "run"), weights(tmp_path / "b" / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = load_training_state(tmp_path / "b" / "run" / "checkpoints" / "latest.pth")["scaler"]
    assert again["scale"] == scale
