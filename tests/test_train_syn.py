"""Synthetic denoising training: data sets, configs and command line of train_denoising_syn.py,
and end-to-end runs (learning, SIGKILL + resume, torchrun DDP)."""
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datasets.denoising_syn import (SyntheticDenoisingTrain, SyntheticDenoisingVal, sigma_map_iid,
                                    sigma_map_niid)
from datasets.noise_maps import peaks
from networks import build_model, load_checkpoint
from train_denoising_syn import DenoisingSyn
from utils import training as engine
from utils.training.state import load_training_state
from utils.config import ConfigError, load_config
from utils.training.distributed import ResumableSampler
from utils.image_io import list_images, write_image
from utils.seeding import seed_everything
from helpers import sub_env, weights

SMALL = "configs/denoising_syn_small.json"
TINY = ["batch_size=4", "patch_size=24", "n_feat=[8,16]", "dep_S=3", "n_resblocks=1",
        "iters_per_epoch=8", "epochs=3", "save_freq=3", "print_freq=4", "image_freq=0",
        "val_max_images=1", "val_images=0", "num_workers=0"]



@pytest.fixture(scope="module")
def train_images(shared):
    return list_images(shared / "trainsets" / "CBSD432-sample")


def script(root, *args):
    return [sys.executable, str(root / "train_denoising_syn.py"), "--config", SMALL, "--device", "cpu",
            *[a for opt in TINY for a in ("--opt", opt)], *args]


def tiny_config(save_dir, *extra):
    return load_config(SMALL, DenoisingSyn.schema(), TINY + [f"save_dir={save_dir}", *extra])


# --------------------------------------------------------------------------- data


def test_training_samples(train_images):
    data = SyntheticDenoisingTrain(train_images, length=64, patch_size=40, seed=7)
    noisy, clean, variance = data[3]
    assert noisy.shape == clean.shape == (3, 40, 40) and variance.shape == (1, 40, 40)
    assert all(t.dtype == torch.float32 for t in (noisy, clean, variance))
    assert 0 <= clean.min() and clean.max() <= 1
    assert variance.min() >= 1e-10 and variance.max() <= (80 / 255) ** 2 * (1 + 1e-6)
    assert (noisy < 0).any() or (noisy > 1).any()  # not clipped
    again = data[3]
    assert all(torch.equal(a, b) for a, b in zip(again, (noisy, clean, variance)))
    data.set_epoch(1)
    assert not torch.equal(data[3][1], clean)


def test_noise_is_gaussian_with_the_generated_std(train_images):
    data = SyntheticDenoisingTrain(train_images, length=200, patch_size=32, seed=1)
    z, peaks_, ranges = [], [], []
    for i in range(200):
        noisy, clean, variance = data[i]
        sigma = variance.sqrt()
        z.append(((noisy - clean) / sigma).flatten())
        peaks_.append(sigma.max().item())
        ranges.append(sigma.max().item() - sigma.min().item())
    z = torch.cat(z)
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    assert min(peaks_) >= 5 / 255 - 1e-6 and max(peaks_) <= 80 / 255 + 1e-6
    assert min(ranges) > 0  # non-i.i.d.: the map is never flat


def test_sigma_maps_follow_the_reference_recipe():
    """Gaussian bump centred at (row, column) draws, min-max scaled to [down, up + 5/255]."""
    size = 64
    sigma = sigma_map_niid(size, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    c_row, c_col, width = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 4, 3 * size / 4)
    a, b = rng.uniform(0, 75 / 255), rng.uniform(0, 75 / 255)
    down, up = min(a, b), max(a, b) + 5 / 255
    rows, cols = np.mgrid[0:size, 0:size]
    bump = np.exp(-((rows - c_row) ** 2 + (cols - c_col) ** 2) / (2 * width ** 2))
    expected = down + (bump - bump.min()) / (bump.max() - bump.min()) * (up - down)
    assert sigma.shape == (size, size, 1) and sigma.dtype == np.float32
    np.testing.assert_allclose(sigma[:, :, 0], expected, rtol=1e-6, atol=1e-8)
    flat = sigma_map_iid(8, np.random.default_rng(0))
    assert flat.min() == flat.max() == np.float32(np.random.default_rng(0).uniform(0, 75 / 255))


def test_mixed_noise_draws_both_kinds_in_the_configured_share(train_images):
    data = SyntheticDenoisingTrain(train_images, length=400, patch_size=16, seed=2, noise_type="mix",
                                   iid_fraction=0.3)
    flat = [bool(v.max() == v.min()) for _, _, v in (data[i] for i in range(400))]
    assert 0.22 < np.mean(flat) < 0.38  # 120 expected i.i.d. maps; binomial sd 9
    only_iid = SyntheticDenoisingTrain(train_images, length=20, patch_size=16, noise_type="mix", iid_fraction=1)
    assert all(v.max() == v.min() for _, _, v in (only_iid[i] for i in range(20)))
    with pytest.raises(ValueError, match="iid_fraction"):
        SyntheticDenoisingTrain(train_images, length=1, noise_type="mix", iid_fraction=1.5)


