"""The moebal command line: info, plan and demo, in-process and as a console script."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from moebal import policies
from moebal.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    caps = json.loads(capsys.readouterr().out)
    assert caps["version"] and "cuda" in caps["core"] and "contiguous" in caps["policies"]


def test_plan_from_npy(tmp_path, capsys):
    w = np.random.default_rng(0).gamma(0.5, 10, size=(4, 16))
    np.save(tmp_path / "w.npy", w)
    out = tmp_path / "p.npz"
    assert main(["plan", str(tmp_path / "w.npy"), "--gpus", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "contiguous" in text and "mean IR" in text
    with np.load(out) as z:
        assert z["phy2log"].shape == (4, 16)


def test_plan_speed_aware_policy(tmp_path, capsys):
    w = np.random.default_rng(1).gamma(0.5, 10, size=(3, 16))
    np.save(tmp_path / "w.npy", w)
    assert main(["plan", str(tmp_path / "w.npy"), "--gpus", "4", "--policy", "vibe", "--extra-per-gpu", "1",
                 "--speed-spread", "0.07"]) == 0
    text = capsys.readouterr().out
    assert "vibe" in text and "step us" in text
    assert main(["plan", str(tmp_path / "w.npy"), "--gpus", "4", "--expert-shape", "12"]) == 2
    assert "hidden,ffn" in capsys.readouterr().err


def test_plan_errors_are_clean(tmp_path, capsys):
    np.save(tmp_path / "w.npy", np.ones((2, 6)))
    assert main(["plan", str(tmp_path / "w.npy"), "--gpus", "4"]) == 2
    assert "divisible" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "w.npy"), "--gpus", "2", "--policy", "nope"]) == 2
    assert "unknown policy" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "missing.npz"), "--gpus", "2"]) == 2
    (tmp_path / "x.txt").write_text("1")
    assert main(["plan", str(tmp_path / "x.txt"), "--gpus", "2"]) == 2


def test_demo_writes_table_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["demo", "--out-dir", str(tmp_path), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for name in policies.available_policies():
        assert name in text
    png = tmp_path / "moebal_demo.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_impossible_layout_is_a_clean_error(tmp_path, capsys):
    # 64 experts on 6 GPUs: no policy can fill equal slots per GPU.
    assert main(["demo", "--gpus", "6", "--no-plot", "--no-progress", "--out-dir", str(tmp_path)]) == 2
    assert "no policy can place 64 experts on 6 GPUs" in capsys.readouterr().err


def test_console_script(tmp_path):
    exe = shutil.which("moebal")
    cmd = [exe] if exe else [sys.executable, "-m", "moebal"]
    r = subprocess.run(cmd + ["demo", "--no-plot", "--no-progress"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "mean IR" in r.stdout
