"""Blind-SR training: configs, the prior and kernel-grid switches, TensorBoard kernels, launcher
flags and command line of train_sisr.py, and end-to-end runs (learning, torchrun DDP)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_sisr
from datasets.sisr import sample_kernel
from loss.steps import sisr_sigma_prior
from networks import build_model, load_checkpoint
from train_sisr import SISR
from utils import training as engine
from utils.config import load_config
from utils.degradation import noise_prior
from utils.image_io import read_image
from utils.seeding import sample_rng, seed_everything
from utils.training.launch import apply_launcher_flags
from utils.training.state import load_training_state
from helpers import sub_env, weights

SMALL = "configs/sisr_x4_small.json"
NET = dict(n_feat=[8, 16], n_resblocks=1, dep_S=3, dep_K=1)
TINY = ["batch_size=4", "hr_size=32", "n_feat=[8,16]", "n_resblocks=1", "dep_S=3", "dep_K=1",
        "iters_per_epoch=6", "epochs=2", "save_freq=0", "print_freq=3", "image_freq=0",
        "val_max_images=1", "val_images=0", "num_workers=0"]



def launcher_flags(argv):
    """The launcher flags of train_sisr.py handled in this process; returns the trainer's arguments."""
    return apply_launcher_flags(argv, Path(train_sisr.__file__), "train_sisr.py")


def opts(items):
    return [a for opt in items for a in ("--opt", opt)]


def tiny_config(*extra):
    return load_config(SMALL, SISR.schema(), TINY + list(extra))


def batch_of(task, n=2):
    """The first n training samples of a task, collated."""
    data = task.build_train_set(n)
    return [torch.stack(parts) for parts in zip(*(data[i] for i in range(n)))]


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("sf, hr_size, lr, lr_min, clip_r, clip_k", [
    (2, 96, 1e-4, 5e-7, 1e2, 1e2), (3, 144, 2e-4, 1e-6, 5e2, 5e2), (4, 192, 2e-4, 1e-6, 5e2, 5e2)])
def test_shipped_configs_have_the_reference_values(root, sf, hr_size, lr, lr_min, clip_r, clip_k):
    cfg = load_config(root / f"configs/sisr_x{sf}.json", SISR.schema())
    assert (cfg.sf, cfg.hr_size, cfg.lr, cfg.lr_min, cfg.clip_grad_R, cfg.clip_grad_K) == (sf, hr_size, lr, lr_min,
                                                                                           clip_r, clip_k)
    assert (cfg.batch_size, cfg.epochs, cfg.warmup_epochs, cfg.iters_per_epoch, cfg.clip_grad_S) == (16, 120, 0,
                                                                                                     10000, 1e2)
    assert (cfg.var_window, cfg.eps2, cfg.r2, cfg.kappa0, cfg.penalty_K) == (9, 1e-5, 1e-4, 50, [0.02, 2])
    assert (cfg.k_size, cfg.noise_level, cfg.noise_jpeg, cfg.downsampler) == (21, [0.01, 15], [0.01, 10], "bicubic")
    assert (cfg.dep_S, cfg.dep_K, cfg.n_feat, cfg.n_resblocks, cfg.extra_mode) == (5, 8, [96, 160, 224], 2, "Both")
    assert not cfg.add_jpeg and not cfg.kernel_shift and cfg.noise_cond and cfg.kernel_cond
    assert (cfg.kernel_grid, cfg.prior_uses_variance, cfg.image_freq) == ("ij", False, 2000)
    assert cfg.val_dir.name == "Set14"
    assert sum(p.numel() for p in SISR(cfg).build_model().parameters()) == pytest.approx(5.90e6, rel=0.01)


def test_reference_style_config_is_accepted(tmp_path, shared):
    text = ('{\n "hr_size": 192, "epochs": 120, "lr": 2e-4, "sf": 4,  # reference keys\n'
            ' "noise_cond": "True", "kernel_cond": "True", "add_jpeg": "False", "kernel_shift": "False",\n'
            ' "downsampler": "Bicubic", "extra_mode": "Both",\n'
            f' "train_hr_patchs": "{shared / "trainsets/CBSD432-sample"}",\n'
            f' "val_hr_path": "{shared / "testsets/Set5"}"\n}}\n')
    (tmp_path / "ref.json").write_text(text)
    task = SISR(load_config(tmp_path / "ref.json", SISR.schema()))
    assert task.cfg.downsampler == "bicubic" and task.cfg.add_jpeg is False
    assert len(task.build_train_set(8).paths) == 108
    (val,) = task.build_val_sets()
    assert val.name == "set5" and len(val.dataset) == 5


