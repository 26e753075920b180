"""The shared training engine (utils/training/, config.py, seeding.py, augment.py) on a toy task: config checks, schedule, sampler, clipping, NaN handling,
checkpoints and exact in-process resume."""
import json
import math
import random
import re

import numpy as np
import pytest
import torch
from torch import nn

from networks import CheckpointError, load_checkpoint
from utils import devices
from utils import training as engine
from utils.augment import augment, augment_tensor, inverse_augment, inverse_augment_tensor
from utils.config import (REQUIRED, ConfigError, Key, build_config, check_pair, describe_schema, load_config,
                          parse_overrides, read_config_file)
from utils.training.distributed import ResumableSampler
from utils.training.loop import autocast_choice, clip_groups
from utils.training.optim import build_scheduler, lr_at_epoch
from utils.training.state import export_model, load_training_state, save_training_state, weight_average
from utils.seeding import get_rng_state, sample_rng, seed_everything, set_rng_state
from helpers import LinearData, weights



# --------------------------------------------------------------------------- toy task


ToyData = LinearData  # y = 2x + 1 on 1 x 4 x 4 tensors


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.RNet = nn.Conv2d(1, 1, 1)
        self.SNet = nn.Conv2d(1, 1, 1)
        self.head = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.RNet(x) + 0 * self.SNet(x) + self.head

    def parts(self):
        return {"R": self.RNet, "S": self.SNet}


class ToyTask(engine.Task):
    keys = {"clip_grad_R": Key("float", 1e3), "clip_grad_S": Key("float", 1e2),
            "nan_at": Key("ints", [], "global iterations (1-based) whose loss is NaN"),
            "crash_at": Key("int", 0, "global iteration (1-based) that raises, 0: none")}

    def build_model(self):
        return ToyNet()

    def build_train_set(self, length):
        return ToyData(length, self.cfg.seed)

    def build_val_sets(self):
        data = ToyData(6, seed=99)
        return [engine.ValSet("toy", data, batch_size=4)]

    def train_step(self, model, batch, ctx):
        x, y = batch
        if ctx.iteration + 1 == self.cfg.crash_at:
            raise RuntimeError("simulated crash")
        with ctx.autocast():
            pred = model(x)
        loss = ((pred.float() - y) ** 2).mean()
        if ctx.iteration + 1 in self.cfg.nan_at:
            loss = loss * float("nan")
        # a little global-RNG use, as MixUp or reparameterisation would do
        loss = loss + 0 * torch.rand(())
        return engine.StepOutput(loss, {"mse": loss.detach()}, lambda: {"x": x, "pred": pred})

    def val_step(self, model, batch, ctx):
        x, y = batch
        mse = ((model(x) - y) ** 2).mean().item()
        return engine.ValOutput({"psnr": -10 * math.log10(mse), "ssim": 0.0}, lambda: {"x": x})


def toy_config(tmp_path, **values):
    base = dict(epochs=3, iters_per_epoch=5, batch_size=4, lr=0.05, lr_min=1e-3, warmup_epochs=1,
                num_workers=0, print_freq=2, image_freq=3, save_freq=2, save_dir=str(tmp_path / "run"))
    return build_config(ToyTask.schema(), {**base, **values}, source="toy")


# --------------------------------------------------------------------------- config


