"""Measured per-GPU expert models (moebal.perf, `moebal profile`, `moebal plan --perf`): file format,
errors, the vibe policy on measured models, and (with a GPU) the measurement itself."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from moebal import _core, perf, policies
from moebal.cli import main

TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]


def roofline_us(n, read_us=30.0, per_token=0.12):
    return max(read_us, per_token * n) + 3.0  # a weight-read floor, a compute slope, a launch share


def perf_dict(slowdowns=(1.0,), shape=(2048, 768)):
    gpus = []
    for i, s in enumerate(slowdowns):
        micros = [s * roofline_us(n) for n in TOKENS]
        m = perf.fit_model(TOKENS, micros)
        gpus.append({"index": i, "name": "test", "tokens": TOKENS, "micros": micros,
                     "knot_tokens": list(m.knot_tokens), "knot_micros": list(m.knot_micros)})
    return {"format": perf.FORMAT, "version": perf.VERSION, "date": "now", "torch": "x",
            "shape": {"hidden": shape[0], "ffn": shape[1], "dtype_bytes": 2}, "gpus": gpus}


def test_fit_save_load_round_trip(tmp_path):
    d = perf_dict((1.0, 1.2))
    perf.save_models(str(tmp_path / "p.json"), d)
    models, shape = perf.load_models(str(tmp_path / "p.json"))
    assert (shape.hidden, shape.ffn, shape.dtype_bytes) == (2048, 768, 2) and len(models) == 2
    for n in TOKENS:  # the fit follows the samples (max(), a kink, fitted with 8 knots)
        assert models[0].time_us(n) == pytest.approx(roofline_us(n), rel=0.08)
        assert models[1].time_us(n) == pytest.approx(1.2 * models[0].time_us(n), rel=1e-6)


@pytest.mark.parametrize("edit, msg", [
    (lambda d: d.update(format="other"), "not a moebal perf-model file"),
    (lambda d: d.update(version=99), "version 99 is not supported"),
    (lambda d: d.pop("shape"), "bad 'shape'"),
    (lambda d: d["shape"].update(hidden=0), "bad 'shape'"),
    (lambda d: d.update(gpus=[]), "'gpus' must be a non-empty list"),
    (lambda d: d["gpus"][1].pop("knot_micros"), "gpus[1] has no valid knot_tokens"),
    (lambda d: d["gpus"][0].update(knot_tokens=[4.0, 2.0], knot_micros=[1.0, 2.0]), "gpus[0]: perf model: knot tokens must strictly increase"),
    (lambda d: d["gpus"][0].update(knot_micros=[float("nan")] * len(d["gpus"][0]["knot_tokens"])), "gpus[0]: perf model: knot 0 has time nan"),
])
def test_malformed_files_name_the_field(tmp_path, edit, msg):
    d = perf_dict((1.0, 1.1))
    edit(d)
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(_core.MoebalValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        perf.load_models(str(tmp_path / "p.json"))
    with pytest.raises(_core.MoebalValueError):
        perf.save_models(str(tmp_path / "q.json"), d)  # never writes what it cannot read back
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(_core.MoebalValueError, match="not JSON"):
        perf.load_models(str(tmp_path / "bad.json"))


def test_models_for_gpus():
    models, _ = perf.models_from_dict(perf_dict((1.0, 1.1, 1.2, 1.3)))
    assert perf.models_for_gpus(models, 4) == models
    one, _ = perf.models_from_dict(perf_dict())
    scaled = perf.models_for_gpus(one, 3, [1.0, 1.5, 2.0])
    assert [m.time_us(100) for m in scaled] == pytest.approx([one[0].time_us(100) * s for s in (1.0, 1.5, 2.0)])
    with pytest.raises(_core.MoebalValueError, match="has 4 GPU models; need 1"):
        perf.models_for_gpus(models, 8)
    with pytest.raises(_core.MoebalValueError, match="already has one model per GPU"):
        perf.models_for_gpus(models, 4, [1.0, 1.1, 1.0, 1.0])
    with pytest.raises(_core.MoebalValueError, match="2 slowdowns for 3 GPUs"):
        perf.models_for_gpus(one, 3, [1.0, 1.1])


def test_vibe_on_measured_models_unloads_the_slow_gpu(tmp_path):
    # GPU 0 measured 40% slower than the other seven: vibe gives it less work than eplb does and
    # predicts a shorter step; on equal models the two agree on the slowest GPU's time
    rng = np.random.default_rng(3)
    loads = _core.LoadMatrix(rng.gamma(0.7, 400, size=(6, 64)))
    path = tmp_path / "p.json"
    perf.save_models(str(path), perf_dict((1.4,) + (1.0,) * 7))
    topo = perf.topology_from_file(str(path), 1, 8)
    kw = dict(num_slots=72, num_gpus=8, topology=topo)
    vibe, eplb = policies.plan("vibe", loads, **kw), policies.plan("eplb", loads, **kw)
    t_vibe = _core.layer_step_times(loads, vibe, topo.gpu_models)
    t_eplb = _core.layer_step_times(loads, eplb, topo.gpu_models)
    assert (t_vibe <= t_eplb + 1e-9).all() and t_vibe.sum() < 0.95 * t_eplb.sum()
    share0 = lambda p: _core.gpu_loads(loads, p)[:, 0].sum() / _core.gpu_loads(loads, p).sum()  # noqa: E731
    assert share0(vibe) < 0.9 * share0(eplb)


def test_cli_plan_with_measured_models(tmp_path, capsys):
    np.save(tmp_path / "w.npy", np.random.default_rng(1).gamma(0.5, 10, size=(3, 16)))
    w = str(tmp_path / "w.npy")
    perf.save_models(str(tmp_path / "one.json"), perf_dict())
    perf.save_models(str(tmp_path / "four.json"), perf_dict((1.0, 1.1, 1.2, 1.3)))
    assert main(["plan", w, "--gpus", "4", "--policy", "vibe", "--extra-per-gpu", "1", "--perf",
                 str(tmp_path / "four.json")]) == 0
    assert "step us" in capsys.readouterr().out
    assert main(["plan", w, "--gpus", "4", "--policy", "vibe", "--perf", str(tmp_path / "one.json"),
                 "--speed-spread", "0.1"]) == 0
    capsys.readouterr()
    assert main(["plan", w, "--gpus", "8", "--perf", str(tmp_path / "four.json")]) == 2
    assert "has 4 GPU models; need 1 (used for every GPU) or 8" in capsys.readouterr().err
    assert main(["plan", w, "--gpus", "4", "--perf", str(tmp_path / "four.json"), "--speed-spread", "0.1"]) == 2
    assert "--speed-spread applies to a single measured model" in capsys.readouterr().err
    assert main(["plan", w, "--gpus", "4", "--perf", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_measurement_errors_without_a_usable_device():
    shape = _core.ExpertShape(512, 256, 2)
    with pytest.raises(_core.MoebalValueError, match="strictly increasing"):
        perf.measure_expert_times(shape, [4, 2])
    with pytest.raises(_core.MoebalValueError, match="dtype_bytes 2"):
        perf.measure_expert_times(_core.ExpertShape(512, 256, 1), [1, 2])
    with pytest.raises(_core.MoebalValueError, match="calls and reps must be >= 1"):
        perf.measure_expert_times(shape, [1, 2], calls=0)
    with pytest.raises(_core.MoebalValueError, match="groups must be >= 1"):
        perf.measure_expert_times(shape, [1, 2], groups=0)
    with pytest.raises(_core.MoebalValueError, match="strictly increasing"):
        perf.measure_gpu_models(shape, [0], [0, 1]) if _cuda_visible() else perf._check_tokens([0, 1])
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        with pytest.raises(_core.MoebalValueError, match="needs a CUDA device"):
            perf.measure_expert_times(shape, [1, 2])


def _cuda_visible() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_cli_profile_rejects_bad_arguments_before_measuring(capsys):
    assert main(["profile", "--expert-shape", "2048"]) == 2
    assert "hidden,ffn" in capsys.readouterr().err
    assert main(["profile", "--expert-shape", "2048,768", "--tokens", "1,x"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err
    assert main(["profile", "--expert-shape", "2048,768", "--devices", "a"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_default_groups():
    assert perf.default_groups(_core.ExpertShape(7168, 2048, 2)) == 8          # 88 MB experts
    assert perf.default_groups(_core.ExpertShape(2048, 768, 2)) == 29          # 9.4 MB experts: 256 MiB / 9.4 MB = 28.4
    assert perf.default_groups(_core.ExpertShape(64, 64, 2)) == 256            # capped


def _gpu():
    torch = pytest.importorskip("torch")
    from op_env import op_env

    if not op_env()[1]:
        pytest.skip("needs a CUDA device and moebal CUDA kernels")
    return torch


def test_gpu_measurement_and_fit(tmp_path):
    _gpu()
    shape = _core.ExpertShape(1024, 512, 2)
    tokens = [1, 8, 64, 512, 2048]
    data = perf.measure_gpu_models(shape, [0], tokens, calls=3, reps=5)
    g = data["gpus"][0]
    us = np.array(g["micros"])
    assert g["index"] == 0 and (us > 0).all() and np.isfinite(us).all()
    # weight-read bound at few tokens, compute grows it at many: 2048 tokens cost more than 1
    assert us[-1] > 1.5 * us[0]
    # an expert copy costs at least reading its weights (3 MiB) at under 4 TB/s
    assert us[0] > shape.weight_bytes / 4e12 * 1e6
    perf.save_models(str(tmp_path / "p.json"), data)
    models, _ = perf.load_models(str(tmp_path / "p.json"))
    for n, t in zip(tokens, us):
        assert models[0].time_us(n) == pytest.approx(t, rel=0.3)


def test_cli_demo_with_measured_models(tmp_path, capsys):
    one, per_gpu = tmp_path / "one.json", tmp_path / "eight.json"
    perf.save_models(str(one), perf_dict())
    perf.save_models(str(per_gpu), perf_dict((1.3,) + (1.0,) * 7))
    # one model per GPU: the demo's default spread (7%) does not apply
    assert main(["demo", "--no-plot", "--no-progress", "--perf", str(per_gpu), "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"models measured by moebal profile ({per_gpu}), slowdowns up to 0%" in out and "vibe" in out
    assert main(["demo", "--no-plot", "--no-progress", "--perf", str(one), "--out-dir", str(tmp_path)]) == 0
    assert "slowdowns up to 7%" in capsys.readouterr().out
    assert main(["demo", "--no-plot", "--no-progress", "--perf", str(per_gpu), "--speed-spread", "0.1",
                 "--out-dir", str(tmp_path)]) == 2
    assert "--speed-spread applies to a single measured model" in capsys.readouterr().err


def _solvers_bench():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "solvers.py"
    spec = importlib.util.spec_from_file_location("bench_solvers", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_solvers"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_solver_benchmark_on_measured_models(tmp_path, capsys):
    b = _solvers_bench()
    m = b.MODELS[3]  # Mixtral-8x7B: 8 experts, small and fast
    per_gpu = tmp_path / "four.json"
    perf.save_models(str(per_gpu), perf_dict((1.0, 1.1, 1.2, 1.3), shape=m.shape[:2]))
    with pytest.raises(SystemExit):
        b.main(["--perf", str(per_gpu)])  # one model per shape only
    assert "this benchmark scales one model per shape" in capsys.readouterr().err
    for argv, msg in ((["--only-measured"], "needs --perf"), (["--roofline"], "goes with --only-measured")):
        with pytest.raises(SystemExit):
            b.main(argv)
        assert msg in capsys.readouterr().err
    one = perf.models_from_dict(perf_dict(shape=m.shape[:2]))[0][0]
    plan_w, eval_w = b.make_loads("zipf", m, seed=103)
    res = {}
    for measured in (False, True):
        b.MEASURED.clear()
        if measured:
            b.MEASURED[m.shape[:2]] = one
        res[measured] = b.run_config(m, 8, 1, 1, "zipf", plan_w, eval_w, [], [])
    b.MEASURED.clear()
    r = res[True]
    assert r["measured"] and r["time_lb"] is None and not res[False]["measured"]
    assert r["rows"]["vibe"]["step"][0.07] <= r["rows"]["eplb"]["step"][0.07] * (1 + 1e-9)
    # the measured model, not the roofline, prices the plans: the predicted times differ
    assert r["rows"]["eplb"]["step"][0.07] != pytest.approx(res[False]["rows"]["eplb"]["step"][0.07], rel=0.01)
    assert "measured GPU model" in capsys.readouterr().out


def test_gpu_measurement_on_every_device_of_a_multi_gpu_host(tmp_path):
    torch = _gpu()
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    shape = _core.ExpertShape(1024, 512, 2)
    # device 1 first: torch's default capture stream is created on the first device a graph is
    # captured on, and a capture of another device's work on it fails (the bug this guards)
    data = perf.measure_gpu_models(shape, [1, 0], [1, 64, 1024], calls=2, reps=3)
    assert [g["index"] for g in data["gpus"]] == [1, 0]
    for g in data["gpus"]:
        assert all(t > 0 and np.isfinite(t) for t in g["micros"])
    perf.save_models(str(tmp_path / "p.json"), data)
    assert len(perf.load_models(str(tmp_path / "p.json"))[0]) == 2
