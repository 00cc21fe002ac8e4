"""moebal::grouped_gemm and moebal::expert_ffn: CPU reference vs torch, checks, opcheck, compile,
and CUDA vs CPU on random data (GPU tests skip without a device)."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from moebal import gemm_ops  # noqa: E402
from op_env import op_env  # noqa: E402

HAVE_OPS, GPU = op_env()
pytestmark = pytest.mark.skipif(not HAVE_OPS, reason="moebal torch ops not built")
HOPPER = GPU and torch.cuda.get_device_capability() == (9, 0)


def offsets_of(sizes, device="cpu"):
    offs = [0]
    for s in sizes:
        offs.append(offs[-1] + s)
    return torch.tensor(offs, dtype=torch.int32, device=device)


def make_problem(sizes, n, k, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    rows = sum(sizes)
    x = torch.randn(rows, k, generator=g).to(torch.bfloat16)
    w = (torch.randn(len(sizes), n, k, generator=g) / math.sqrt(k)).to(torch.bfloat16)
    return x.to(device), w.to(device), offsets_of(sizes, device)


def torch_reference(x, w, offs):
    """fp64 per-group matmul, independent of the op's loops."""
    out = torch.zeros(x.shape[0], w.shape[1], dtype=torch.float64)
    o = offs.tolist()
    for g in range(w.shape[0]):
        out[o[g]:o[g + 1]] = x[o[g]:o[g + 1]].double() @ w[g].double().T
    return out


def rel_err(got, want):
    got = got.double().cpu()
    want = want.double().cpu()
    if not torch.isfinite(got).all():
        return math.inf
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def tol(k):
    # bf16 output rounding (2^-9 relative, ~2^-10 rms) dominates; fp32 accumulation adds ~sqrt(k) ulp.
    return 4e-3 + 1e-6 * math.sqrt(k)


SIZES = [
    [0, 1, 3, 17, 1031, 0, 64, 5],
    [1],
    [0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1],
    [700, 1, 1, 1, 0, 2, 1, 300],
]


@pytest.mark.parametrize("sizes", SIZES[1:] + [[0, 1, 3, 17, 40]])
def test_cpu_matches_fp64_reference(sizes):
    x, w, offs = make_problem(sizes, 24, 40, seed=1)
    y = gemm_ops.grouped_gemm(x, w, offs)
    assert y.dtype == torch.bfloat16 and y.shape == (x.shape[0], 24)
    assert rel_err(y, torch_reference(x, w, offs)) < tol(40)


def test_cpu_expert_ffn_matches_composition():
    sizes = [3, 0, 17, 1]
    x, w13, offs = make_problem(sizes, 2 * 32, 48, seed=2)
    w2 = (torch.randn(len(sizes), 48, 32) / math.sqrt(32)).to(torch.bfloat16)
    h = torch_reference(x, w13, offs)
    act = (torch.nn.functional.silu(h[:, :32]) * h[:, 32:]).to(torch.bfloat16)
    want = torch_reference(act, w2, offs)
    got = gemm_ops.expert_ffn(x, w13, w2, offs)
    assert rel_err(got, want) < 1e-2


def test_zero_rows():
    x, w, offs = make_problem([0, 0, 0], 16, 16, seed=3)
    assert gemm_ops.grouped_gemm(x, w, offs).shape == (0, 16)


@pytest.mark.parametrize("case", ["dtype", "w_dims", "k_mismatch", "n_mult8", "offs_dtype", "offs_len",
                                  "noncontig", "offs_first", "offs_decreasing", "offs_last", "kernel"])
