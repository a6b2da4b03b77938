"""Issue 18, class 2: a broken model must never be saved with exit 0. Numeric settings take one validated path
(`from_dict`, for config files and `section.key=value` overrides alike): floats are finite (YAML's own .nan/.inf
too) and declared ranges (`bounded`) hold; the training loop refuses to save non-finite weights."""
import math
from dataclasses import dataclass

import pytest
import torch

import train
from data.errors import InputError
from data.fields import bounded, check_fields
from run.loader import from_dict, load_config
from ddpm.trainer import NonFiniteLoss, TrainConfig, checkpoint_paths, train_loop
from tests.test_robustness import SMOKE, assert_refused, call, tree

OVERRIDE_FAULTS = {  # override -> fragments of the one error line
    "ldm_train.ema_decay=.nan": ["ldm_train.ema_decay", "expected a finite number", "nan"],
    "ldm_train.ema_decay=-10": ["ldm_train.ema_decay", "expected a number in [0, 1)", "-10"],
    "ldm_train.ema_decay=1": ["ldm_train.ema_decay", "[0, 1)", "got 1"],
    "vae_train.lr=.inf": ["vae_train.lr", "expected a finite number", "inf"],
    "vae_train.lr=-.inf": ["vae_train.lr", "expected a finite number"],
    "vae_train.lr=0": ["vae_train.lr", "(0, inf)"],
    "vae_train.lr=-1e-4": ["vae_train.lr", "(0, inf)", "-0.0001"],
    "vae_train.lr=1e999": ["vae_train.lr", "expected a finite number"],
    "vae_train.grad_clip=-1": ["vae_train.grad_clip", "[0, inf)"],
    "vae_train.weight_decay=.nan": ["vae_train.weight_decay", "finite"],
    "vae_train.checkpoint_every=0": ["vae_train.checkpoint_every", "expected an integer in [1, inf)", "got 0"],
    "vae_train.log_every=0": ["vae_train.log_every", "[1, inf)"],
    "vae_train.warmup_steps=-1": ["vae_train.warmup_steps", "[0, inf)"],
    "vae_train.sample_every=-5": ["vae_train.sample_every", "[0, inf)"],
    "vae_train.seed=-1": ["vae_train.seed", "[0, 2^32)", "-1"],
    "vae_train.seed=18446744073709551616": ["vae_train.seed", "[0, 2^32)"],
    "controlnet_train.keep_last=0": ["controlnet_train.keep_last", "[1, inf)"],
    "unet.dropout=.nan": ["unet.dropout", "finite"],
    "vae.kl_weight=-1": ["vae.kl_weight", "[0, inf)"],
    "sample.guidance=.nan": ["sample.guidance", "finite"],
    "sample.eta=-0.5": ["sample.eta", "[0, inf)"],
    "sample.steps=0": ["sample.steps", "[1, inf)"],
    "classifier_train.lr=.nan": ["classifier_train.lr", "finite"],
    "classifier_train.val_fraction=1": ["classifier_train.val_fraction", "[0, 1)"],
    "classifier_train.epochs=0": ["classifier_train.epochs", "[1, inf)"],
    "evaluation.fid_n=1": ["evaluation.fid_n", "[2, inf)"],
    "evaluation.seed=-3": ["evaluation.seed", "[0, 2^32)"],
}


@pytest.mark.parametrize("override", OVERRIDE_FAULTS)
def test_train_refuses_numeric_settings_outside_their_range_and_writes_nothing(tmp_path, capsys, override):
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", tmp_path / "runs", "--stage", "vae", override])
    assert_refused(code, err, OVERRIDE_FAULTS[override])
    assert tree(tmp_path) == []


