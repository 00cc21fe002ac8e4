"""bench/ep_decode.py: the decode-size expert-parallel benchmark runs end to end over gloo (eager
exchanges) and, with two GPUs, over NCCL with the dense exchange replayed from a CUDA graph; every
output is checked against the single-process layer; bad arguments are refused before any process
starts."""
import json

import pytest
from conftest import import_bench

torch = pytest.importorskip("torch")
pytest.importorskip("moebal.moe_ops")


@pytest.fixture(scope="module")
def dec():
    yield from import_bench("ep_decode")


def test_gloo_run(dec, tmp_path, capsys):
    out = tmp_path / "dec.json"
    assert dec.main(["--backend", "gloo", "--world", "2", "--expert-shape", "64,32", "--tokens", "1,5",
                     "--layers", "2", "--iters", "2", "--reps", "1", "--warmup", "0", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["results_correct"] and set(res["table"]) == {"1", "5"}
    for row in res["table"].values():
        assert set(row) == {"rows", "dedup", "dense"}
        for v in row.values():
            assert len(v["per_layer"]) == 2 and v["us_per_layer"] > 0 and v["max_rel_err"] < 2e-2
    assert "| 5 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--tokens", "0,4"], "--tokens takes positive integers"),
    (["--tokens", "x"], "--tokens takes positive integers"),
    (["--tokens", "5000"], "per rank: the evaluation steps hold"),
    (["--layers", "13"], "the trace has 12"),
    (["--variants", "dense-graph"], "needs --backend nccl"),
    (["--variants", "rows,rows"], "each at most once"),
    (["--variants", "fused"], "--variants takes"),
    (["--policy", "nope"], "unknown policy"),
    (["--iters", "0"], "--iters, --reps and --layers"),
    (["--expert-shape", "60,32"], "multiples of 8"),
])
def test_bad_arguments(dec, argv, match, capsys):
    with pytest.raises(SystemExit):
        dec.parse(["--backend", "gloo"] + argv)
    assert match in capsys.readouterr().err


def test_nccl_run_on_two_gpus(dec, tmp_path):
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    out = tmp_path / "dec.json"
    assert dec.main(["--world", "2", "--tokens", "1,16", "--layers", "2", "--iters", "3", "--reps", "2",
                     "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["results_correct"] and all("dense-graph" in row for row in res["table"].values())
