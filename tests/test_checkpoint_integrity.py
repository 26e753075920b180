"""Checkpoints and exports carry a checksum of their contents, checked where they are loaded.

A real small checkpoint with 200 bytes changed in the middle of a tensor's data still loads with
``torch.load`` (the damage is silent there), and is refused in one line on ``--resume`` (latest.pth
or best.pth) and as ``init_weights`` (an export); a checkpoint written before checkpoints carried a
checksum resumes with one warning line; weights stored as integers are refused, naming the entry.
"""
import math

import torch
from torch import nn

from test_engine import ToyData
from test_training_failures import one_line, toy_argv
from utils import training as engine
from utils.training.state import CHECKSUM_KEY, content_digest, load_training_state


class WideNet(nn.Module):
    """Two 3 x 3 convolutions whose weights span more than a kilobyte each."""

    def __init__(self):
        super().__init__()
        self.RNet = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 3, padding=1))

    def forward(self, x):
        return self.RNet(x)


class Wide(engine.Task):
    """y = 2x + 1 learnt by ``WideNet``."""

    description = "checkpoint integrity toy"

    def build_model(self):
        return WideNet()

    def build_train_set(self, length):
        return ToyData(length, self.cfg.seed)

    def build_val_sets(self):
        return [engine.ValSet("toy", ToyData(4, seed=99), batch_size=4)]

    def train_step(self, model, batch, ctx):
        x, y = batch
        loss = ((model(x) - y) ** 2).mean()
        return engine.StepOutput(loss, {"mse": loss.detach()})

    def val_step(self, model, batch, ctx):
        x, y = batch
        return engine.ValOutput({"psnr": -10 * math.log10(((model(x) - y) ** 2).mean().item())})


def _run(tmp_path, run, *flags, opts=()):
    return engine.main(Wide, [*toy_argv(tmp_path, run, *opts), *flags], prog="wide")


def _damage(path, name):
    """Change 200 bytes in the middle of the data of tensor ``name`` of the model in ``path``."""
    ckpt = torch.load(path, weights_only=True)
    tensor = (ckpt["model"] if "model" in ckpt else ckpt["model_state_dict"])[name]
    raw, data = tensor.numpy().tobytes(), bytearray(path.read_bytes())
    start = data.find(raw)
    assert start > 0 and data.find(raw, start + 1) < 0 and len(raw) > 400
    middle = start + len(raw) // 2 - 100
    data[middle:middle + 200] = bytes(b ^ 0x5A for b in data[middle:middle + 200])
    path.write_bytes(bytes(data))
    damaged = torch.load(path, weights_only=True)  # torch reads it without a word
    inner = damaged["model"] if "model" in damaged else damaged["model_state_dict"]
    assert not torch.equal(inner[name], tensor)


def test_a_damaged_latest_is_refused_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(tmp_path, run, opts=["epochs=1"]) == 0
    latest = run / "checkpoints" / "latest.pth"
    before = load_training_state(latest)
    _damage(latest, "RNet.0.weight")
    capsys.readouterr()
    assert _run(tmp_path, run, "--resume", "auto", opts=["epochs=2"]) == 1
    one_line(capsys, f"wide: error: checkpoint {latest} is damaged: its contents do not match the checksum "
                     f"written with them (changed on disk or in a copy); use another copy")
    assert before["iteration"] == 5 and before[CHECKSUM_KEY] == content_digest(
        {k: v for k, v in before.items() if k != CHECKSUM_KEY})


def test_a_damaged_best_and_a_damaged_export_are_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(tmp_path, run, opts=["epochs=1"]) == 0
    best, export = run / "checkpoints" / "best.pth", run / "models" / "model_last.pth"
    _damage(best, "RNet.2.weight")
    _damage(export, "RNet.0.weight")
    capsys.readouterr()
    assert _run(tmp_path, tmp_path / "more", "--resume", str(best)) == 1
    one_line(capsys, f"checkpoint {best} is damaged")
    assert _run(tmp_path, tmp_path / "tuned", opts=[f"init_weights={export}"]) == 1
    one_line(capsys, f"checkpoint {export} is damaged")
    assert not (tmp_path / "more").exists() and not (tmp_path / "tuned").exists()


def test_a_checkpoint_without_checksum_resumes_with_one_warning(tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(tmp_path, run, opts=["epochs=1"]) == 0
    latest = run / "checkpoints" / "latest.pth"
    old = torch.load(latest, weights_only=True)
    del old[CHECKSUM_KEY]
    torch.save(old, latest)
    assert _run(tmp_path, run, "--resume", "auto", opts=["epochs=2"]) == 0
    warnings = [line for line in (run / "train.log").read_text().splitlines() if "checksum" in line]
    assert len(warnings) == 1 and f"{latest} has no checksum" in warnings[0] and "WARNING" in warnings[0]
    assert load_training_state(latest)["epoch"] == 2


def test_integer_weights_are_refused_naming_the_entry(tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(tmp_path, run, opts=["epochs=1"]) == 0
    export = run / "models" / "model_last.pth"
    ckpt = torch.load(export, weights_only=True)
    weights = {k: (v * 1000).to(torch.int32) if k == "RNet.0.weight" else v
               for k, v in ckpt["model_state_dict"].items()}
    converted = tmp_path / "int32.pth"
    torch.save({"model_state_dict": weights}, converted)
    capsys.readouterr()
    assert _run(tmp_path, tmp_path / "tuned", opts=[f"init_weights={converted}"]) == 1
    one_line(capsys, f"checkpoint {converted}: weight 'RNet.0.weight' is stored as torch.int32; floating-point "
                     f"weights are expected")
    latest = run / "checkpoints" / "latest.pth"
    state = torch.load(latest, weights_only=True)
    state["model"]["RNet.2.weight"] = state["model"]["RNet.2.weight"].to(torch.int64)
    state.pop(CHECKSUM_KEY)
    torch.save(state, latest)
    assert _run(tmp_path, run, "--resume", "auto", opts=["epochs=2"]) == 1
    one_line(capsys, f"checkpoint {latest}: weight 'RNet.2.weight' is stored as torch.int64")


def test_the_digest_survives_a_round_trip_and_sees_one_bit(tmp_path):
    state = {"w": torch.randn(3, 4).to(torch.bfloat16), "n": 3, "x": 0.1, "s": "a", "t": (1, [2.5, None]),
             "o": {0: torch.arange(5), "1": True}}
    torch.save(state, tmp_path / "s.pth")
    assert content_digest(torch.load(tmp_path / "s.pth", weights_only=True)) == content_digest(state)
    flipped = {**state, "w": state["w"].clone()}
    flipped["w"].view(torch.int16)[1, 2] ^= 1
    assert content_digest(flipped) != content_digest(state)
    assert content_digest({**state, "o": {0: torch.arange(5), 1: True}}) != content_digest(state)  # key types count
