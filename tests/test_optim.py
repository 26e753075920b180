"""The optimiser and learning-rate schedule hooks (utils/training/optim.py): the defaults train exactly
as Adam + warm-up + cosine built by hand, AdamW + multistep train as built by hand and resume exactly,
and the config keys are checked."""
import math

import pytest
import torch
from torch import nn

from utils import training as engine
from utils.config import ConfigError, Key, build_config
from utils.seeding import seed_everything
from utils.training.distributed import ResumableSampler
from utils.training.optim import OPTIMIZERS, SCHEDULES
from utils.training.state import load_training_state

from helpers import LinearData


def LineData(length, seed):
    """y = 3x - 1 on 2 x 3 x 3 tensors."""
    return LinearData(length, seed, shape=(2, 3, 3), slope=3, offset=-1)


def line_net():
    return nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))


def line_loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


class LineTask(engine.Task):
    keys = {"crash_at": Key("int", 0, "global iteration (1-based) that raises, 0: none")}

    def build_model(self):
        return line_net()

    def build_train_set(self, length):
        return LineData(length, self.cfg.seed)

    def train_step(self, model, batch, ctx):
        if ctx.iteration + 1 == self.cfg.crash_at:
            raise RuntimeError("simulated crash")
        return engine.StepOutput(line_loss(model, *batch))


def line_config(tmp_path, **values):
    base = dict(epochs=3, iters_per_epoch=1, batch_size=4, lr=0.05, lr_min=1e-3, warmup_epochs=1, num_workers=0,
                val_freq=0, print_freq=1, image_freq=0, save_freq=1, save_dir=str(tmp_path / "run"))
    return build_config(LineTask.schema(), {**base, **values}, source="line")


def exported(run):
    return torch.load(run / "models" / "model_last.pth", weights_only=True)["model_state_dict"]


def by_hand(cfg, make_optimizer, lr_of_epoch):
    """The weights after training ``line_net`` as the engine should: seeded build, the same sample order,
    ``make_optimizer(parameters)`` stepped once per batch, its learning rate set from ``lr_of_epoch``."""
    seed_everything(cfg.seed)
    model = line_net()
    optimizer = make_optimizer(model.parameters())
    data = LineData(cfg.iters_per_epoch * cfg.batch_size, cfg.seed)
    sampler = ResumableSampler(data, 1, 0, cfg.seed)
    for epoch in range(cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_of_epoch(epoch)
        data.set_epoch(epoch)
        sampler.set_epoch(epoch)
        order = list(sampler)
        for start in range(0, len(order), cfg.batch_size):
            x, y = (torch.stack(parts) for parts in zip(*(data[i] for i in order[start:start + cfg.batch_size])))
            optimizer.zero_grad()
            line_loss(model, x, y).backward()
            optimizer.step()
    return model.state_dict()


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_default_is_adam_with_warmup_and_cosine_bit_for_bit(tmp_path):
    cfg = line_config(tmp_path)
    assert (cfg.optimizer, cfg.scheduler, cfg.weight_decay) == ("adam", "cosine", 0.0)
    result = engine.train(LineTask, cfg, device="cpu")
    assert result.iteration == 3

    def cosine(epoch):  # one warm-up epoch, then cosine from 0.05 to 1e-3 over the two others
        return 0.05 if epoch == 0 else 1e-3 + (0.05 - 1e-3) * (1 + math.cos(math.pi * (epoch - 1) / 2)) / 2

    assert [h["lr"] for h in result.history] == pytest.approx([cosine(e) for e in range(3)], rel=1e-12)
    assert_same(exported(tmp_path / "run"), by_hand(cfg, lambda p: torch.optim.Adam(p, lr=0.05), cosine))


def multistep(epoch):  # one warm-up epoch, then 0.05, times 0.1 from epoch 2 and again from epoch 3
    return 0.05 * 0.1 ** sum(epoch >= m for m in (2, 3))


def test_adamw_with_multistep_trains_as_built_by_hand(tmp_path):
    cfg = line_config(tmp_path, epochs=4, optimizer="AdamW", weight_decay=0.1, scheduler="multistep",
                      milestones=[3, 2], gamma=0.1)
    assert cfg.optimizer == "adamw"
    result = engine.train(LineTask, cfg, device="cpu")
    assert [h["lr"] for h in result.history] == pytest.approx([0.05, 0.05, 0.005, 0.0005], rel=1e-12)
    want = by_hand(cfg, lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1), multistep)
    assert_same(exported(tmp_path / "run"), want)
    adam = by_hand(cfg, lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1), multistep)
    assert not all(torch.equal(want[k], adam[k]) for k in want)  # the decay is decoupled: AdamW differs


def test_multistep_resume_is_exact(tmp_path):
    values = dict(epochs=4, iters_per_epoch=2, optimizer="adamw", weight_decay=0.1, scheduler="multistep",
                  milestones=[2, 3], gamma=0.1)
    full = engine.train(LineTask, line_config(tmp_path / "a", **values), device="cpu")
    cfg = line_config(tmp_path / "b", crash_at=6, **values)
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.train(LineTask, cfg, device="cpu")
    state = load_training_state(tmp_path / "b" / "run" / "checkpoints" / "latest.pth")
    assert (state["epoch"], state["scheduler"]["last_epoch"]) == (2, 2)
    resumed = engine.train(LineTask, cfg.replace(crash_at=0, resume="auto"), device="cpu")
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in full.history]
    assert_same(exported(tmp_path / "a" / "run"), exported(tmp_path / "b" / "run"))


def test_resume_takes_the_new_weight_decay_and_schedule(tmp_path):
    cfg = line_config(tmp_path, epochs=2, optimizer="adamw", weight_decay=0.1)
    engine.train(LineTask, cfg, device="cpu")
    later = cfg.replace(epochs=4, weight_decay=0.3, scheduler="multistep", milestones=[3], gamma=0.5, resume="auto")
    result = engine.train(LineTask, later, device="cpu")
    assert [h["lr"] for h in result.history][2:] == pytest.approx([0.05, 0.025], rel=1e-12)
    state = load_training_state(tmp_path / "run" / "checkpoints" / "latest.pth")
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [0.3]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "weight_decay 0.1 -> 0.3" in log and "milestones [] -> [3]" in log


def test_the_optimizer_cannot_change_on_resume(tmp_path):
    cfg = line_config(tmp_path, epochs=1)
    engine.train(LineTask, cfg, device="cpu")
    with pytest.raises(ConfigError, match=r"^config key 'optimizer' cannot change on resume \(adam in the "
                                          r"checkpoint, adamw now\)"):
        engine.train(LineTask, cfg.replace(epochs=2, optimizer="adamw", resume="auto"), device="cpu")


@pytest.mark.parametrize("values, message", [
    (dict(optimizer="sgd"), "config key 'optimizer': must be one of 'adam', 'adamw', got 'sgd'"),
    (dict(scheduler="step"), "config key 'scheduler': must be one of 'cosine', 'multistep', got 'step'"),
    (dict(gamma=2.0), "config key 'gamma'"),
    (dict(weight_decay=-1), "config key 'weight_decay'"),
])
def test_optim_keys_are_checked(tmp_path, values, message):
    with pytest.raises(ConfigError) as err:
        line_config(tmp_path, **values)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_entry_declares_keys_of_the_engine():
    schema = engine.ENGINE_KEYS
    for entry in (*OPTIMIZERS.values(), *SCHEDULES.values()):
        assert all(schema[name] is key for name, key in entry.keys.items())