def test_bad_input_raises(case):
    x, w, offs = make_problem([2, 3], 16, 24, seed=4)
    kernel = "auto"
    if case == "dtype":
        x = x.float()
    elif case == "w_dims":
        w = w[0]
    elif case == "k_mismatch":
        x = torch.randn(5, 32).to(torch.bfloat16)
    elif case == "n_mult8":
        w = torch.randn(2, 12, 24).to(torch.bfloat16)
    elif case == "offs_dtype":
        offs = offs.long()
    elif case == "offs_len":
        offs = offs[:2]
    elif case == "noncontig":
        x = torch.randn(24, 5).to(torch.bfloat16).T
    elif case == "offs_first":
        offs = torch.tensor([1, 2, 5], dtype=torch.int32)
    elif case == "offs_decreasing":
        offs = torch.tensor([0, 4, 3], dtype=torch.int32)
        x = torch.randn(3, 24).to(torch.bfloat16)
    elif case == "offs_last":
        offs = torch.tensor([0, 2, 4], dtype=torch.int32)
    elif case == "kernel":
        with pytest.raises(ValueError, match="unknown kernel"):
            gemm_ops.grouped_gemm(x, w, offs, kernel="fastest")
        with pytest.raises(ValueError, match="kernel must be"):
            torch.ops.moebal.grouped_gemm(x, w, offs, 8)
        return
    with pytest.raises(ValueError, match="moebal"):
        gemm_ops.grouped_gemm(x, w, offs, kernel=kernel)


def test_expert_ffn_bad_w2():
    x, w13, offs = make_problem([2, 3], 32, 24, seed=5)
    w2 = torch.randn(2, 24, 8).to(torch.bfloat16)  # ffn is 16
    with pytest.raises(ValueError, match="w2 must be"):
        gemm_ops.expert_ffn(x, w13, w2, offs)


def test_opcheck_cpu():
    x, w, offs = make_problem([3, 0, 5], 16, 24, seed=6)
    torch.library.opcheck(torch.ops.moebal.grouped_gemm, (x, w, offs))
    torch.library.opcheck(torch.ops.moebal.grouped_gemm, (x, w, offs, 1))
    torch.library.opcheck(torch.ops.moebal.grouped_gemm, (x, w, offs, gemm_ops.KERNELS["skinny"]))
    torch.library.opcheck(torch.ops.moebal.grouped_gemm, (x, w, offs, gemm_ops.KERNELS["gemv"]))
    w13 = (torch.randn(3, 32, 24) / 5).to(torch.bfloat16)
    w2 = (torch.randn(3, 24, 16) / 4).to(torch.bfloat16)
    torch.library.opcheck(torch.ops.moebal.expert_ffn, (x, w13, w2, offs))
    torch.library.opcheck(torch.ops.moebal.expert_ffn, (x, w13, w2, offs, gemm_ops.KERNELS["skinny"]))


def test_expert_ffn_bad_kernel():
    x, w13, offs = make_problem([2, 3], 32, 24, seed=8)
    w2 = (torch.randn(2, 24, 16) / 4).to(torch.bfloat16)
    with pytest.raises(ValueError, match="unknown kernel"):
        gemm_ops.expert_ffn(x, w13, w2, offs, kernel="fused")
    with pytest.raises(ValueError, match="kernel must be"):
        torch.ops.moebal.expert_ffn(x, w13, w2, offs, 8)


def test_compile_fullgraph_cpu():
    x, w13, offs = make_problem([3, 0, 5], 32, 24, seed=7)
    w2 = (torch.randn(3, 24, 16) / 4).to(torch.bfloat16)

    def f(x, w13, w2, offs):
        y = gemm_ops.expert_ffn(x, w13, w2, offs)
        return gemm_ops.grouped_gemm(y, w2.transpose(1, 2).contiguous(), offs, kernel="portable")

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x, w13, w2, offs)
    torch.testing.assert_close(got, f(x, w13, w2, offs))


# ----------------------------------------------------------------------------------------------- GPU

def gpu_kernels():
    names = ["auto", "portable", "skinny", "gemv"]
    if HOPPER:
        names += ["hopper_small_m", "hopper_medium_m", "hopper_large_m", "hopper_split"]
    return names


def poisoned_call(fn, out_shape):
    # The op allocates its output: fill a block of the same size with NaN and free it so the caching
    # allocator hands that block to the op; an unwritten row then reads back as NaN. (The C++ suite
    # poisons explicitly.)
    torch.full(out_shape, float("nan"), dtype=torch.bfloat16, device="cuda")
    return fn()


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device and moebal CUDA kernels")
@pytest.mark.parametrize("kernel", gpu_kernels() if GPU else ["auto"])
@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("n,k", [(200, 136), (768, 2048)])
def test_cuda_matches_cpu(kernel, sizes, n, k):
    x, w, offs = make_problem(sizes, n, k, seed=len(sizes) * 13 + n)
    want = torch.ops.moebal.grouped_gemm(x, w, offs)
    xd, wd, od = x.cuda(), w.cuda(), offs.cuda()
    got = poisoned_call(lambda: gemm_ops.grouped_gemm(xd, wd, od, kernel=kernel), (x.shape[0], n))
    assert got.is_cuda and got.shape == want.shape
    assert rel_err(got, want) < tol(k)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device and moebal CUDA kernels")
