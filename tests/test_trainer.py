import json

import pytest
import torch

from ddpm.checkpoint import load_checkpoint, model_state
from ddpm.trainer import NonFiniteLoss, TrainConfig, batch_indices, checkpoint_paths, lr_at, train_loop


def _setup():
    torch.manual_seed(0)
    data_x = torch.randn(40, 3)
    data_y = data_x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 1))

    def loss_fn(idx, draws, step):
        noise = draws.randn((len(idx), 3)) * 0.01
        return (model(data_x[idx] + noise).squeeze(1) - data_y[idx]).pow(2).mean(), {}

    return model, loss_fn


def _cfg(steps):
    return TrainConfig(steps=steps, batch_size=8, lr=1e-2, warmup_steps=3, checkpoint_every=5, keep_last=2, log_every=5)


def test_batch_indices_cover_each_epoch_once():
    seen = torch.cat([batch_indices(10, 5, seed=1, step=s) for s in range(2)])
    assert sorted(seen.tolist()) == list(range(10))
    assert torch.equal(batch_indices(10, 4, 1, 3), batch_indices(10, 4, 1, 3))


def test_resume_reaches_the_same_weights(tmp_path):
    model, loss_fn = _setup()
    train_loop(stage="toy", model=model, loss_fn=loss_fn, num_samples=40, cfg=_cfg(20), run_dir=tmp_path / "a", meta={})
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model, loss_fn = _setup()
    train_loop(stage="toy", model=model, loss_fn=loss_fn, num_samples=40, cfg=_cfg(10), run_dir=tmp_path / "b", meta={})
    model, loss_fn = _setup()  # a fresh process: new model, weights come from the checkpoint
    _, final = train_loop(stage="toy", model=model, loss_fn=loss_fn, num_samples=40, cfg=_cfg(20),
                          run_dir=tmp_path / "b", meta={}, resume=True)
    for key, value in model.state_dict().items():
        assert torch.allclose(value, reference[key], atol=1e-6), key
    states, meta = load_checkpoint(final, expect_stage="toy")
    assert meta["step"] == 20 and meta["resumed_from"] == 10
    assert len(checkpoint_paths(tmp_path / "b", "toy")) == 2, "keep-last-N"


def test_cosine_lr_closed_form():
    """Warm-up as before, then lr * (1 + cos(pi * done)) / 2: lr at the warm-up's end, lr / 2 half way, 0 at steps."""
    cfg = TrainConfig(steps=110, lr=2.0, warmup_steps=10, lr_schedule="cosine")
    constant = TrainConfig(steps=110, lr=2.0, warmup_steps=10)
    assert [lr_at(s, cfg) for s in range(10)] == [lr_at(s, constant) for s in range(10)]
    assert lr_at(10, cfg) == 2.0 and lr_at(60, cfg) == pytest.approx(1.0) and lr_at(110, cfg) == pytest.approx(0.0)
    assert lr_at(35, cfg) == pytest.approx(1.0 + 2 ** -0.5)  # a quarter of the way: cos(pi / 4)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 110))
    assert all(lr_at(s, constant) == 2.0 for s in range(10, 200))
    with pytest.raises(Exception, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def test_cosine_resume_continues_the_same_curve(tmp_path):
    """A run killed after step 10 of 20 and resumed ends at the uninterrupted run's weights (the lr is a function of
    the step and the configured length only)."""
    cfg = TrainConfig(steps=20, batch_size=8, lr=1e-2, warmup_steps=3, checkpoint_every=5, keep_last=5, log_every=5,
                      lr_schedule="cosine")
    model, loss_fn = _setup()
    train_loop(stage="toy", model=model, loss_fn=loss_fn, num_samples=40, cfg=cfg, run_dir=tmp_path, meta={})
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    for path in [*checkpoint_paths(tmp_path, "toy")[2:], tmp_path / "toy-final.safetensors"]:  # killed after step 10
        path.unlink()
    model, loss_fn = _setup()
    _, final = train_loop(stage="toy", model=model, loss_fn=loss_fn, num_samples=40, cfg=cfg, run_dir=tmp_path,
                          meta={}, resume=True)
    assert load_checkpoint(final, expect_stage="toy")[1]["resumed_from"] == 10
    for key, value in model.state_dict().items():
        assert torch.allclose(value, reference[key], atol=1e-6), key
    logged = [json.loads(line)["lr"] for line in (tmp_path / "toy-metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([lr_at(s, cfg) for s in (4, 9, 14, 19)])


def test_non_finite_loss_stops_and_names_step(tmp_path):
    model, loss_fn = _setup()

    def exploding(idx, draws, step):
        loss, logs = loss_fn(idx, draws, step)
        return (loss * float("nan") if step == 7 else loss), logs

    with pytest.raises(NonFiniteLoss, match="step 7.*toy-step0000005"):
        train_loop(stage="toy", model=model, loss_fn=exploding, num_samples=40, cfg=_cfg(20), run_dir=tmp_path, meta={})
    states, meta = load_checkpoint(tmp_path / "toy-step0000005.safetensors")
    assert meta["step"] == 5 and all(torch.isfinite(v).all() for v in model_state(states, "model").values())


@pytest.mark.slow
def test_compile_flag_trains_what_eager_trains(tmp_path):
    """TrainConfig.compile: torch.compile'd modules give the eager run's losses and weights to float tolerance."""
    from ddpm.unet import UNet, UNetConfig

    def run(compile_: bool) -> tuple[dict, list[float]]:
        torch.manual_seed(0)
        unet = UNet(UNetConfig(base_channels=8, channel_mult=(1, 2), attention_levels=(False, True), num_heads=2,
                               context_dim=8))
        x, c, t = torch.randn(4, 4, 8, 8), torch.randn(4, 3, 8), torch.tensor([10, 200, 500, 900])

        def loss_fn(idx, draws, step):
            noise = draws.randn((len(idx), 4, 8, 8))
            return (unet(x[idx] + noise, t[idx], c[idx]) - noise).pow(2).mean(), {}

        cfg = TrainConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, log_every=1, compile=compile_)
        folder = tmp_path / str(compile_)
        train_loop(stage="u", model=unet, loss_fn=loss_fn, num_samples=4, cfg=cfg, run_dir=folder, meta={},
                   compile_modules=(unet,))
        losses = [json.loads(line)["loss"] for line in (folder / "u-metrics.jsonl").read_text().splitlines()]
        return {k: v.clone() for k, v in unet.state_dict().items()}, losses

    (eager, eager_losses), (compiled, compiled_losses) = run(False), run(True)
    assert eager_losses[-1] < eager_losses[0]  # it trained
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for key, value in eager.items():
        assert torch.allclose(compiled[key], value, atol=1e-4), key
