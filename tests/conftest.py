import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models run faster on one thread than fighting other processes for the 2 shared cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
