"""The command line of every trainer and the launchers it runs under.

``main(MyTask)`` parses ``--config``, ``--save_dir``, ``--resume``, ``--fresh``, ``--opt``, ``--device`` and the
launcher flags, and runs ``loop.train``. Launchers (all trainers alike):

- plain ``python train_x.py``: one process;
- ``torchrun`` (``--nproc_per_node=N``, and multi-node ``--nnodes``/``--node_rank`` with a
  rendezvous): sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, read as they are;
- ``python -m torch.distributed.launch`` (deprecated): also passes ``--local-rank N``, which sets
  LOCAL_RANK when the launcher did not;
- the reference's ``--gpu_id 0123``: sets CUDA_VISIBLE_DEVICES before CUDA starts and, with
  several GPUs, replaces this process by torchrun with one process per GPU (a note shows the
  torchrun command to use next time);
- SLURM ``srun``: each task gets SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID, which become RANK,
  WORLD_SIZE and LOCAL_RANK; the rendezvous is MASTER_ADDR / MASTER_PORT when set, else the first
  host of the allocation (SLURM_JOB_NODELIST) and a port derived from SLURM_JOB_ID. Variables a
  launcher already set (torchrun started inside an allocation) win.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path

import torch

from utils.config import ConfigError, describe_schema
from utils.errors import report_errors, set_log_folder, set_step
from utils.sample_images import load_config_with_fallback

from .distributed import env_int, leave_if_peer
from .loop import train
from .stopping import StopRequest, exit_status, parse_duration
from .task import Task

SLURM_PORT_BASE = 15000
"""SLURM rendezvous port without MASTER_PORT: SLURM_PORT_BASE + SLURM_JOB_ID % SLURM_PORT_SPAN."""
SLURM_PORT_SPAN = 20000


def gpu_ids(text: str) -> list[str]:
    """GPU ids of ``--gpu_id``: '0123' (one digit per GPU, the reference's style) or '0,1,2,3'.
    Raises ConfigError for anything else or a repeated id."""
    parts = [p.strip() for p in text.split(",")] if "," in text else list(text.strip())
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"--gpu_id: expected GPU numbers such as 0123 or 0,1,2,3, got {text!r}")
    return parts


def torchrun_command(n_procs: int, script: Path, argv: Sequence[str]) -> list[str]:
    """The torchrun command (as ``python -m torch.distributed.run``) that runs ``script`` with
    ``argv`` on ``n_procs`` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_procs}",
            str(Path(script).resolve()), *argv]


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,9],cpu1' -> 'gpu03', 'a,b' -> 'a'."""
    match = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?([^,]*)", nodelist.strip())
    prefix, ranges, suffix = match.groups()
    first = ranges.split(",")[0].split("-")[0] if ranges else ""
    return f"{prefix}{first}{suffix}"


