import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models run faster on one thread than fighting other processes for the 2 shared cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def toy_result():
    """Every runnable arm of the toy problem really trained (TINY, two seeds), shared by test_experiment.py and
    test_comparisons.py: trained once per session. Imported here, not at the top, so that sessions without it do not
    load the experiment."""
    from classify.experiment import ExperimentConfig, run_experiment
    from tests.test_experiment import RUNNABLE, TINY, TRAIN, toy_problem
    torch.set_num_threads(1)
    real, test, syn = toy_problem()
    result = run_experiment(real, test, [syn], ExperimentConfig(arms=RUNNABLE, seeds=(0, 1), n_boot=60), TINY, TRAIN,
                            progress=False)
    return result, test
