import pytest

from moebal import benchmark


def test_cpu_timer_and_table(tmp_path):
    calls = []
    t = benchmark.time_cpu(lambda: calls.append(1), reps=5, warmup=1)
    assert len(calls) == 6 and t.reps == 5 and t.min_us <= t.median_us <= t.p90_us
    rows = [{"shape": "a", "us": 1.2345}, {"shape": "bb", "us": 10.0}]
    text = benchmark.format_table(rows)
    assert "shape" in text and "1.23" in text
    md = benchmark.format_table(rows, markdown=True)
    assert md.splitlines()[1].startswith("|---")
    benchmark.write_csv(str(tmp_path / "x.csv"), rows)
    assert (tmp_path / "x.csv").read_text().splitlines()[0] == "shape,us"


def test_cuda_timer_needs_device():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = torch.randn(1024, 1024, device="cuda")
    t = benchmark.time_cuda(lambda: x @ x, reps=3, flush_l2=True)
    assert t.median_us > 0