def test_jpeg_adds_a_validation_set_and_a_variance_map_snet():
    task = SISR(tiny_config("add_jpeg=true", "val_max_images=2"))
    assert [(v.name, len(v.dataset)) for v in task.build_val_sets()] == [("set14", 2), ("set14_jpeg", 2)]
    net = task.build_model()
    _, _, sigma = net(torch.rand(1, 3, 12, 12), 4)
    assert sigma.shape == (1, 1, 12, 12)  # noise_avg = not add_jpeg


# --------------------------------------------------------------------------- prior, loss, pictures


def test_noise_prior_switches():
    im_lr, im_blur = torch.rand(2, 3, 9, 9), torch.rand(2, 3, 9, 9)
    nlevel = torch.tensor([0.01, 0.05]).view(2, 1, 1, 1)
    assert torch.equal(sisr_sigma_prior(im_lr, im_blur, nlevel, tiny_config()), nlevel)  # the reference: std
    assert torch.equal(sisr_sigma_prior(im_lr, im_blur, nlevel, tiny_config("prior_uses_variance=true")), nlevel ** 2)
    jpeg = sisr_sigma_prior(im_lr, im_blur, nlevel, tiny_config("add_jpeg=true"))
    assert torch.equal(jpeg, noise_prior(im_lr, im_blur, 9))


def test_kernel_grid_switch_transposes_the_loss_kernel():
    outputs = {}
    for grid in ("ij", "xy"):
        task = SISR(tiny_config(f"kernel_grid={grid}"))
        seed_everything(0)
        model, batch = task.build_model(), batch_of(task)
        seed_everything(1)  # the same posterior draws for both grids
        out = task.train_step(model, batch, engine.StepContext(torch.device("cpu"), 0, 0))
        outputs[grid] = out.visuals()["kernel_loss_sample"]
    assert torch.allclose(outputs["ij"], outputs["xy"].transpose(-1, -2), atol=1e-7)
    assert not torch.allclose(outputs["ij"], outputs["xy"], atol=1e-4)


def test_train_step_terms_and_kernel_pictures():
    task = SISR(tiny_config())
    seed_everything(0)
    model, batch = task.build_model(), batch_of(task, 3)
    out = task.train_step(model, batch, engine.StepContext(torch.device("cpu"), 0, 0))
    assert set(out.terms) == {"lh", "kl_rnet", "kl_snet", "kl_knet", "kl_knet0", "kl_knet1", "kl_knet2"}
    parts = out.terms["lh"] + out.terms["kl_rnet"] + out.terms["kl_snet"] + out.terms["kl_knet"]
    assert torch.isclose(out.loss, parts)
    images = out.visuals()
    assert images["hr"].shape == (3, 3, 32, 32) and images["lr"].shape == (3, 3, 8, 8)
    for name in ("kernel_gt", "kernel_est", "kernel_loss_sample"):
        assert images[name].shape == (3, 1, 84, 84)
    # the true kernel picture is the sample's data kernel (its orientation, enlarged 4 times);
    # draws of SISRTrain[0]: image, crop top, crop left, augmentation, then the kernel
    rng = sample_rng(task.cfg.seed, 0, 0)
    paths = task.build_train_set(1).paths
    height, width = read_image(paths[rng.integers(len(paths))]).shape[:2]
    rng.integers(height - 32 + 1), rng.integers(width - 32 + 1), rng.integers(8)
    kernel, _ = sample_kernel(rng, 4)
    np.testing.assert_allclose(images["kernel_gt"][0, 0, ::4, ::4].numpy(), kernel, atol=1e-6)


# --------------------------------------------------------------------------- launcher flags and CLI


def test_local_rank_flags_are_accepted(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "")  # restored after the test
    for flag in (["--local-rank=1"], ["--local_rank", "1"]):
        monkeypatch.delenv("LOCAL_RANK")
        assert launcher_flags([*flag, "--config", "c.json"]) == ["--config", "c.json"]
        assert os.environ["LOCAL_RANK"] == "1"
    monkeypatch.setenv("LOCAL_RANK", "0")  # the launcher's variable wins
    launcher_flags(["--local-rank=3"])
    assert os.environ["LOCAL_RANK"] == "0"


def test_gpu_id_sets_visible_devices_and_starts_torchrun(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("WORLD_SIZE", "CUDA_VISIBLE_DEVICES"):  # set, then removed: restored after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    started = []
    monkeypatch.setattr(os, "execv", lambda path, args: started.append(args))
    launcher_flags(["--gpu_id", "01", "--config", "configs/sisr_x2.json"])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert started == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(Path(train_sisr.__file__).resolve()), "--config", "configs/sisr_x2.json"]]
    assert ("CUDA_VISIBLE_DEVICES=0,1 torchrun --nproc_per_node=2 train_sisr.py --config configs/sisr_x2.json"
            in capsys.readouterr().err)
    monkeypatch.setenv("WORLD_SIZE", "2")  # already under a launcher: only the variable is set
    assert launcher_flags(["--gpu_id", "1,0"]) == [] and len(started) == 1
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1,0" and "recommended launcher is torchrun" in capsys.readouterr().err


