"""torch ops of the foundation: CPU reference, fake kernel, opcheck, torch.compile, CUDA vs CPU."""
import pytest

torch = pytest.importorskip("torch")

from moebal import ops  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_histogram_cpu_matches_bincount():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 37, (1000, 3), generator=g, dtype=torch.int32)
    ids[5, 1] = -1  # padding is skipped
    got = ops.expert_histogram(ids, 37)
    want = torch.bincount(ids[ids >= 0].long(), minlength=37).int()
    assert got.dtype == torch.int32 and torch.equal(got, want)


def test_histogram_errors():
    with pytest.raises(ValueError, match="int32"):
        ops.expert_histogram(torch.zeros(4, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match=">= num_experts"):
        ops.expert_histogram(torch.tensor([0, 4], dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="num_experts"):
        ops.expert_histogram(torch.tensor([0], dtype=torch.int32), 0)
    with pytest.raises(ValueError, match="contiguous"):
        ops.expert_histogram(torch.zeros(4, 2, dtype=torch.int32).t(), 4)


def test_histogram_opcheck():
    ops.load_library()
    ids = torch.randint(0, 8, (64, 2), dtype=torch.int32)
    torch.library.opcheck(torch.ops.moebal.expert_histogram.default, (ids, 8))


def test_histogram_compiles_fullgraph():
    ops.load_library()

    def f(ids):
        return torch.ops.moebal.expert_histogram(ids, 16).float() / ids.numel()

    ids = torch.randint(0, 16, (128, 4), dtype=torch.int32)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(ids), f(ids))


@cuda
@pytest.mark.parametrize("n, experts", [(1, 8), (17, 3), (989, 128), (524293, 256), (4099, 10000)])
def test_histogram_cuda_matches_cpu(n, experts):
    assert ops.has_cuda_kernels(), "moebal was built without CUDA kernels on a CUDA machine"
    g = torch.Generator().manual_seed(n)
    ids = (torch.rand(n, generator=g) ** 3 * experts).int()  # skewed
    ids[:: 97] = -1
    got = ops.expert_histogram(ids.cuda(), experts)
    torch.testing.assert_close(got.cpu(), ops.expert_histogram(ids, experts), rtol=0, atol=0)


@cuda
def test_histogram_cuda_opcheck():
    ids = torch.randint(0, 8, (64, 2), dtype=torch.int32, device="cuda")
    torch.library.opcheck(torch.ops.moebal.expert_histogram.default, (ids, 8))
