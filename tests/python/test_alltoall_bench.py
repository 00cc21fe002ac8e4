"""bench/alltoall.py: the dispatch split, the received-data check, a real all-to-all over gloo
between CPU processes, and (with two GPUs) over NCCL."""
from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest
from conftest import import_bench

torch = pytest.importorskip("torch")

PATH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "alltoall.py"


@pytest.fixture(scope="module")
def a2a():
    yield from import_bench("alltoall")


@pytest.mark.parametrize("world", [2, 3, 5, 8])
@pytest.mark.parametrize("tokens", [1, 7, 64, 1001])
def test_every_row_leaves_its_rank_evenly(a2a, world, tokens):
    table = [a2a.splits(tokens, world, r) for r in range(world)]
    for r, row in enumerate(table):
        assert sum(row) == tokens and row[r] == 0
        others = [row[j] for j in range(world) if j != r]
        assert max(others) - min(others) <= 1
    # what each rank receives adds up to what was sent to it
    assert sum(sum(table[j][r] for j in range(world)) for r in range(world)) == world * tokens


def test_expected_rows_are_the_senders_rows(a2a):
    world, tokens, hidden = 3, 10, 4
    got = a2a.expected(1, world, tokens, hidden, torch.float32, "cpu")
    # rank 0 sends rank 1 its first 5 rows (ring order from rank 0 + 1), rank 2 sends its rows
    # addressed to ranks 0 then 1: rank 0 takes the first 5, rank 1 the next 5
    want = torch.cat([a2a.rows_of(0, tokens, hidden, torch.float32, "cpu")[:5],
                      a2a.rows_of(2, tokens, hidden, torch.float32, "cpu")[5:10]])
    assert torch.equal(got, want)
    # senders, rows and columns are told apart, and the values are exact in bf16
    x = a2a.rows_of(0, 50, 8, torch.float32, "cpu")
    assert torch.equal(x.to(torch.bfloat16).float(), x)
    assert not torch.equal(x, a2a.rows_of(1, 50, 8, torch.float32, "cpu"))
    assert len({tuple(r) for r in x.tolist()}) > 40


def test_gloo_all_to_all_between_cpu_processes(a2a, tmp_path, capsys):
    out = tmp_path / "a2a.json"
    rc = a2a.main(["--backend", "gloo", "--world", "3", "--tokens", "1,5,64", "--hidden", "16",
                   "--dtype", "float32", "--reps", "3", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [r["tokens"] for r in res["rows"]] == [1, 5, 64]
    for r in res["rows"]:
        assert r["correct"] and r["us_slowest_rank"] > 0
        assert r["bytes_per_rank"] == r["tokens"] * 16 * 4
    assert "| 64 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["--backend", "gloo", "--world", "1"], "--world must be >= 2"),
    (["--backend", "gloo", "--tokens", "0"], "--tokens must be positive"),
    (["--backend", "gloo", "--tokens", "a,b"], "comma-separated integers"),
    (["--backend", "gloo", "--reps", "0"], "must be >= 1"),
])
def test_bad_arguments(a2a, capsys, argv, msg):
    with pytest.raises(SystemExit):
        a2a.parse(argv)
    assert msg in capsys.readouterr().err


def test_nccl_needs_a_gpu_per_rank(a2a, capsys):
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(SystemExit):
        a2a.parse(["--backend", "nccl", "--world", str(max(2, n + 1))])
    assert "needs one GPU per rank" in capsys.readouterr().err


def test_a_failing_rank_is_reported_not_waited_for(a2a):
    # hidden 0 is refused by parse(); passed straight to run(), every worker fails at the first
    # collective or before, and the parent must return with the error instead of hanging
    args = a2a.parse(["--backend", "gloo", "--world", "2", "--tokens", "4", "--hidden", "8", "--reps", "1",
                      "--dtype", "float32"])
    args.dtype = "no_such_dtype"
    args.timeout = 60.0
    with pytest.raises(RuntimeError, match="rank"):
        a2a.run(args)


def test_nccl_all_to_all_on_two_gpus(a2a, tmp_path):
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    out = tmp_path / "a2a.json"
    assert a2a.main(["--world", "2", "--tokens", "16,1024", "--hidden", "512", "--reps", "3", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["backend"] == "nccl" and all(r["correct"] and r["us_slowest_rank"] > 0 for r in res["rows"])


def test_predictor_benchmark_reads_the_measured_dispatch(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_probe_predictor", PATH.parent / "probe_predictor.py")
    pp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pp)
    res = {"backend": "nccl", "world": 2, "hidden": 4096, "dtype": "bfloat16", "device": "x",
           "rows": [{"tokens": 1024, "us_single_slowest_rank": 90.0, "us_slowest_rank": 80.0},
                    {"tokens": 8192, "us_single_slowest_rank": 300.0, "us_slowest_rank": 280.0}]}
    path = tmp_path / "a2a.json"
    path.write_text(json.dumps(res))
    m = pp.measured_dispatch(str(path), 8192, 4096)
    assert (m["us"], m["us_back_to_back"], m["world"]) == (300.0, 280.0, 2)
    with pytest.raises(SystemExit, match="no row for 4096 tokens"):
        pp.measured_dispatch(str(path), 4096, 4096)
    with pytest.raises(SystemExit, match="need 7168 bfloat16"):
        pp.measured_dispatch(str(path), 8192, 7168)
    with pytest.raises(SystemExit, match="cannot read"):
        pp.measured_dispatch(str(tmp_path / "missing.json"), 8192, 4096)
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(SystemExit, match="not a bench/alltoall.py result"):
        pp.measured_dispatch(str(tmp_path / "bad.json"), 8192, 4096)