@pytest.mark.parametrize("kernel", gpu_kernels())
@pytest.mark.parametrize("sizes", [[0, 1, 3, 17, 1031], [1, 0, 0, 0, 0, 0, 0, 0], [300, 2, 1, 0]])
def test_cuda_expert_ffn_matches_cpu(sizes, kernel):
    """Every kernel's FFN, the SwiGLU epilogue included: fused into the gate/up GEMM (skinny, gemv)
    or into the up GEMM after a gate GEMM (portable, CUTLASS)."""
    hidden, ffn = 264, 200
    x, w13, offs = make_problem(sizes, 2 * ffn, hidden, seed=sum(sizes))
    w2 = (torch.randn(len(sizes), hidden, ffn) / math.sqrt(ffn)).to(torch.bfloat16)
    want = torch.ops.moebal.expert_ffn(x, w13, w2, offs)
    got = poisoned_call(lambda: gemm_ops.expert_ffn(x.cuda(), w13.cuda(), w2.cuda(), offs.cuda(), kernel=kernel),
                        x.shape)
    assert rel_err(got, want) < 1.5e-2


DECODE_SIZES = {
    "skinny": [[1], [0, 2, 0, 1], [0, 16, 0], [17], [0, 0, 33], [40, 1, 0, 0, 59]],
    "gemv": [[1], [0, 2, 0, 1], [0, 0, 5, 0, 3], [17], [0, 0, 33], [40, 1, 0, 0, 59]],
}


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device and moebal CUDA kernels")
@pytest.mark.parametrize("kernel,sizes", [(kn, sz) for kn, szs in DECODE_SIZES.items() for sz in szs])
@pytest.mark.parametrize("hidden,ffn", [(40, 24), (2048, 768), (2880, 2880)])
def test_cuda_decode_kernels_match_cpu(kernel, sizes, hidden, ffn):
    """The decode GEMMs (skinny, gemv; both projections) and the FFN on them (gate/up + SiLU fused)
    at decode sizes, model-like shapes; k = 2880 is not a multiple of gemv's 256-element warp load,
    groups of 17+ rows take several passes."""
    x, w13, offs = make_problem(sizes, 2 * ffn, hidden, seed=sum(sizes) + (hidden if kernel == "skinny" else 3 * hidden))
    w2 = (torch.randn(len(sizes), hidden, ffn) / math.sqrt(ffn)).to(torch.bfloat16)
    xd, w13d, w2d, od = x.cuda(), w13.cuda(), w2.cuda(), offs.cuda()
    got = poisoned_call(lambda: gemm_ops.grouped_gemm(xd, w13d, od, kernel=kernel), (x.shape[0], 2 * ffn))
    assert rel_err(got, torch_reference(x, w13, offs)) < tol(hidden)
    a = torch.randn(x.shape[0], ffn).to(torch.bfloat16)
    got = poisoned_call(lambda: gemm_ops.grouped_gemm(a.cuda(), w2d, od, kernel=kernel), (x.shape[0], hidden))
    assert rel_err(got, torch_reference(a, w2, offs)) < tol(ffn)
    want = torch.ops.moebal.expert_ffn(x, w13, w2, offs)
    got = poisoned_call(lambda: gemm_ops.expert_ffn(xd, w13d, w2d, od, kernel=kernel), x.shape)
    assert rel_err(got, want) < 1.5e-2


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device and moebal CUDA kernels")
def test_cuda_opcheck_and_graph_capture():
    x, w, offs = make_problem([5, 0, 70, 1], 64, 96, seed=11, device="cuda")
    torch.library.opcheck(torch.ops.moebal.grouped_gemm, (x, w, offs))
    torch.library.opcheck(torch.ops.moebal.grouped_gemm, (x, w, offs, gemm_ops.KERNELS["skinny"]))
    torch.library.opcheck(torch.ops.moebal.grouped_gemm, (x, w, offs, gemm_ops.KERNELS["gemv"]))
    w13 = (torch.randn(4, 128, 96, device="cuda") / 10).to(torch.bfloat16)
    w2 = (torch.randn(4, 96, 64, device="cuda") / 8).to(torch.bfloat16)
    torch.library.opcheck(torch.ops.moebal.expert_ffn, (x, w13, w2, offs))
    torch.library.opcheck(torch.ops.moebal.expert_ffn, (x, w13, w2, offs, gemm_ops.KERNELS["skinny"]))
    # No host synchronisation: the FFN captures into a CUDA graph; new offsets replay correctly.
    want_first = gemm_ops.expert_ffn(x, w13, w2, offs)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = gemm_ops.expert_ffn(x, w13, w2, offs)
    graph.replay()
    torch.testing.assert_close(y, want_first)
    offs.copy_(offsets_of([0, 60, 15, 1], "cuda"))
    graph.replay()
    want_second = torch.ops.moebal.expert_ffn(x.cpu(), w13.cpu(), w2.cpu(), offs.cpu())
    assert rel_err(y, want_second) < 1.5e-2