@pytest.mark.parametrize("gpus, text, message", [
    (0, "0", "--gpu_id 0: no CUDA device is available; drop --gpu_id to train on the CPU"),
    (2, "012", "--gpu_id 012: only 2 of the GPUs 0,1,2 exist"),
    (2, "0a", "--gpu_id: expected GPU numbers such as 0123 or 0,1,2,3, got '0a'"),
    (2, "00", "--gpu_id: expected GPU numbers"),
])
def test_bad_gpu_id(monkeypatch, capsys, gpus, text, message):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert engine.main(SISR, ["--gpu_id", text]) == 1
    err = capsys.readouterr().err
    assert err.startswith("train_sisr.py: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["--opt", "sf=5"], "config key 'sf': must be one of 2, 3, 4, got 5"),
    (["--opt", "kernel_grid=yx"], "config key 'kernel_grid': must be one of 'ij', 'xy', got 'yx'"),
    (["--opt", "downsampler=nearest"], "config key 'downsampler': must be one of 'bicubic', 'direct'"),
    (["--opt", "penalty_K=[0.02,x]"], "config key 'penalty_K': expected a list of numbers"),
    (["--opt", "train_dirs=[]"], "config key 'train_dirs': no training image folder given"),
    (["--opt", "scale_range=[0.5,0.6,0.7]"], "config key 'scale_range': expected [low, high]"),
    (["--opt", "scale_range=[0,1]"], "config key 'scale_range': must be >= 0.05"),
    (["--opt", "noise_level=[15,0.01]"], "config key 'noise_level': expected [low, high] with 0 <= low <= high, "
                                         "got [15.0, 0.01]"),
    (["--opt", "noise_jpeg=[5]"], "config key 'noise_jpeg': expected [low, high] with 0 <= low <= high, got [5.0]"),
    (["--opt", "hr_size=400"], "config key 'train_dirs': "),  # CBSD432 images are 481 x 321
    (["--opt", "val_dir=/no/such/val"], "config key 'val_dir': folder not found: /no/such/val"),
])
def test_bad_input_gives_one_clear_line(tmp_path, capsys, args, message):
    argv = ["--config", SMALL, "--device", "cpu", "--save_dir", str(tmp_path / "run"), *opts(TINY), *args]
    assert engine.main(SISR, argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("train_sisr.py: error: ") and message in err and err.count("\n") == 1


def test_script_accepts_local_rank_and_exits_without_traceback(root, tmp_path):
    cmd = [sys.executable, str(root / "train_sisr.py"), "--local-rank=0", "--config", SMALL, "--opt", "eps2=tiny"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=sub_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "train_sisr.py: error: config key 'eps2': expected a number, got 'tiny' (str)"


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_small_config_learns_on_cpu(tmp_path):
    cfg = tiny_config(f"save_dir={tmp_path}", "hr_size=48", "iters_per_epoch=8", "lr=1e-3", "image_freq=16")
    result = engine.train(SISR, cfg, device="cpu")
    first, last = result.history[0], result.history[-1]
    assert last["train/loss"] < 0.8 * first["train/loss"], result.history
    assert np.isfinite(last["val/set14/psnr"]) and 0 < last["val/set14/ssim"] < 1
    net = build_model("sisr", **NET)
    load_checkpoint(net, tmp_path / "models" / "model_best.pth")
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


@pytest.mark.slow
def test_torchrun_ddp_matches_one_process(root, tmp_path):
    # The loss's Monte-Carlo draws come from the global torch RNG, seeded per rank, so one process
    # and two cannot draw the same numbers; these values make the draws negligible (variance
    # posteriors of relative std 1e-4, rho and z noise ~1e-6) so that the run checks the data
    # split and the gradient averaging. With ema_decay both export the moving average of the weights
    # (the plain weights: the synthetic trainer's DDP test).
    common = ["epochs=1", "iters_per_epoch=3", "val_freq=0", "kappa0=1e8", "r2=1e-12", "eps2=1e-10", "ema_decay=0.5"]
    engine.train(SISR, tiny_config(f"save_dir={tmp_path / 'one'}", *common), device="cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(root / "train_sisr.py"), "--config", SMALL, "--device", "cpu", "--save_dir", str(tmp_path / "two"),
           *opts(TINY + common)]
    proc = subprocess.run(cmd, cwd=root, env=sub_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 process(es), global batch 4 (2 per process)" in proc.stdout
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    seed_everything(1234)
    start = build_model("sisr", **NET).state_dict()
    assert max((one[k] - start[k]).abs().max().item() for k in one) > 1e-4  # the steps moved the weights
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    ema = load_training_state(tmp_path / "two" / "checkpoints" / "latest.pth")["ema"]
    assert all(torch.equal(two[k], ema[f"module.{k}"]) for k in two)
