import pickle

import pytest
import torch

from data.errors import InputError
from ddpm.checkpoint import load_checkpoint, model_state, optimizer_state, save_checkpoint
from ddpm.ema import EMA


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_round_trip_restores_model_optimizer_and_meta(tmp_path):
    model, opt = _model_and_optimizer()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": opt.state_dict()}, {"stage": "vae-train", "step": 3})
    states, meta = load_checkpoint(path, expect_stage="vae-train")
    assert meta == {"stage": "vae-train", "step": 3}
    model2, _ = _model_and_optimizer()
    torch.nn.init.zeros_(model2[0].weight)
    model2.load_state_dict(model_state(states, "model"))
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    opt2.load_state_dict(optimizer_state(states))
    for p, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[p2]["exp_avg_sq"])
    assert not list(tmp_path.glob("*.tmp")), "no temp files left behind"


def test_wrong_stage_and_pickle_payload_are_refused(tmp_path):
    model, _ = _model_and_optimizer()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"model": model.state_dict()}, {"stage": "vae", "step": 1})
    with pytest.raises(InputError, match="expected a 'ldm'"):
        load_checkpoint(path, expect_stage="ldm")

    class Payload:
        def __reduce__(self):
            return (exec, ("import pathlib; pathlib.Path('PWNED').touch()",))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"model": Payload()}))
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_checkpoint(evil)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_checkpoint_is_refused(tmp_path):
    model, _ = _model_and_optimizer()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"model": model.state_dict()}, {"stage": "vae"})
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(InputError, match="ckpt.safetensors"):
        load_checkpoint(path)


def test_ema_tracks_closed_form():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(5):
        ema.update(model)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1 - 0.9 ** 5))
