import pytest
import torch

from data.errors import InputError
from evaluation.inception import FIDInception, _avg_pool_same, inception_features, load_fid_weights, to_three_channels

# (key, shape) pins from pytorch-fid's pt_inception-2015-12-05 state dict (torchvision Inception3 layout)
EXPECTED_SHAPES = [
    ("Conv2d_1a_3x3.conv.weight", (32, 3, 3, 3)),
    ("Conv2d_1a_3x3.bn.running_var", (32,)),
    ("Conv2d_2b_3x3.conv.weight", (64, 32, 3, 3)),
    ("Conv2d_3b_1x1.conv.weight", (80, 64, 1, 1)),
    ("Conv2d_4a_3x3.conv.weight", (192, 80, 3, 3)),
    ("Mixed_5b.branch5x5_2.conv.weight", (64, 48, 5, 5)),
    ("Mixed_5b.branch_pool.conv.weight", (32, 192, 1, 1)),
    ("Mixed_5d.branch_pool.conv.weight", (64, 288, 1, 1)),
    ("Mixed_6a.branch3x3.conv.weight", (384, 288, 3, 3)),
    ("Mixed_6b.branch7x7_2.conv.weight", (128, 128, 1, 7)),
    ("Mixed_6c.branch7x7dbl_2.conv.weight", (160, 160, 7, 1)),
    ("Mixed_6e.branch7x7dbl_5.conv.weight", (192, 192, 1, 7)),
    ("Mixed_7a.branch3x3_2.conv.weight", (320, 192, 3, 3)),
    ("Mixed_7a.branch7x7x3_4.conv.weight", (192, 192, 3, 3)),
    ("Mixed_7b.branch1x1.conv.weight", (320, 1280, 1, 1)),
    ("Mixed_7b.branch3x3_2a.conv.weight", (384, 384, 1, 3)),
    ("Mixed_7c.branch3x3dbl_1.conv.weight", (448, 2048, 1, 1)),
    ("Mixed_7c.branch3x3dbl_3b.bn.running_mean", (384,)),
    ("Mixed_7c.branch_pool.bn.bias", (192,)),
    ("fc.weight", (1008, 2048)),
    ("fc.bias", (1008,)),
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FIDInception().eval()


def test_state_dict_keys_and_shapes_match_pytorch_fid(model):
    state = model.state_dict()
    for key, shape in EXPECTED_SHAPES:
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in state)
    tops = {k.split(".")[0] for k in state}
    assert tops == {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "fc"} | {
        f"Mixed_{s}" for s in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")}


def test_parameter_counts(model):
    # learnable: torchvision inception_v3 (27,161,264) - aux classifier (3,326,696) + 8 extra fc classes (16,392)
    assert sum(p.numel() for p in model.parameters()) == 23_850_960
    # stored floats (params + BN running stats, as in the weights file) and tensor count (94 conv+BN, fc)
    stored = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert sum(v.numel() for v in stored.values()) == 23_885_392
    assert len(stored) == 94 * 5 + 2


def test_forward_gives_2048_pool_features_for_two_channel_input(model):
    with torch.no_grad():
        out = model(torch.rand(2, 2, 32, 32))
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    assert (out >= 0).all()  # average of ReLU outputs


def test_two_channels_become_ed_es_ed_and_one_channel_is_repeated():
    ed, es = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    assert torch.equal(to_three_channels(torch.cat([ed, es], 1)), torch.cat([ed, es, ed], 1))
    assert torch.equal(to_three_channels(es), torch.cat([es, es, es], 1))
    with pytest.raises(InputError):
        to_three_channels(torch.zeros(1, 4, 4, 4))


def test_fid_average_pool_ignores_padding():
    # TF-style pooling: a constant map stays constant at the borders (zero padding would darken corners to 4/9)
    assert torch.allclose(_avg_pool_same(torch.ones(1, 1, 5, 5)), torch.ones(1, 1, 5, 5))


class _RecordInput(torch.nn.Module):
    """Stand-in network: returns the per-image mean of what it was fed, so the input mapping is visible."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3), keepdim=False)[:, None].expand(-1, 2048)


def test_inception_features_map_model_range_to_unit_range():
    x = torch.tensor([-1.0, 1.0, 0.0]).view(3, 1, 1, 1).expand(3, 2, 8, 8)
    feats = inception_features(_RecordInput(), x.numpy(), batch_size=2)
    assert feats.shape == (3, 2048) and feats.dtype.name == "float64"
    assert feats[:, 0].tolist() == [0.0, 1.0, 0.5]
    with pytest.raises(InputError):
        inception_features(_RecordInput(), torch.full((1, 2, 8, 8), float("nan")).numpy())


def test_load_fid_weights_round_trip_without_batch_counters(model, tmp_path):
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "w.pth")
    fresh = load_fid_weights(FIDInception(), tmp_path / "w.pth")
    assert torch.equal(fresh.Mixed_7c.branch_pool.conv.weight, model.Mixed_7c.branch_pool.conv.weight)
    assert torch.equal(fresh.Conv2d_1a_3x3.bn.running_var, model.Conv2d_1a_3x3.bn.running_var)


def test_load_fid_weights_rejects_missing_file_and_wrong_keys(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_fid_weights(FIDInception(), tmp_path / "absent.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="missing keys"):
        load_fid_weights(FIDInception(), tmp_path / "bad.pth")
