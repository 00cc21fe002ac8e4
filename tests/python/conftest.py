import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def torch_or_skip():
    return pytest.importorskip("torch")


BENCH = __import__("pathlib").Path(__file__).resolve().parents[2] / "bench"


def import_bench(name: str):
    """Generator for a module-scoped fixture: ``bench/<name>.py`` imported with bench/ on sys.path,
    so that ranks spawned by it can import the module by name to find their target function."""
    import importlib
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
