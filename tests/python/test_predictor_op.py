"""moebal::probe_predict: CPU reference vs plain torch, fake kernel / opcheck / torch.compile, bad
input, and the CUDA kernel vs the CPU kernel."""
import pytest

torch = pytest.importorskip("torch")

from moebal import ops  # noqa: E402
from moebal.predictor_ops import probe_predict  # noqa: E402
from op_env import op_env  # noqa: E402

HAVE_OPS, _ = op_env()
pytestmark = pytest.mark.skipif(not HAVE_OPS, reason="moebal torch ops not built")


def make(T, H, E, D, dtype=torch.float32, device="cpu", bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(T, H, generator=g)
    w_cat = torch.randn(E + D, H, generator=g) * H ** -0.5
    w2 = torch.randn(E, D, generator=g) * max(D, 1) ** -0.5
    b = torch.randn(E, generator=g) * 0.1 if bias else None
    cast = lambda x: x.to(device=device, dtype=dtype).contiguous()  # noqa: E731
    return cast(h), cast(w_cat), (b.to(device) if b is not None else None), cast(w2)


def reference(h, w_cat, b, w2, E, k):
    """float64 math on the same (possibly bf16-rounded) GEMM outputs as the op."""
    x = h @ w_cat.t()
    logits = x[:, :E].double()
    if b is not None:
        logits = logits + b.double()
    if w2.shape[1]:
        logits = logits + (torch.nn.functional.silu(x[:, E:]) @ w2.t()).double()
    return logits


def check_against(logits_ref, out, k, atol, min_clear=0.9):
    logits, ids, scores, counts = out
    E = logits.shape[1]
    torch.testing.assert_close(logits.double(), logits_ref, atol=atol, rtol=0)
    # chosen ids: decreasing logit order; a token whose k-th / (k+1)-th gap is below atol may differ
    srt = logits_ref.sort(1, descending=True).values
    gap = (srt[:, k - 1] - srt[:, k]) if k < E else torch.full((logits.shape[0],), 1e9, dtype=torch.float64)
    clear = gap > 4 * atol
    ref_ids = logits_ref.topk(k, 1).indices
    assert torch.equal(ids[clear].long().sort(1).values, ref_ids[clear].sort(1).values)
    assert clear.float().mean() > min_clear
    probs = torch.softmax(logits_ref, 1)
    torch.testing.assert_close(scores.double(), probs.gather(1, ids.long()), atol=1e-5 + atol, rtol=1e-4)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    assert torch.equal(counts, torch.bincount(ids.reshape(-1).long(), minlength=E).int())


@pytest.mark.parametrize("T,H,E,D,k", [(1, 8, 4, 0, 1), (19, 33, 16, 7, 4), (99, 64, 64, 32, 8), (257, 48, 130, 0, 16),
                                       (5, 16, 1024, 3, 32), (33, 17, 97, 1, 31)])
def test_cpu_matches_reference(T, H, E, D, k):
    h, w_cat, b, w2 = make(T, H, E, D, seed=T)
    out = probe_predict(h, w_cat, b, w2, E, k)
    assert [o.dtype for o in out] == [torch.float32, torch.int32, torch.float32, torch.int32]
    assert out[0].shape == (T, E) and out[1].shape == (T, k) and out[3].shape == (E,)
    check_against(reference(h, w_cat, b, w2, E, k), out, k, atol=1e-4)


def test_ties_take_lower_id():
    E, k = 8, 3
    h = torch.zeros(2, 4)
    w_cat = torch.zeros(E, 4)
    out = probe_predict(h, w_cat, None, torch.zeros(E, 0), E, k)
    assert out[1].tolist() == [[0, 1, 2], [0, 1, 2]]
    torch.testing.assert_close(out[2], torch.full((2, k), 1 / E))
    assert out[3].tolist() == [2, 2, 2, 0, 0, 0, 0, 0]


def test_zero_tokens():
    h, w_cat, b, w2 = make(0, 8, 4, 2)
    out = probe_predict(h, w_cat, b, w2, 4, 2)
    assert out[1].shape == (0, 2) and out[3].tolist() == [0, 0, 0, 0]


def test_bf16_cpu():
    h, w_cat, b, w2 = make(37, 64, 32, 16, dtype=torch.bfloat16)
    out = probe_predict(h, w_cat, b, w2, 32, 4)
    check_against(reference(h, w_cat, b, w2, 32, 4), out, 4, atol=2e-2, min_clear=0.3)


@pytest.mark.parametrize("bad,match", [
    (lambda a: dict(a, hidden=a["hidden"][None]), "hidden must be"),
    (lambda a: dict(a, hidden=a["hidden"].double()), "float32 or bfloat16"),
    (lambda a: dict(a, w_cat=a["w_cat"][:, :-1].contiguous()), "mismatched hidden size"),
    (lambda a: dict(a, w2=a["w2"][:, :-1].contiguous()), "w2 must be"),
    (lambda a: dict(a, w2=a["w2"].to(torch.bfloat16)), "dtype"),
    (lambda a: dict(a, bias=a["bias"].double()), "bias must be"),
    (lambda a: dict(a, bias=a["bias"][:-1]), "bias must be"),
    (lambda a: dict(a, k=0), "k must be"),
    (lambda a: dict(a, k=9), "k must be"),
    (lambda a: dict(a, num_experts=2000), "num_experts"),
    (lambda a: dict(a, hidden=a["hidden"].t().contiguous().t()), "contiguous"),
])
def test_bad_input(bad, match):
    h, w_cat, b, w2 = make(6, 8, 8, 4)
    a = bad(dict(hidden=h, w_cat=w_cat, bias=b, w2=w2, num_experts=8, k=2))
    with pytest.raises(ValueError, match=match):
        probe_predict(a["hidden"], a["w_cat"], a["bias"], a["w2"], a["num_experts"], a["k"])


def test_opcheck_and_compile():
    h, w_cat, b, w2 = make(13, 16, 12, 5)
    torch.library.opcheck(torch.ops.moebal.probe_predict.default, (h, w_cat, b, w2, 12, 3))
    torch.library.opcheck(torch.ops.moebal.probe_predict.default, (h, w_cat[:12].contiguous(), None, torch.zeros(12, 0), 12, 3))

    def f(h, w_cat, b, w2):
        logits, ids, scores, counts = probe_predict(h, w_cat, b, w2, 12, 3)
        return counts.sum() + scores.sum()

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(h, w_cat, b, w2)
    torch.testing.assert_close(got, f(h, w_cat, b, w2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("T,H,E,D,k", [(1, 64, 8, 0, 2), (19, 96, 64, 32, 8), (1000, 128, 128, 64, 8),
                                       (77, 40, 257, 5, 16), (33, 64, 1024, 0, 32)])
def test_cuda_matches_cpu(T, H, E, D, k):
    if not ops.has_cuda_kernels():
        pytest.skip("moebal built without CUDA kernels")
    h, w_cat, b, w2 = make(T, H, E, D, seed=T + E)
    cpu = probe_predict(h, w_cat, b, w2, E, k)
    gpu = probe_predict(h.cuda(), w_cat.cuda(), b.cuda(), w2.cuda(), E, k)
    # 1024 random logits leave small k-th/(k+1)-th gaps: only half the tokens are clear of the tolerance
    check_against(reference(h, w_cat, b, w2, E, k), [x.cpu() for x in gpu], k, atol=1e-3, min_clear=0.5)
    assert int(gpu[3].sum()) == T * k
    same = (gpu[1].cpu() == cpu[1]).all(1).float().mean()
    assert same > 0.95
    hb, wb, w2b = h.cuda().bfloat16(), w_cat.cuda().bfloat16(), w2.cuda().bfloat16()
    gpu_bf = probe_predict(hb, wb, b.cuda(), w2b, E, k)
    cpu_bf = probe_predict(hb.cpu(), wb.cpu(), b, w2b.cpu(), E, k)
    torch.testing.assert_close(gpu_bf[0].cpu(), cpu_bf[0], atol=5e-2, rtol=0)
    assert torch.equal(gpu_bf[3].cpu(), torch.bincount(gpu_bf[1].cpu().reshape(-1).long(), minlength=E).int())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("E", [8, 40, 130])
def test_cuda_ties_signed_zero_and_nan(E):
    """Exact logits through an identity router: equal values (also -0 / +0, also across the lanes
    of the warp) go to the lower expert id, as on the CPU; a NaN logit (here from the bias) ranks
    below every number."""
    if not ops.has_cuda_kernels():
        pytest.skip("moebal built without CUDA kernels")
    rows = torch.full((2, E), -5.0)
    rows[0, 0], rows[0, 1] = -0.0, 0.0                       # -0 == +0: expert 0 first
    tied = sorted({E - 1, 3, min(35, E - 2)})                # equal maxima in different lanes / slots
    rows[1, tied] = 2.5
    eye, no_w2 = torch.eye(E), torch.zeros(E, 0)
    k = min(E, 32)  # kProbeMaxTopK
    gpu = probe_predict(rows.cuda(), eye.cuda(), None, no_w2.cuda(), E, k)
    ids = gpu[1].cpu()
    assert ids[0, :2].tolist() == [0, 1] and ids[1, :3].tolist() == tied
    assert torch.equal(ids, probe_predict(rows, eye, None, no_w2, E, k)[1])
    bias = torch.zeros(E)
    bias[0] = float("nan")
    rows[:, E - 1] = 7.0
    gpu = probe_predict(rows.cuda(), eye.cuda(), bias.cuda(), no_w2.cuda(), E, k)
    ids = gpu[1].cpu()
    assert (ids[:, 0] == E - 1).all()
    if k == E:
        assert (ids[:, -1] == 0).all()   # NaN last
    else:
        assert not (ids == 0).any()      # NaN below every number: not among the k largest
    for t in range(2):
        assert len(set(ids[t].tolist())) == k and 0 <= int(ids[t].min()) and int(ids[t].max()) < E
    assert torch.equal(gpu[3].cpu(), torch.bincount(ids.reshape(-1).long(), minlength=E).int())
