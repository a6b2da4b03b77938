"""python -m evaluation against pickled weights and bad or corrupt input files: one `error:` line, nothing written."""
import pytest

from evaluation.__main__ import main as evaluate_main
from tests.test_robustness import assert_refused, call, plant_pickle


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note while it refuses the file
def test_evaluation_refuses_pickled_inception_weights(tmp_path, capsys):
    from tests.test_evaluation_cli import write_samples
    from tests.test_features import toy_slices
    real = toy_slices(4, 1, seed=1).save(tmp_path / "real.npz")
    fake = write_samples(tmp_path / "fake", toy_slices(2, 1, seed=2, prefix="f"))
    evil = plant_pickle(tmp_path / "evil" / "pt_inception.pth")
    code, _, err = call(capsys, evaluate_main, ["--real", real, "--fake", fake, "--out", tmp_path / "m.json", "--quiet",
                                                "--inception-weights", evil, "evaluation.segmenter_steps=1",
                                                "evaluation.fid_n=2"])
    assert_refused(code, err, ["pt_inception.pth", "could not read a state dict"])
    assert not (evil.parent / "PWNED").exists() and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("fault, fragments", [
    ("missing real", ["nope.npz"]),
    ("corrupt real", ["real.npz"]),
    ("corrupt sidecar", ["f000.json"]),
])
def test_evaluation_refuses_bad_files(tmp_path, capsys, fault, fragments):
    from tests.test_evaluation_cli import write_samples
    from tests.test_features import toy_slices
    real = toy_slices(2, 1, seed=1).save(tmp_path / "real.npz")
    fake = write_samples(tmp_path / "fake", toy_slices(1, 1, seed=2, prefix="f"))
    if fault == "missing real":
        real = tmp_path / "nope.npz"
    elif fault == "corrupt real":
        real.write_bytes(real.read_bytes()[:300])
    else:
        for suffix in (".nii.gz", "_mask.nii.gz"):
            (fake / f"g000{suffix}").rename(fake / f"f000{suffix}")
        (fake / "g000.json").unlink()
        (fake / "f000.json").write_text("{not json")
    code, _, err = call(capsys, evaluate_main, ["--real", real, "--fake", fake, "--out", tmp_path / "m.json", "--quiet"])
    assert_refused(code, err, fragments)
    assert not (tmp_path / "m.json").exists()