@pytest.mark.parametrize("text, fragments", [
    ("ldm_train:\n  ema_decay: .nan\n", ["ldm_train.ema_decay", "expected a finite number"]),
    ("ldm_train:\n  lr: -.Inf\n", ["ldm_train.lr", "expected a finite number"]),
    ("vae_train:\n  checkpoint_every: 0\n", ["vae_train.checkpoint_every", "[1, inf)"]),
    ("unet:\n  channel_mult: [1, 2, 0]\n", ["unet.channel_mult", "0 in [1, 2, 0]"]),
])
def test_yaml_file_values_take_the_same_checks_as_overrides(tmp_path, capsys, text, fragments):
    (tmp_path / "bad.yaml").write_text(text)
    code, _, err = call(capsys, train.main, ["--config", tmp_path / "bad.yaml", "--runs", tmp_path / "runs"])
    assert_refused(code, err, ["bad.yaml", *fragments])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@dataclass
class Toy:
    closed: int = bounded(1, lo=1, hi=3)
    half_open: float = bounded(0.5, lo=0, hi=1, hi_open=True)
    positive: float = bounded(1.0, lo=0, lo_open=True)
    sizes: tuple = bounded((1, 2), lo=1, hi=4, max_items=3)
    free: float = 0.0  # no declared range: any finite number

    def __post_init__(self) -> None:
        check_fields(self, "toy")


def test_bounded_fields_hold_their_ends_exactly():
    assert from_dict(Toy, {"closed": 1}).closed == 1 and from_dict(Toy, {"closed": 3}).closed == 3
    assert from_dict(Toy, {"half_open": 0}).half_open == 0.0
    assert from_dict(Toy, {"sizes": [4, 4, 4]}).sizes == [4, 4, 4]
    assert from_dict(Toy, {"free": -1e300}).free == -1e300
    for data, fragment in [({"closed": 0}, "toy.closed: expected an integer in [1, 3], got 0"),
                           ({"closed": 4}, "toy.closed"), ({"half_open": 1.0}, "toy.half_open: expected a number in [0, 1)"),
                           ({"positive": 0.0}, "(0, inf)"), ({"sizes": [1, 5]}, "toy.sizes: expected an integer in [1, 4], got 5"),
                           ({"sizes": [1, 1, 1, 1]}, "toy.sizes: expected at most 3 items, got 4"),
                           ({"free": math.nan}, "toy.free: expected a finite number"),
                           ({"free": 10 ** 400}, "toy.free: expected a finite number")]:
        with pytest.raises(InputError) as err:
            from_dict(Toy, data, "toy")
        assert fragment in str(err.value), (data, str(err.value))


def test_direct_construction_is_checked_too():
    """sample.py builds SampleSettings from flags, not through from_dict: the same ranges apply."""
    from ddpm.sampling import SampleSettings

    for kwargs, fragment in [({"ema_decay": math.nan}, "train.ema_decay"), ({"lr": math.inf}, "train.lr"),
                             ({"checkpoint_every": 0}, "train.checkpoint_every"), ({"seed": -1}, "train.seed")]:
        with pytest.raises(InputError, match=fragment.replace(".", r"\.")):
            TrainConfig(**kwargs)
    for kwargs in [{"guidance": math.nan}, {"guidance": -math.inf}, {"control_scale": math.nan}, {"eta": math.nan}]:
        with pytest.raises(InputError, match=f"{next(iter(kwargs))}: expected a"):
            SampleSettings(**kwargs)
    with pytest.raises(InputError, match=r"config\.free: expected a finite number"):
        load_config(Toy, None, ["free=.nan"])


def test_the_training_loop_never_saves_non_finite_weights(tmp_path):
    """A NaN weight that the loss does not see (e.g. a running statistic) stops training with exit-3's error
    before any checkpoint holds it."""
    model = torch.nn.Linear(3, 1)
    model.register_buffer("running_stat", torch.tensor([0.0, math.nan]))

    def loss_fn(idx, draws, step):
        return model(torch.ones(len(idx), 3)).pow(2).mean(), {}

    cfg = TrainConfig(steps=4, batch_size=2, checkpoint_every=2, log_every=1)
    with pytest.raises(NonFiniteLoss, match=r"non-finite model weight running_stat at step 2 \(not saved\)"):
        train_loop(stage="toy", model=model, loss_fn=loss_fn, num_samples=4, cfg=cfg, run_dir=tmp_path, meta={})
    assert checkpoint_paths(tmp_path, "toy") == [] and not (tmp_path / "toy-final.safetensors").exists()
