"""tools/refmoe/feature_study.py: its captured 'skip attention' input is what layer l's router would
see if attention added nothing; a gate-feature head fits a target that depends on layer l's routing
where the plain head cannot; the tiny end-to-end run reports every variant."""
import json
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools" / "refmoe"


@pytest.fixture(scope="module")
def fs():
    sys.path.insert(0, str(TOOLS))
    try:
        import feature_study
        yield feature_study
    finally:
        sys.path.remove(str(TOOLS))


def tiny_model(layers=3):
    cfg = transformers.Qwen3MoeConfig(vocab_size=61, hidden_size=32, intermediate_size=32, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=8)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def tiny_run_args(fs, tmp_path) -> list:
    """A saved tiny model and a random corpus under tmp_path, and the CLI arguments of a tiny run."""
    tiny_model().save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "corpus.npz", **{f"{d}_{s}": rng.integers(0, 61, 4000).astype(np.int32)
                                         for d in fs.DOMAINS for s in ("train", "heldout")})
    return ["--corpus", str(tmp_path), "--model", str(tmp_path / "m"), "--tiny", "--n-fit", "2", "--dim", "8",
            "--device", "cpu"]


def test_skip_attention_input_equals_router_input_without_attention(fs):
    model = tiny_model()
    ids = torch.randint(0, 61, (2, 16))
    got = fs.capture(model, ids, 2, "cpu")
    # with attention, layer l's router input differs from the stream's norm before attention
    assert not torch.allclose(got["z"][1].float(), got["x"][1].float(), atol=1e-2)
    for layer in fs.decoder_layers(model):
        torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
    got = fs.capture(model, ids, 2, "cpu")
    assert len(got["x"]) == len(got["z"]) == 3
    for l in range(3):
        assert got["x"][l].shape == got["z"][l].shape == (32, 32)
        torch.testing.assert_close(got["z"][l].float(), got["x"][l].float(), atol=2e-3, rtol=2e-3)


def test_gate_features_fit_what_depends_on_layer_l_routing(fs):
    torch.manual_seed(1)
    T, H, E, K = 4096, 16, 8, 2
    x = torch.randn(T, H)
    ids = torch.stack([torch.randperm(E)[:K] for _ in range(T)])  # layer l's routing, independent of x
    w = torch.full((T, K), 0.5)
    g = fs.gate_vector(ids, w, E)
    assert torch.equal(g.sum(1), torch.ones(T)) and torch.equal((g > 0).sum(1), torch.full((T,), K))
    target_logits = 8.0 * g  # next layer's routing = this layer's: only the gate features reveal it
    target = torch.softmax(target_logits, -1)
    W = torch.zeros(E, H)
    acc = {}
    for gate in (False, True):
        head = fs.Head(W, None, H, E, 32, gate, seed=0)
        fs.fit(head, x, g if gate else None, target, steps=300, batch=512)
        with torch.no_grad():
            pred = torch.topk(head(x, g if gate else None), K, -1).indices
        acc[gate] = float((pred.sort(1).values == ids.sort(1).values).all(1).float().mean())
    assert acc[True] > 0.95 and acc[False] < 0.2


def test_tiny_run_reports_every_variant(fs, tmp_path):
    out = tmp_path / "fs.json"
    assert fs.main(tiny_run_args(fs, tmp_path) + ["--json", str(out)]) == 0
    res = json.loads(out.read_text())["top_k_accuracy"]
    assert set(res) == set(fs.VARIANTS)
    for per in res.values():
        assert set(per) == set(fs.DOMAINS) and all(0.0 <= v <= 1.0 for v in per.values())


@pytest.mark.parametrize("extra", [["--steps", "0"], ["--variants", "probe,nope"], ["--variants", ","]])
def test_bad_arguments(fs, extra):
    with pytest.raises(SystemExit):
        fs.main(["--corpus", "x", "--model", "y"] + extra)


def test_variant_subset(fs, tmp_path):
    out = tmp_path / "fs.json"
    assert fs.main(tiny_run_args(fs, tmp_path) + ["--variants", "next_gate,probe", "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())["top_k_accuracy"]) == {"next_gate", "probe"}
