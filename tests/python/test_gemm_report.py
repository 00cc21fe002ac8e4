"""bench/kernels_gemm_report.py: the regime summary and target counts come from the JSON rows; and
bench/kernels_gemm.py refuses a misspelt argument before any GPU work."""
import importlib.util
import json
import pathlib

import pytest

REPORT = pathlib.Path(__file__).resolve().parents[2] / "bench" / "kernels_gemm_report.py"


def load_report():
    spec = importlib.util.spec_from_file_location("kernels_gemm_report", REPORT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def row(impl, op, rows, active, time_us, frac, sus=None, model="m", tokens=1):
    r = dict(model=model, tokens=tokens, routing="balanced", op=op, impl=impl, rows=rows, active=active, experts=8,
             n=64, k=64, time_us=time_us, tflops=1.0, tbps=1.0, floor_us=frac * time_us, frac_floor=frac)
    if sus is not None:
        r["frac_sustained"] = sus
    return r


def test_regime_summary_counts(tmp_path, capsys):
    rep = load_report()
    results = [
        # decode (8 rows over 8 experts): meets 0.85 by both rates; loop 2x slower, the copy 2x faster
        row("moebal_auto", "w13", 8, 8, 10.0, 0.90, 0.90), row("torch_grouped_mm", "w13", 8, 8, 12.0, 0.75),
        row("torch_matmul_loop", "w13", 8, 8, 20.0, 0.45), row("copy_same_bytes", "w13", 8, 8, 5.0, 1.0),
        # prefill (8192 rows over 8 experts): misses 0.85 on the burst rate, meets it on the sustained one
        row("moebal_auto", "w2", 8192, 8, 100.0, 0.80, 0.90), row("torch_grouped_mm", "w2", 8192, 8, 90.0, 0.89),
        # a single active expert is left out of the floor target
        row("moebal_auto", "w13", 8, 1, 10.0, 0.10, 0.10, tokens=2), row("torch_grouped_mm", "w13", 8, 1, 10.0, 0.1, tokens=2),
    ]
    path = tmp_path / "g.json"
    path.write_text(json.dumps(dict(device="d", torch="t", hbm_bps=3e12, mm_flops=8e14, mm_flops_sustained=7e14,
                                    sustained_sm_clock_mhz=1500.0, sustained_power_w=690.0, results=results)))
    rep.main(str(path))
    out = capsys.readouterr().out
    assert "sustained (1 s back to back) 700 TFLOP/s at 1500.0 MHz" in out
    assert "Target >= 0.85 of the floor (GEMM rows with >= 2 active experts): 1 of 2 hold." in out
    # grouped_mm is faster on the prefill row (90 vs 100 us): 0.90x, below 0.95x
    assert "Target >= 0.95x grouped_mm (all GEMM rows): 2 of 3 hold." in out
    lines = {l.split("|")[1].strip(): l for l in out.splitlines() if l.startswith("| decode") or l.startswith("| prefill")}
    assert lines["decode"].rstrip().endswith("| 1 | 1 |") and "2.00 / 2.00 / 2.00" in lines["decode"]
    assert "| 0.50 / 0.50 / 0.50 |" in lines["decode"]  # copy / moebal
    assert lines["prefill"].rstrip().endswith("| 0 | 1 |")
    assert rep.regime_of(dict(rows=16, active=1)) == "decode" and rep.regime_of(dict(rows=17, active=1)) == "middle"
    assert rep.regime_of(dict(rows=513, active=1)) == "prefill"


def load_bench():
    pytest.importorskip("torch")
    pytest.importorskip("moebal.gemm_ops")
    path = REPORT.parent / "kernels_gemm.py"
    spec = importlib.util.spec_from_file_location("kernels_gemm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_arguments_checked_before_gpu_work(capsys):
    """A misspelt variant, model or routing, or a bad token list, stops kernels_gemm.py with a clear
    argparse error (no GPU needed: parse_args runs before any CUDA call)."""
    bench = load_bench()
    args = bench.parse_args(["--variants", "copy,loop", "--models", "deepseek-v3", "--tokens", "1,128"])
    assert args.variants == {"copy", "loop"} and args.models == ["deepseek-v3"] and args.tokens == [1, 128]
    assert bench.parse_args(["--variants", ""]).variants == set()
    for argv, needle in ((["--variants", "forced,cpy"], "unknown variant cpy"),
                         (["--models", "mixtral"], "unknown model mixtral"),
                         (["--routing", "skewed"], "unknown routing skewed"),
                         (["--tokens", "1,x"], "comma-separated integers"),
                         (["--tokens", "0"], "token counts >= 1")):
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(argv)
        assert exc.value.code == 2
        assert needle in capsys.readouterr().err
