"""bench/ep_layer.py: the expert-parallel layer benchmark runs end to end over gloo on the shipped
reference-MoE trace, checks every rank's output against the single-process layer, and refuses bad
arguments before starting any process."""
import json

import pytest
from conftest import import_bench

torch = pytest.importorskip("torch")
pytest.importorskip("moebal.moe_ops")

@pytest.fixture(scope="module")
def ep():
    yield from import_bench("ep_layer")


def test_gloo_run(ep, tmp_path, capsys):
    out = tmp_path / "ep.json"
    assert ep.main(["--backend", "gloo", "--world", "2", "--expert-shape", "64,32", "--repeat", "1", "--reps", "1",
                    "--warmup", "0", "--eval-steps", "3:4", "--policies", "contiguous,eplb", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["results_correct"] and res["tokens_per_rank"] == 512 and set(res["policies"]) == {"contiguous", "eplb"}
    for p, t in res["policies"].items():
        assert len(t["per_layer"]) == 12 and t["rows_ir_mean"] >= 1.0 and t["us_sum"] > 0
        assert t["max_rel_err"] < 2e-2
    assert res["policies"]["contiguous"]["slots"] == 64 and res["policies"]["eplb"]["slots"] == 66
    assert "| eplb | rows | 66 |" in capsys.readouterr().out


def test_gloo_run_one_row_per_token_and_rank(ep, tmp_path):
    out = tmp_path / "ep.json"
    assert ep.main(["--backend", "gloo", "--world", "2", "--expert-shape", "64,32", "--repeat", "1", "--reps", "1",
                    "--warmup", "0", "--eval-steps", "3:4", "--policies", "balanced", "--exchange", "rows,dedup",
                    "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["exchange"] == ["rows", "dedup"] and res["results_correct"]
    rows, dedup = res["policies"]["balanced"], res["policies"]["balanced+dedup"]
    assert rows["max_rel_err"] < 2e-2 and dedup["max_rel_err"] < 2e-2
    assert rows["rows_ir_mean"] == dedup["rows_ir_mean"]  # the same expert work
    # top-8 over 2 ranks: a token meets at most 2 ranks, so dedup puts at most 2 of its 8 rows on the wire
    assert rows["wire_rows_mean"] == 512 * 8
    assert 512 <= dedup["wire_rows_mean"] <= 2 * 512


@pytest.mark.parametrize("argv,match", [
    (["--plan-steps", "2:1"], "BEGIN < END"),
    (["--eval-steps", "x"], "BEGIN:END"),
    (["--eval-steps", "3:9"], "exceeds the trace's 4 steps"),
    (["--policies", "nope"], "unknown"),
    (["--expert-shape", "60,32"], "multiples of 8"),
    (["--world", "1"], "--world must be >= 2"),
    (["--world", "3", "--extra-per-gpu", "1"], "do not divide over 3 ranks"),
    (["--repeat", "0"], "--repeat and --reps"),
    (["--exchange", "rows,rows"], "--exchange takes rows, dedup, dense"),
    (["--exchange", "fused"], "--exchange takes rows, dedup, dense"),
    (["--trace", "/nonexistent.npz"], "no such file"),
])
def test_bad_arguments(ep, argv, match, capsys):
    with pytest.raises(SystemExit):
        ep.parse(["--backend", "gloo"] + argv)
    assert match in capsys.readouterr().err


def test_nccl_needs_gpus(ep, capsys):
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(SystemExit):
        ep.parse(["--backend", "nccl", "--world", str(max(2, n + 1))])
    assert "one GPU per rank" in capsys.readouterr().err


def test_nccl_run_on_two_gpus(ep, tmp_path):
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    out = tmp_path / "ep.json"
    assert ep.main(["--world", "2", "--repeat", "2", "--reps", "3", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["results_correct"]
    assert all(t["experts_us_sum"] > 0 for t in res["policies"].values())
