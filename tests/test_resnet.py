"""Tests for classify/resnet.py: ResNet18 parameter count, shapes, config validation."""
import pytest
import torch

from classify.resnet import ClassifierConfig, ResNetClassifier


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
from data.errors import InputError


def test_resnet18_config_has_torchvision_parameter_count():
    cfg = ClassifierConfig(in_channels=3, widths=(64, 128, 256, 512), blocks_per_stage=(2, 2, 2, 2), num_classes=1000)
    assert count_parameters(ResNetClassifier(cfg)) == 11_689_512  # torchvision.models.resnet18().parameters()


def test_parameter_count_closed_form_for_one_block_per_stage():
    w, c, k = (4, 8), 2, 3
    model = ResNetClassifier(ClassifierConfig(in_channels=c, widths=w, blocks_per_stage=(1, 1), num_classes=k))
    stem = 7 * 7 * c * w[0] + 2 * w[0]
    block1 = 2 * (9 * w[0] * w[0] + 2 * w[0])  # identity shortcut
    block2 = 9 * w[0] * w[1] + 9 * w[1] * w[1] + 4 * w[1] + (w[0] * w[1] + 2 * w[1])  # projection shortcut
    assert count_parameters(model) == stem + block1 + block2 + w[1] * k + k


@pytest.mark.parametrize("size", [16, 33, 64])
def test_logits_shape_and_total_stride(size):
    torch.manual_seed(0)
    model = ResNetClassifier(ClassifierConfig(widths=(4, 8, 8, 16))).eval()
    x = torch.randn(3, 2, size, size)
    assert model(x).shape == (3, 2)
    feats = model.blocks(model.stem(x))
    assert feats.shape[-1] == -(-size // 32)  # stem /4, then three stride-2 stages


def test_eval_output_depends_only_on_own_sample():
    torch.manual_seed(0)
    model = ResNetClassifier(ClassifierConfig(widths=(4, 8), blocks_per_stage=(1, 1), dropout=0.5)).eval()
    x = torch.randn(4, 2, 32, 32)
    torch.testing.assert_close(model(x)[:2], model(x[:2]))


def test_gradients_reach_the_stem():
    model = ResNetClassifier(ClassifierConfig(widths=(4, 8), blocks_per_stage=(1, 1)))
    model(torch.randn(2, 2, 32, 32)).sum().backward()
    assert model.stem[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, field", [
    ({"widths": (4, 8), "blocks_per_stage": (1,)}, "blocks_per_stage"),
    ({"widths": ()}, "widths"),
    ({"num_classes": 1}, "num_classes"),
    ({"dropout": 1.0}, "dropout"),
    ({"in_channels": 0}, "in_channels"),
])
def test_bad_config_raises_input_error_naming_field(kwargs, field):
    with pytest.raises(InputError, match=field):
        ResNetClassifier(ClassifierConfig(**kwargs))
