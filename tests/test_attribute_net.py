import numpy as np
import pandas as pd
import torch

from evaluation.attribute_net import train_attribute_net


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    health = rng.choice(["healthy", "heart_failure"], n)
    images = rng.uniform(-0.2, 0.2, (n, 2, 32, 32)).astype(np.float32)
    images += np.where(health == "heart_failure", 0.6, -0.6)[:, None, None, None].astype(np.float32)
    labels = pd.DataFrame({"health": health, "sex": [None] * n, "bmi_category": ["normal"] * n}, dtype=object)
    return images, labels


def test_heads_only_for_attributes_with_two_classes_and_a_visible_one_is_learnt():
    images, labels = _data()
    net = train_attribute_net(images, labels, ("sex", "bmi_category", "health"), epochs=4, seed=0)
    assert list(net.heads) == ["health"]  # no sex at all (ACDC), one BMI class: nothing to learn
    test_images, test_labels = _data(32, seed=1)
    assert (net.predict(test_images)["health"] == test_labels["health"].to_numpy()).mean() > 0.9
    assert net.features(test_images).shape == (32, net.model.cfg.widths[-1])


def test_training_leaves_the_callers_rng_alone_and_is_seeded():
    images, labels = _data(16)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    a = train_attribute_net(images, labels, ("health",), epochs=1, seed=3)
    assert torch.rand(1) == expected
    b = train_attribute_net(images, labels, ("health",), epochs=1, seed=3)
    assert np.allclose(a.features(images), b.features(images))
