"""tools/refmoe/planner_eval.py: every predictor in pred_ids.npz (incl. each offline width) is planned
with and routed by the true counts; a predictor equal to the truth scores exactly the true plan."""
import importlib.util
import json
import pathlib

import numpy as np
import pytest

TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "refmoe" / "planner_eval.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("planner_eval", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_width_scored(tmp_path):
    pytest.importorskip("moebal.probe")
    rng = np.random.default_rng(0)
    L, S, R, E, K = 3, 8, 2, 8, 2
    T = S * R * 4
    p = 0.6 ** np.arange(E)  # skewed, so that the planner has work to do
    p /= p.sum()
    arrs = {}
    for d in ("python", "prose"):
        true = np.stack([np.stack([rng.choice(E, K, replace=False, p=p) for _ in range(T)]) for _ in range(L)])
        arrs[f"{d}_true"] = true.astype(np.uint8)
        arrs[f"{d}_next_gate"] = rng.integers(0, E, (L - 1, T, K)).astype(np.uint8)
        arrs[f"{d}_probe"] = true[1:].astype(np.uint8)           # perfect predictor
        arrs[f"{d}_probe_D32"] = true[1:].astype(np.uint8)
        arrs[f"{d}_probe_D64"] = arrs[f"{d}_next_gate"]          # as bad as next_gate
    path = tmp_path / "pred_ids.npz"
    np.savez(path, **arrs, __meta__=np.array(json.dumps({"seq_len": S, "tokens": T})))
    out = tmp_path / "planner.json"
    assert load_tool().main([str(path), "--ranks", str(R), "--experts", str(E), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for d in ("python", "prose"):
        row = res["domains"][d]
        for name in ("probe", "next_gate", "probe_D32", "probe_D64"):
            assert len(row[name]) == L - 1 and len(row[name + "_over_true"]) == L - 1
        assert np.allclose(row["probe_D32_over_true"], 1.0) and np.allclose(row["probe_over_true"], 1.0)
        assert np.allclose(row["probe_D64"], row["next_gate"])
        assert min(row["no_planner"]) >= 1.0