def test_config_reads_comments_and_old_boolean_strings(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{\n  # a comment\n  "epochs": 2, "lr": 1e-4,  # trailing\n'
                    '  "bf16": "True", "deterministic": "false", "clip_grad_R": 5e2\n}\n')
    cfg = load_config(path, ToyTask.schema())
    assert cfg.bf16 is True and cfg.deterministic is False
    assert cfg.lr == 1e-4 and cfg.clip_grad_R == 500.0 and isinstance(cfg.clip_grad_R, float)
    assert cfg.batch_size == 16 and cfg.nan_at == []


@pytest.mark.parametrize("text, message", [
    ('{"epochs": 2, "lr": 1e-4, "lrr": 3}', "unknown config key(s) 'lrr'"),
    ('{"epochs": "two", "lr": 1e-4}', "config key 'epochs': expected an integer, got 'two' (str)"),
    ('{"epochs": 2.5, "lr": 1e-4}', "config key 'epochs': expected an integer, got 2.5"),
    ('{"epochs": 2, "lr": true}', "config key 'lr': expected a number, got True (bool)"),
    ('{"epochs": 2, "lr": 1e-4, "bf16": "yes"}', "config key 'bf16': expected true, false or auto"),
    ('{"epochs": 0, "lr": 1e-4}', "config key 'epochs': must be >= 1"),
    ('{"lr": 1e-4}', "required config key 'epochs' is missing"),
    ('{"epochs": 2, "epochs": 3, "lr": 1e-4}', "key 'epochs' appears twice"),
    ('{"epochs": 2 "lr": 1e-4', "line 1"),
    ('[1, 2]', "the top level must be an object"),
])
def test_config_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, ToyTask.schema())
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_config_paths_and_overrides(tmp_path, shared, monkeypatch):
    schema = {"dirs": Key("dirs", REQUIRED), "one": Key("dir", None), "n": Key("ints", [1])}
    monkeypatch.chdir(tmp_path)  # "../shared/..." then only resolves against the repository root
    cfg = build_config(schema, {"dirs": ["../shared/testsets/CBSD68"]},
                       parse_overrides(["n=4,5", "one=" + str(shared / "testsets")]))
    assert cfg.dirs == [shared.resolve() / "testsets" / "CBSD68"]
    assert cfg.one == shared.resolve() / "testsets" and cfg.n == [4, 5]
    with pytest.raises(ConfigError, match="config key 'dirs': folder not found: nowhere"):
        build_config(schema, {"dirs": "nowhere"})
    with pytest.raises(ConfigError, match="--opt: unknown config key"):
        build_config(schema, {"dirs": []}, {"typo": 1})
    with pytest.raises(ConfigError, match="--opt expects key=value"):
        parse_overrides(["lr"])
    assert parse_overrides(["a=[1, 2]", "b=true", "c=Input", "d=2e-4"]) == {
        "a": [1, 2], "b": True, "c": "Input", "d": 2e-4}
    with pytest.raises(ConfigError, match="config file not found"):
        read_config_file(tmp_path / "missing.json")


def test_choices_are_case_insensitive():
    schema = {"mode": Key("str", "Input", choices=("Null", "Input"))}
    assert build_config(schema, {"mode": "input"}).mode == "Input"
    with pytest.raises(ConfigError, match="must be one of 'Null', 'Input', got 'Up'"):
        build_config(schema, {"mode": "Up"})


