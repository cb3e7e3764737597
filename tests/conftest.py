import pytest
import torch


@pytest.fixture(scope="session")
def backbone():
    from neve.models import pretrained_backbone

    torch.manual_seed(0)
    return pretrained_backbone("efficientnet-lite0", input_size=64)


@pytest.fixture(scope="session")
def fmnist():
    from neve.benchmarks import fashion_mnist

    return fashion_mnist()


@pytest.fixture(scope="session")
def digits_data():
    from neve.benchmarks import digits

    return digits()
