import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def torch_or_skip():
    return pytest.importorskip("torch")
