import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def neve_cache(tmp_path_factory):
    """Tests keep neve's data and feature caches in a temporary folder, not in the home folder."""
    previous = os.environ.get("NEVE_CACHE")
    os.environ["NEVE_CACHE"] = str(tmp_path_factory.mktemp("neve-cache"))
    yield os.environ["NEVE_CACHE"]
    if previous is None:
        os.environ.pop("NEVE_CACHE", None)
    else:
        os.environ["NEVE_CACHE"] = previous


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