@pytest.mark.gpu
@pytest.mark.skipif(not GPU or HOPPER, reason="needs a non-Hopper CUDA device")
def test_cuda_hopper_kernel_rejected_elsewhere():
    x, w, offs = make_problem([2, 3], 16, 24, seed=12, device="cuda")
    with pytest.raises(ValueError, match="compute capability 9.0"):
        gemm_ops.grouped_gemm(x, w, offs, kernel="hopper_small_m")


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device and moebal CUDA kernels")
def test_cuda_bad_tuning_override_is_value_error(monkeypatch):
    """A MOEBAL_* tuning override that is not a valid integer raises ValueError naming it through the
    torch ops too (the C++ layer's moebal::ValueError, not a RuntimeError)."""
    x, w13, offs = make_problem([3, 0, 70], 64, 96, seed=14, device="cuda")
    w2 = (torch.randn(3, 96, 32, device="cuda") / 6).to(torch.bfloat16)
    monkeypatch.setenv("MOEBAL_FFN_SWIGLU_EPILOGUE", "yes")
    with pytest.raises(ValueError, match="MOEBAL_FFN_SWIGLU_EPILOGUE"):
        gemm_ops.expert_ffn(x, w13, w2, offs)
    monkeypatch.delenv("MOEBAL_FFN_SWIGLU_EPILOGUE")
    if HOPPER:
        monkeypatch.setenv("MOEBAL_GEMM_SPLIT_ROWS", "-1")
        with pytest.raises(ValueError, match="MOEBAL_GEMM_SPLIT_ROWS"):
            gemm_ops.grouped_gemm(x, w13, offs, kernel="hopper_split")
        monkeypatch.setenv("MOEBAL_GEMM_SPLIT_ROWS", "16")
        want = torch.ops.moebal.grouped_gemm(x.cpu(), w13.cpu(), offs.cpu())
        assert rel_err(gemm_ops.grouped_gemm(x, w13, offs, kernel="hopper_split"), want) < tol(96)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device and moebal CUDA kernels")
def test_cuda_skinny_graph_replay_with_new_offsets():
    # The skinny kernels find the active groups on the device: a captured graph replays correctly
    # when the routing (offsets) changes, including every row moving to one group.
    x, w13, offs = make_problem([3, 0, 8, 1], 2 * 48, 72, seed=13, device="cuda")
    w2 = (torch.randn(4, 72, 48, device="cuda") / 7).to(torch.bfloat16)
    gemm_ops.expert_ffn(x, w13, w2, offs, kernel="skinny")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = gemm_ops.expert_ffn(x, w13, w2, offs, kernel="skinny")
    for sizes in ([3, 0, 8, 1], [0, 12, 0, 0], [1, 1, 1, 9]):
        offs.copy_(offsets_of(sizes, "cuda"))
        graph.replay()
        want = torch.ops.moebal.expert_ffn(x.cpu(), w13.cpu(), w2.cpu(), offs.cpu())
        assert rel_err(y, want) < 1.5e-2, sizes
