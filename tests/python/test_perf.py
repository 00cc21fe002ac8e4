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
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(_core.MoebalValueError, match="not a perf-model file"):
        perf.read_file(str(tmp_path / "list.json"))


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


# ---- links (moebal profile --links) -----------------------------------------------------------------

def link_entry(src, dst, gbps, lat=8.0):
    sizes = list(perf.DEFAULT_LINK_BYTES)
    return {"src": src, "dst": dst, "peer": True, "bytes": sizes,
            "micros": [lat + b / gbps * 1e-3 for b in sizes], "GBps": gbps, "latency_us": lat}


def test_fit_link_recovers_bandwidth_and_latency():
    sizes = list(perf.DEFAULT_LINK_BYTES)
    bw, lat = perf.fit_link(sizes, [6.5 + b / 385.0 * 1e-3 for b in sizes])
    assert bw == pytest.approx(385.0, rel=1e-9) and lat == pytest.approx(6.5, rel=1e-6)
    # noise around the line: the fit stays within a few percent
    rng = np.random.default_rng(0)
    bw, lat = perf.fit_link(sizes, [(4.0 + b / 300.0 * 1e-3) * rng.uniform(0.98, 1.02) for b in sizes])
    assert bw == pytest.approx(300.0, rel=0.03)
    with pytest.raises(_core.MoebalValueError, match="do not grow with the size"):
        perf.fit_link([1 << 20, 1 << 24], [50.0, 40.0])
    with pytest.raises(_core.MoebalValueError, match="positive, finite times"):
        perf.fit_link([1 << 20, 1 << 24], [5.0, float("nan")])
    with pytest.raises(_core.MoebalValueError, match="at least two samples"):
        perf.fit_link([1 << 20], [5.0])


def test_links_in_the_file_set_the_topology_link(tmp_path):
    d = perf_dict((1.0, 1.1))
    assert perf.link_GBps(d) is None
    path = tmp_path / "p.json"
    perf.save_models(str(path), d)
    assert perf.topology_from_file(str(path), 1, 2).nvlink_GBps == 450.0  # the default without links
    d["links"] = [link_entry(0, 1, 390.0), link_entry(1, 0, 371.5)]
    perf.save_models(str(path), d)
    assert perf.link_GBps(perf.read_file(str(path))) == 371.5  # the slowest pair
    topo = perf.topology_from_file(str(path), 1, 2)
    assert topo.nvlink_GBps == 371.5 and len(topo.gpu_models) == 2


@pytest.mark.parametrize("edit, msg", [
    (lambda d: d.update(links={}), "'links' must be a list"),
    (lambda d: d["links"][0].pop("GBps"), "links[0] needs src, dst, GBps and latency_us"),
    (lambda d: d["links"][1].update(dst=1), "links[1] must join two distinct devices"),
    (lambda d: d["links"][0].update(GBps=0.0), "links[0] has GBps 0.0"),
    (lambda d: d["links"][0].update(latency_us=float("inf")), "links[0] has GBps"),
    (lambda d: d["links"][1].update(src=-1), "must join two distinct devices"),
])
def test_malformed_links_name_the_field(tmp_path, edit, msg):
    d = perf_dict((1.0, 1.1))
    d["links"] = [link_entry(0, 1, 390.0), link_entry(1, 0, 380.0)]
    edit(d)
    with pytest.raises(_core.MoebalValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        perf.save_models(str(tmp_path / "p.json"), d)
    (tmp_path / "q.json").write_text(json.dumps(d))
    with pytest.raises(_core.MoebalValueError, match="links"):
        perf.load_models(str(tmp_path / "q.json"))


def test_probe_planner_reads_the_measured_link(tmp_path):
    # a replica move is allowed when the expert's transfer fits the hiding window: 100 MB over the
    # default 450 GB/s takes 222 us and fits a 250 us window; over a measured 300 GB/s (333 us) it
    # does not, so the planner fed the measured topology makes no move
    from moebal import probe

    d = perf_dict((1.0, 1.0))
    path = tmp_path / "p.json"
    perf.save_models(str(path), d)
    counts = np.zeros((2, 4), np.int64)
    counts[:, 0] = 4000  # every token wants expert 0, held by rank 0 only
    counts[:, 2] = 10
    kw = dict(expert_bytes=100_000_000, window_us=250.0, fixed_us=0.0, us_per_token=1.0, quota="none")
    fast = probe.plan(counts, np.array([0, 1, 2, 3]), topology=perf.topology_from_file(str(path), 1, 2), **kw)
    d["links"] = [link_entry(0, 1, 300.0), link_entry(1, 0, 300.0)]
    perf.save_models(str(path), d)
    slow = probe.plan(counts, np.array([0, 1, 2, 3]), topology=perf.topology_from_file(str(path), 1, 2), **kw)
    assert (np.asarray(fast.replica_expert) == 0).any()
    assert (np.asarray(slow.replica_expert) < 0).all()


def test_cli_plan_reads_links_and_profile_refuses_links_on_one_gpu(tmp_path, capsys):
    np.save(tmp_path / "w.npy", np.random.default_rng(1).gamma(0.5, 10, size=(3, 16)))
    d = perf_dict((1.0, 1.1, 1.2, 1.3))
    d["links"] = [link_entry(s, t, 380.0 + s) for s in range(4) for t in range(4) if s != t]
    perf.save_models(str(tmp_path / "four.json"), d)
    assert main(["plan", str(tmp_path / "w.npy"), "--gpus", "4", "--policy", "vibe", "--perf",
                 str(tmp_path / "four.json")]) == 0
    capsys.readouterr()
    assert main(["profile", "--expert-shape", "2048,768", "--devices", "0", "--links"]) == 2
    assert "--links needs at least two GPUs, got 1" in capsys.readouterr().err


def test_link_measurement_checks_arguments_first():
    with pytest.raises(_core.MoebalValueError, match="two devices"):
        perf.measure_link(0, 0)
    with pytest.raises(_core.MoebalValueError, match="strictly increasing byte counts"):
        perf.measure_link(0, 1, [1 << 20])
    with pytest.raises(_core.MoebalValueError, match="strictly increasing byte counts"):
        perf.measure_link(0, 1, [4, 2])
    with pytest.raises(_core.MoebalValueError, match="reps must be >= 1"):
        perf.measure_link(0, 1, reps=0)
    if not _cuda_visible():
        with pytest.raises(_core.MoebalValueError, match="needs a CUDA device"):
            perf.measure_links()
    else:
        import torch

        with pytest.raises(_core.MoebalValueError, match="devices must be distinct|at least two devices"):
            perf.measure_links([0, 0] if torch.cuda.device_count() > 1 else [0])


def test_gpu_links_on_a_multi_gpu_host(tmp_path):
    torch = _gpu()
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    links = perf.measure_links([0, 1], [1 << 20, 1 << 24, 1 << 26], reps=2, min_bytes=1 << 28)
    assert [(l["src"], l["dst"]) for l in links] == [(0, 1), (1, 0)]
    for l in links:
        assert l["micros"][0] < l["micros"][1] < l["micros"][2]
        assert 1.0 < l["GBps"] < 5000.0 and l["latency_us"] >= 0
    d = perf_dict((1.0, 1.0))
    d["links"] = links
    perf.save_models(str(tmp_path / "p.json"), d)
    assert perf.topology_from_file(str(tmp_path / "p.json"), 1, 2).nvlink_GBps == min(l["GBps"] for l in links)