def slurm_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The torchrun variables for a process started by ``srun`` (see the module docstring); empty
    when SLURM did not start it as a task or a launcher already set RANK. Raises LaunchError (one
    line) when SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID or SLURM_JOB_ID is not a usable integer."""
    if "RANK" in environ or "SLURM_PROCID" not in environ or "SLURM_NTASKS" not in environ:
        return {}
    tasks = env_int(environ, "SLURM_NTASKS", 1, minimum=1)
    within = f" (SLURM_NTASKS is {tasks})"
    rank = env_int(environ, "SLURM_PROCID", 0, maximum=tasks - 1, why=within)
    local_rank = env_int(environ, "SLURM_LOCALID", 0, maximum=tasks - 1, why=within)
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or "127.0.0.1"
    port = SLURM_PORT_BASE + env_int(environ, "SLURM_JOB_ID", 0) % SLURM_PORT_SPAN
    return {"RANK": str(rank), "WORLD_SIZE": str(tasks), "LOCAL_RANK": str(local_rank),
            "MASTER_ADDR": environ.get("MASTER_ADDR") or first_host(nodelist),
            "MASTER_PORT": environ.get("MASTER_PORT") or str(port)}


def apply_launcher_flags(argv: Sequence[str], script: Path, prog: str,
                         environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Handle the launchers before anything starts CUDA (see the module docstring); returns the
    arguments left for the trainer's parser. With ``--gpu_id`` and several GPUs outside a launcher
    this process is replaced by torchrun running ``script``; ``prog`` names it in the notes. Raises
    ConfigError when the GPUs are not there."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None)
    parser.add_argument("--gpu_id", default=None)
    flags, rest = parser.parse_known_args(argv)
    environ.update(slurm_environment(environ))
    if flags.local_rank is not None:
        environ.setdefault("LOCAL_RANK", str(flags.local_rank))
    if flags.gpu_id is None:
        return rest
    ids = gpu_ids(flags.gpu_id)
    visible = ",".join(ids)
    environ["CUDA_VISIBLE_DEVICES"] = visible
    found = torch.cuda.device_count()
    if not found:
        raise ConfigError(f"--gpu_id {flags.gpu_id}: no CUDA device is available; drop --gpu_id to train "
                          f"on the CPU")
    if found != len(ids):
        raise ConfigError(f"--gpu_id {flags.gpu_id}: only {found} of the GPUs {visible} exist")
    local_world = env_int(environ, "LOCAL_WORLD_SIZE", 1, minimum=1)
    if "WORLD_SIZE" in environ and local_world > len(ids):
        raise ConfigError(f"--gpu_id {flags.gpu_id}: {len(ids)} GPU(s) for the {local_world} processes on this node; "
                          f"DDP needs one GPU per process: list {local_world} GPUs or start {len(ids)} processes")
    if len(ids) == 1 or "WORLD_SIZE" in environ:
        print(f"note: --gpu_id sets CUDA_VISIBLE_DEVICES={visible}; the recommended launcher is torchrun "
              f"(CUDA_VISIBLE_DEVICES=... torchrun --nproc_per_node=N {prog} ...)", file=sys.stderr)
        return rest
    command = torchrun_command(len(ids), script, rest)
    print(f"note: --gpu_id {flags.gpu_id}: starting {len(ids)} processes with torchrun; next time run it "
          f"directly: CUDA_VISIBLE_DEVICES={visible} torchrun --nproc_per_node={len(ids)} {prog} "
          f"{shlex.join(rest)}", file=sys.stderr, flush=True)
    os.execv(command[0], command)
    return rest  # not reached: execv replaces this process


def build_parser(task_cls: type[Task], prog: str | None = None) -> argparse.ArgumentParser:
    """The command line of a trainer: --config, --save_dir, --resume, --opt, --device and the
    launcher flags (listed for --help; ``apply_launcher_flags`` consumes them first)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=task_cls.description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set them in the file or with --opt KEY=VALUE):\n"
               + describe_schema(task_cls.schema())
               + "\n\nseveral processes: torchrun --nproc_per_node=N <script> ... (DDP; NCCL on GPU, gloo on "
                 "CPU), multi-node torchrun, or srun (SLURM) with one task per process")
    parser.add_argument("--config", default=task_cls.default_config(),
                        help="JSON config file, '#' comments allowed (default: %(default)s)")
    parser.add_argument("--save_dir", default=None,
                        help="folder for checkpoints, model exports, logs and TensorBoard events "
                             "(default: the config's save_dir)")
    parser.add_argument("--resume", default=None, metavar="PATH|auto",
                        help="continue from a training checkpoint; 'auto' picks "
                             "<save_dir>/checkpoints/latest.pth when it exists, else starts afresh (refused "
                             "when the folder holds an earlier run's best.pth or models/ without latest.pth)")
    parser.add_argument("--fresh", action="store_true", default=None,
                        help="start over in a --save_dir that holds an earlier run: its checkpoints, model "
                             "exports and TensorBoard events are deleted first")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --opt lr=2e-4 "
                             "--opt n_feat=[32,64] --opt train_dirs=a,b")
    parser.add_argument("--time_limit", default=None, metavar="DURATION",
                        help="stop cleanly, with a checkpoint, before a step would end later than this after "
                             "the start (e.g. 90m, 2h30m, 02:30:00); --resume auto continues the run exactly. "
                             "SIGTERM, SIGUSR1 and Ctrl-C also stop it after the current step (Ctrl-C again: at once)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N, mps or auto (default: CUDA when available, else Apple MPS "
                             "when available, else the CPU)")
    launchers = parser.add_argument_group("launcher flags")
    launchers.add_argument("--gpu_id", metavar="IDS",
                           help="e.g. 0123: sets CUDA_VISIBLE_DEVICES; several GPUs start torchrun")
    launchers.add_argument("--local-rank", "--local_rank", metavar="N",
                           help="passed by python -m torch.distributed.launch (deprecated)")
    return parser


def main(task_cls: type[Task], argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point of a trainer; returns the exit status.

    ``prog`` defaults to the file name of the script that defines ``task_cls``. Bad input (config,
    paths, checkpoints, images, GPUs) and a training stopped by NaNs print one line
    ``<prog>: error: ...`` on stderr and return 1; argparse usage errors exit with 2. A run stopped
    early (``--time_limit``, counted from this call; a stop signal) logs ``stopped by ...`` and
    returns ``stopping.exit_status``: 0 at the time limit, 128 + the signal's number for a signal.
    """
    start = time.monotonic()
    script = Path(sys.modules[task_cls.__module__].__file__)
    prog = prog or script.name
    argv = sys.argv[1:] if argv is None else list(argv)

    def run(argv: Sequence[str]) -> int:
        rest = apply_launcher_flags(argv, script, prog)
        args = build_parser(task_cls, prog).parse_args(rest)
        cfg = load_config_with_fallback(args.config, task_cls.schema(), args.opt)
        limit = parse_duration(args.time_limit) if args.time_limit is not None else None
        cli = {k: v for k, v in (("save_dir", args.save_dir), ("resume", args.resume), ("fresh", args.fresh))
               if v is not None}
        cfg = cfg.replace(**cli)
        set_log_folder(cfg.save_dir)  # an unexpected error's traceback goes there once the run made it
        set_step("training")
        result = train(task_cls, cfg, device=args.device, stop=StopRequest(limit, start))
        return exit_status(result.stopped)

    status = report_errors(run, argv, prog)
    leave_if_peer(status)
    return status