def test_iid_fraction_is_bounded_in_the_config(tmp_path):
    with pytest.raises(ConfigError, match="'iid_fraction': must be <= 1"):
        tiny_config(tmp_path, "iid_fraction=2")


def test_small_images_are_resized_before_cropping(tmp_path):
    write_image(tmp_path / "small.png", np.full((20, 50, 3), 128, np.uint8))
    noisy, clean, _ = SyntheticDenoisingTrain([tmp_path / "small.png"], 4, patch_size=32)[0]
    assert clean.shape == (3, 32, 32) and torch.allclose(clean, torch.full_like(clean, 128 / 255))


def test_samples_do_not_depend_on_workers(train_images):
    data = SyntheticDenoisingTrain(train_images, length=12, patch_size=24, seed=3)
    data.set_epoch(2)
    sampler = ResumableSampler(data, 1, 0, seed=3)
    runs = [torch.cat([t.flatten() for batch in DataLoader(data, batch_size=4, sampler=sampler, num_workers=w)
                       for t in batch]) for w in (0, 2)]
    assert runs[0].numel() == 12 * 7 * 24 * 24 and torch.equal(runs[0], runs[1])


def test_validation_set_has_the_reference_fixed_noise(shared):
    paths = list_images(shared / "testsets" / "CBSD68")[:3]
    data = SyntheticDenoisingVal(paths)
    images = [cv2.imread(str(p))[:, :, ::-1] for p in paths]
    h_max, w_max = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    noise = np.random.default_rng(1000).standard_normal([h_max, w_max, 3], dtype=np.float32)
    level = peaks(256)
    level = (10 / 255 + (level - level.min()) / (level.max() - level.min()) * (65 / 255)).astype(np.float32)
    for k, image in enumerate(images):
        gt = image.astype(np.float32) * np.float32(1 / 255)
        h, w = gt.shape[:2]
        sigma = cv2.resize(level, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
        noisy, clean = data[k]
        assert torch.equal(clean, torch.from_numpy(gt.transpose(2, 0, 1).copy()))
        expected = gt + noise[:h, :w] * sigma[:, :, None]
        assert torch.equal(noisy, torch.from_numpy(expected.transpose(2, 0, 1).copy()))


# --------------------------------------------------------------------------- configs and CLI


def test_shipped_configs_load(root):
    full = load_config(root / "configs" / "denoising_syn.json", DenoisingSyn.schema())
    assert (full.batch_size, full.patch_size, full.epochs, full.warmup_epochs) == (16, 128, 120, 5)
    assert (full.lr, full.lr_min, full.n_feat, full.dep_S, full.n_resblocks) == (1e-4, 1e-6, [96, 192, 288], 5, 3)
    assert (full.clip_grad_R, full.clip_grad_S, full.var_window, full.eps2) == (1e3, 1e2, 7, 1e-6)
    assert full.noise_cond is True and full.extra_mode == "Input" and full.iters_per_epoch == 10000
    assert load_config(root / SMALL, DenoisingSyn.schema()).n_feat == [16, 32]


def test_reference_style_config_is_accepted(tmp_path, shared):
    text = ('{\n "batch_size": 16, "epochs": 120, "lr": 1e-4, "port": 1234,   # distributed port\n'
            ' "net_type": "AttResUNet", "noise_cond": "True", "extra_mode": "Input",\n'
            f' "CBSD_path": "{shared / "trainsets" / "CBSD432-sample"}", "resume": ""\n}}\n')
    (tmp_path / "ref.json").write_text(text)
    cfg = load_config(tmp_path / "ref.json", DenoisingSyn.schema())
    assert cfg.noise_cond is True and cfg.train_dirs == []
    assert len(DenoisingSyn(cfg).build_train_set(32).image_paths) == 108
    (tmp_path / "ref.json").write_text(text.replace(str(shared / "trainsets"), "/mnt/sfs-common/x"))
    with pytest.raises(ConfigError, match="config key 'CBSD_path': folder not found: /mnt/sfs-common/x/"):
        load_config(tmp_path / "ref.json", DenoisingSyn.schema())


@pytest.mark.parametrize("args, message", [
    (["--opt", "lr=fast"], "config key 'lr': expected a number, got 'fast' (str)"),
    (["--opt", "noise_cond=maybe"], "config key 'noise_cond': expected true or false"),
    (["--opt", "n_feat=[16,x]"], "config key 'n_feat': expected a list of numbers, got '[16,x]'"),
    (["--opt", "learning_rate=1"], "--opt: unknown config key(s) 'learning_rate'"),
    (["--opt", "train_dirs=no/such/folder"], "config key 'train_dirs': folder not found: no/such/folder"),
    (["--opt", "val_dir=/no/such/val"], "config key 'val_dir': folder not found: /no/such/val"),
    (["--opt", "extra_mode=Top"], "config key 'extra_mode': must be one of"),
    (["--opt", "batch_size=0"], "config key 'batch_size': must be >= 1"),
    (["--opt", "scale_range=[0.9,0.6]"], "config key 'scale_range': expected [low, high] with 0.05 <= low <= high <= 1"),
    (["--opt", "scale_range=[0.5,1.5]"], "config key 'scale_range': must be <= 1"),
    (["--config", "configs/none.json"], "config file not found: configs/none.json"),
    (["--resume", "/no/such/ckpt.pth"], "--resume: checkpoint not found: /no/such/ckpt.pth"),
    (["--device", "tpu"], "--device: unknown device 'tpu'"),
])
def test_bad_input_gives_one_clear_line(tmp_path, capsys, args, message):
    argv = ["--config", SMALL, "--save_dir", str(tmp_path / "run"), *args]
    assert engine.main(DenoisingSyn, argv, prog="train_denoising_syn.py") == 1
    err = capsys.readouterr().err
    assert err.startswith("train_denoising_syn.py: error: ") and message in err
    assert err.count("\n") == 1


def test_empty_image_folder_is_reported(tmp_path, capsys):
    argv = ["--config", SMALL, "--save_dir", str(tmp_path / "run"), "--opt", f"train_dirs={tmp_path}"]
    assert engine.main(DenoisingSyn, argv) == 1
    assert "config key 'train_dirs': no images in" in capsys.readouterr().err


def test_script_exits_without_traceback(root, tmp_path):
    proc = subprocess.run(script(root, "--save_dir", str(tmp_path), "--opt", "eps2=tiny"), cwd=tmp_path,
                          env=sub_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("train_denoising_syn.py: error: config key 'eps2': expected a number, "
                                   "got 'tiny' (str)")


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_small_config_learns_on_cpu(tmp_path):
    cfg = load_config(SMALL, DenoisingSyn.schema(), [f"save_dir={tmp_path}", "epochs=2", "iters_per_epoch=20",
                                                      "val_max_images=1", "print_freq=20", "image_freq=40"])
    result = engine.train(DenoisingSyn, cfg, device="cpu")
    first, last = result.history[0], result.history[-1]
    assert last["train/loss"] < 0.7 * first["train/loss"], result.history
    assert last["val/cbsd68/psnr"] > first["val/cbsd68/psnr"], result.history
    net = build_model("denoising-syn", n_feat=[16, 32], dep_S=3, n_resblocks=1)
    load_checkpoint(net, tmp_path / "models" / "model_best.pth")
    assert "iter 20/20" in (tmp_path / "train.log").read_text()


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_exact(root, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    shape = ["epochs=2", "iters_per_epoch=12"]  # checkpoints at iterations 3, 6, 9 (mid-epoch), 12 (end), ...
    engine.train(DenoisingSyn, tiny_config(whole, *shape), device="cpu")  # same arithmetic as the script
    latest = killed / "checkpoints" / "latest.pth"
    args = ["--save_dir", str(killed), *[a for o in shape for a in ("--opt", o)]]
    proc = subprocess.Popen(script(root, *args), cwd=root, env=sub_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    state = load_training_state(latest)
    assert 0 < state["iter_in_epoch"] < 12 and state["iteration"] < 24  # mid-epoch, mid-run
    subprocess.run(script(root, *args, "--resume", "auto"), cwd=root, env=sub_env(), check=True,
                   capture_output=True, timeout=300)
    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ends = [load_training_state(d / "checkpoints" / "latest.pth") for d in (whole, killed)]
    assert ends[0]["optimizer"]["state"][0]["exp_avg"].equal(ends[1]["optimizer"]["state"][0]["exp_avg"])
    strip = [[{k: v for k, v in h.items() if k not in ("time_s", "it_per_s")} for h in e["history"]]
             for e in ends]
    assert strip[0] == strip[1]
    assert "resumed from" in (killed / "train.log").read_text()


@pytest.mark.slow
def test_torchrun_ddp_matches_one_process(root, tmp_path):
    common = ["iters_per_epoch=3", "epochs=1", "val_freq=0", "save_freq=0"]
    engine.train(DenoisingSyn, tiny_config(tmp_path / "one", *common), device="cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *script(root, "--save_dir", str(tmp_path / "two"), *[a for o in common for a in ("--opt", o)])[1:]]
    proc = subprocess.run(cmd, cwd=root, env=sub_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 process(es), global batch 4 (2 per process)" in proc.stdout
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    seed_everything(1234)
    start = build_model("denoising-syn", n_feat=[8, 16], dep_S=3, n_resblocks=1).state_dict()
    assert max((one[k] - start[k]).abs().max().item() for k in one) > 1e-4  # the steps moved the weights
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