def test_pair_keys_are_ordered_ranges():
    schema = {"noise": Key("floats", [0.01, 15], minimum=0, pair=True),
              "quality": Key("ints", [], minimum=1, maximum=100, pair=True)}
    cfg = build_config(schema, {"noise": [5, 5], "quality": [80, 95]})
    assert cfg.noise == [5.0, 5.0] and cfg.quality == [80, 95]
    assert build_config(schema, {}).quality == []  # the default [] means "off"
    for values, message in (({"noise": [15, 0.01]}, "'noise': expected [low, high] with 0 <= low <= high, "
                                                     "got [15.0, 0.01]"),
                            ({"noise": [1, 2, 3]}, "'noise': expected [low, high]"),
                            ({"noise": []}, "'noise': expected [low, high]"),
                            ({"quality": [95, 80]}, "'quality': expected [low, high] with 1 <= low <= high <= 100"),
                            ({"quality": [80, 120]}, "'quality': must be <= 100, got 120")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_config(schema, values)
    assert "noise (float range, default [0.01, 15])" in describe_schema(schema)
    with pytest.raises(ValueError, match="pair applies to kinds 'ints' and 'floats'"):
        Key("str", "a", pair=True)


@pytest.mark.parametrize("bounds", [(0.5,), (0.9, 0.6), (0.01, 1), (0.5, 1.5), ("0.5", 1), (True, 1), 0.5,
                                    (float("nan"), 1), (0.5, float("inf"))])
def test_check_pair_refuses_bad_ranges(bounds):
    with pytest.raises(ValueError, match=re.escape("scale: expected [low, high] with 0.05 <= low <= high <= 1")):
        check_pair("scale", bounds, 0.05, 1)


def test_check_pair_returns_the_bounds():
    assert check_pair("x", [2, 3]) == (2, 3) and check_pair("x", (0.05, 0.05), 0.05, 1) == (0.05, 0.05)
    assert check_pair("quality", np.array([80, 95]).tolist()) == (80, 95)
    assert check_pair("quality", (np.int64(80), np.float32(95.0)), 1, 100) == (80, 95)
    with pytest.raises(ValueError, match="noise: expected"):
        check_pair("noise", (0, float("inf")), minimum=0)  # no maximum, but still finite


# --------------------------------------------------------------------------- building blocks


def test_lr_schedule_matches_reference():
    lrs = [lr_at_epoch(e, 1e-4, 1e-6, 5, 120) for e in range(120)]
    assert lrs[:5] == pytest.approx([2e-5, 4e-5, 6e-5, 8e-5, 1e-4])
    assert lrs[5] == pytest.approx(1e-4)
    t = 115
    assert lrs[119] == pytest.approx(1e-6 + (1e-4 - 1e-6) * (1 + math.cos(math.pi * (t - 1) / t)) / 2)
    assert lr_at_epoch(0, 2e-4, 1e-6, 0, 120) == pytest.approx(2e-4)  # SISR: no warm-up
    cfg = build_config(ToyTask.schema(), dict(epochs=120, lr=1e-4, lr_min=1e-6, warmup_epochs=5))
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(120):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(lrs, rel=1e-9)


def test_sampler_resume_and_shards():
    data = list(range(40))
    full = ResumableSampler(data, 1, 0, seed=5)
    full.set_epoch(3)
    order = list(full)
    assert sorted(order) == data
    full.set_start(12)
    assert list(full) == order[12:] and len(full) == 28
    shards = [ResumableSampler(data, 2, r, seed=5) for r in range(2)]
    for s in shards:
        s.set_epoch(3)
    parts = [list(s) for s in shards]
    for step in range(5):  # global batch 8 = 2 processes x 4
        together = parts[0][4 * step:4 * step + 4] + parts[1][4 * step:4 * step + 4]
        assert sorted(together) == sorted(order[8 * step:8 * step + 8])


def test_clip_groups_follow_subnetwork_names():
    net = ToyNet()
    groups = clip_groups(net, {"clip_grad_R": 10.0, "clip_grad_S": 1.0})
    assert set(groups) == {"R", "S", "other"}
    assert groups["R"][1] == 10.0 and groups["other"][1] == math.inf
    assert {id(p) for p in groups["R"][0]} == {id(p) for p in net.RNet.parameters()}


def test_rng_state_roundtrip_through_a_checkpoint(tmp_path):
    seed_everything(3)
    state = get_rng_state()
    save_training_state({"optimizer": {}, "rng": [state]}, tmp_path / "s.pth")
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    set_rng_state(load_training_state(tmp_path / "s.pth")["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected
    a, b = sample_rng(1, 2, 3).random(4), sample_rng(1, 2, 3).random(4)
    assert np.array_equal(a, b) and not np.array_equal(a, sample_rng(1, 3, 3).random(4))


def test_export_is_the_released_format(tmp_path):
    net = ToyNet()
    path = export_model(net, tmp_path / "m" / "model.pth")
    assert set(torch.load(path, weights_only=True)) == {"model_state_dict", "sha256"}  # + its checksum
    other = ToyNet()
    load_checkpoint(other, path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_training_state(path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_training_state(tmp_path / "junk.pth")


@pytest.mark.parametrize("mode", range(8))
def test_augment_modes_and_inverses(mode):
    image = np.arange(3 * 5 * 2).reshape(3, 5, 2)
    expected = np.rot90(image, k=mode // 2)
    if mode % 2:
        expected = np.flipud(expected)
    out = augment(image, mode)
    assert np.array_equal(out, expected) and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(inverse_augment(out, mode), image)
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    t_out = augment_tensor(tensor, mode)
    assert np.array_equal(t_out.numpy().transpose(1, 2, 0), out)
    assert torch.equal(inverse_augment_tensor(t_out, mode), tensor)


def test_augment_rejects_bad_mode():
    with pytest.raises(ValueError, match="0..7"):
        augment(np.zeros((2, 2)), 8)


# --------------------------------------------------------------------------- runs


def test_toy_run_trains_logs_and_exports(tmp_path):
    cfg = toy_config(tmp_path)
    result = engine.train(ToyTask, cfg, device="cpu")
    run = tmp_path / "run"
    losses = [h["train/loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert result.iteration == 15 and result.best == max(h["val/toy/psnr"] for h in result.history)
    for name in ("checkpoints/latest.pth", "checkpoints/best.pth", "models/model_last.pth",
                 "models/model_best.pth", "train.log", "config.json"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    state = load_training_state(run / "checkpoints" / "latest.pth")
    assert (state["epoch"], state["iter_in_epoch"], state["iteration"]) == (3, 0, 15)
    assert "optimizer" in state and len(state["rng"]) == 1
    with pytest.raises(ConfigError, match="already holds a run"):
        engine.train(ToyTask, cfg, device="cpu")


def test_auto_bool_keys_read_auto():
    schema = {"bf16": Key("auto_bool", False)}
    assert [build_config(schema, {"bf16": v}).bf16 for v in ("auto", "AUTO", True, "false")] == ["auto", "auto",
                                                                                                True, False]
    with pytest.raises(ValueError, match="unknown key kind"):
        Key("tristate", False)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_auto_follows_the_device_probe(monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_bf16", lambda: (native, "probed"))
    cpu = torch.device("cpu")
    assert autocast_choice("auto", cpu) == (native, "bf16=auto: probed")
    assert autocast_choice(False, cpu) == (False, "bf16=false")
    bf16, why = autocast_choice(True, cpu)  # asked for: honoured, and said to be slow where it is emulated
    assert bf16 and ("slow here" in why) != native
    assert autocast_choice("auto", torch.device("mps")) == (False, "bf16=auto: mps runs fp32")


@pytest.mark.parametrize("native", [True, False])
def test_toy_run_with_bf16_auto_logs_and_uses_the_choice(tmp_path, monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_bf16", lambda: (native, "probed"))
    seen = []

    class Recording(ToyTask):
        def train_step(self, model, batch, ctx):
            seen.append(ctx.bf16)
            return super().train_step(model, batch, ctx)

    engine.train(Recording, toy_config(tmp_path, epochs=1, bf16="auto"), device="cpu")
    assert set(seen) == {native}
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"precision: {'bf16 autocast' if native else 'fp32'} (bf16=auto: probed)" in log
    assert json.loads((tmp_path / "run" / "config.json").read_text())["bf16"] == "auto"


def test_toy_resume_is_exact(tmp_path):
    """A run that dies mid-epoch and is resumed ends with the same weights, bit for bit."""
    full = engine.train(ToyTask, toy_config(tmp_path / "a"), device="cpu")
    cfg = toy_config(tmp_path / "b", crash_at=8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.train(ToyTask, cfg, device="cpu")
    ckpt = load_training_state(tmp_path / "b" / "run" / "checkpoints" / "latest.pth")
    assert (ckpt["epoch"], ckpt["iter_in_epoch"], ckpt["iteration"]) == (1, 1, 6)
    resumed = engine.train(ToyTask, cfg.replace(crash_at=0, resume="auto"), device="cpu")
    assert resumed.iteration == full.iteration
    a, b = weights(tmp_path / "a" / "run"), weights(tmp_path / "b" / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train/loss"] for h in resumed.history] == [h["train/loss"] for h in full.history]


def test_nan_steps_are_skipped_then_stop(tmp_path):
    result = engine.train(ToyTask, toy_config(tmp_path / "a", nan_at=[2, 3]), device="cpu")
    assert result.iteration == 15 and math.isfinite(result.history[-1]["train/loss"])
    cfg = toy_config(tmp_path / "b", nan_at=[4, 5, 6], max_bad_steps=3)
    with pytest.raises(engine.TrainingError, match="NaN/inf loss or gradients for 3 steps in a row"):
        engine.train(ToyTask, cfg, device="cpu")


def test_one_line_drops_worker_traceback_prefix():
    from utils.errors import one_line
    wrapped = RuntimeError("Caught ConfigError in DataLoader worker process 0.\nTraceback (most recent call last):\n"
                           "  File \"x.py\", line 1, in f\nutils.config.ConfigError: image a.png is smaller than 128\n")
    assert one_line(wrapped) == "image a.png is smaller than 128"
    assert one_line(ValueError("plain message")) == "plain message"
    assert one_line(ValueError("")) == "ValueError"


def test_init_weights_start_a_fresh_run_and_not_a_resumed_one(tmp_path):
    """init_weights: a fresh run starts from the file's weights (fine-tuning); a resumed run keeps its
    checkpoint's weights whatever the key says; a file of another architecture is refused."""
    engine.train(ToyTask, toy_config(tmp_path / "a"), device="cpu")
    trained = weights(tmp_path / "a" / "run")
    source = tmp_path / "a" / "run" / "models" / "model_last.pth"
    still = dict(epochs=1, lr=1e-9, lr_min=1e-9, warmup_epochs=0)  # Adam moves each weight by about lr
    engine.train(ToyTask, toy_config(tmp_path / "b", init_weights=str(source), **still), device="cpu")
    engine.train(ToyTask, toy_config(tmp_path / "c", **still), device="cpu")
    started, scratch = weights(tmp_path / "b" / "run"), weights(tmp_path / "c" / "run")
    assert all(torch.allclose(started[k], trained[k], atol=1e-6) for k in trained)
    assert not all(torch.allclose(scratch[k], trained[k], atol=1e-2) for k in trained)

    full = engine.train(ToyTask, toy_config(tmp_path / "d", init_weights=str(source)), device="cpu")
    cfg = toy_config(tmp_path / "e", init_weights=str(source), crash_at=8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.train(ToyTask, cfg, device="cpu")
    other = tmp_path / "other.pth"
    torch.save({"model_state_dict": ToyNet().state_dict()}, other)
    resumed = engine.train(ToyTask, cfg.replace(crash_at=0, resume="auto", init_weights=str(other)), device="cpu")
    assert resumed.iteration == full.iteration
    a, b = weights(tmp_path / "d" / "run"), weights(tmp_path / "e" / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)

    wrong = tmp_path / "wrong.pth"
    torch.save({"model_state_dict": {"RNet.weight": torch.zeros(2, 1, 1, 1)}}, wrong)
    with pytest.raises(CheckpointError, match=r"wrong\.pth does not fit the model"):
        engine.train(ToyTask, toy_config(tmp_path / "f", init_weights=str(wrong)), device="cpu")
    assert not (tmp_path / "f").exists()  # refused before the run folder is made
    with pytest.raises(ConfigError, match="config key 'init_weights': file not found"):
        toy_config(tmp_path / "g", init_weights=str(tmp_path / "none.pth"))


def test_weight_average_is_an_exponential_moving_average():
    net = nn.Linear(1, 1, bias=False)
    average = weight_average(net, 0.9)
    for value in (1.0, 3.0, -2.0):
        net.weight.data.fill_(value)
        average.update_parameters(net)
    # the first update copies (1), then 0.9 * avg + 0.1 * param: 1.2, then 0.88
    assert average.module.weight.item() == pytest.approx(0.9 * (0.9 * 1 + 0.1 * 3) + 0.1 * -2)
    assert not average.module.weight.requires_grad


def test_ema_decay_averages_exports_and_resumes_exactly(tmp_path):
    """ema_decay leaves the training itself alone, validates and exports the average, and an
    interrupted run resumes to the same average bit for bit."""
    plain_run = engine.train(ToyTask, toy_config(tmp_path / "a"), device="cpu")
    ema_run = engine.train(ToyTask, toy_config(tmp_path / "b", ema_decay=0.8), device="cpu")
    trained = load_training_state(tmp_path / "b" / "run" / "checkpoints" / "latest.pth")
    raw = load_training_state(tmp_path / "a" / "run" / "checkpoints" / "latest.pth")["model"]
    assert all(torch.equal(trained["model"][k], raw[k]) for k in raw)  # the average does not feed back
    averaged, exported = trained["ema"], weights(tmp_path / "b" / "run")
    assert int(averaged["n_averaged"]) == 15
    assert all(torch.equal(exported[k], averaged[f"module.{k}"]) for k in exported)
    assert not torch.equal(exported["RNet.weight"], raw["RNet.weight"])
    assert ([h["train/loss"] for h in ema_run.history] == [h["train/loss"] for h in plain_run.history]
            and ema_run.history[-1]["val/toy/psnr"] != plain_run.history[-1]["val/toy/psnr"])

    cfg = toy_config(tmp_path / "c", ema_decay=0.8, crash_at=8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.train(ToyTask, cfg, device="cpu")
    engine.train(ToyTask, cfg.replace(crash_at=0, resume="auto"), device="cpu")
    resumed = weights(tmp_path / "c" / "run")
    assert all(torch.equal(resumed[k], exported[k]) for k in exported)

    # turned on at resume: the average starts from the resumed weights
    cfg = toy_config(tmp_path / "d", crash_at=8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.train(ToyTask, cfg, device="cpu")
    engine.train(ToyTask, cfg.replace(crash_at=0, resume="auto", ema_decay=0.8), device="cpu")
    late = load_training_state(tmp_path / "d" / "run" / "checkpoints" / "latest.pth")["ema"]
    assert int(late["n_averaged"]) == 15 - 6

    with pytest.raises(ConfigError, match="config key 'ema_decay': must be <= 0.9999, got 1"):
        toy_config(tmp_path / "e", ema_decay=1.0)
