"""Trace capture from tiny randomly initialised transformers MoE models (every supported class)."""
import json
import os
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moebal  # noqa: E402
from moebal.capture import MemorySink, RoutingRecorder, TraceWriter, capture_trace, find_routers  # noqa: E402
from moebal.trace import load_arrays  # noqa: E402
from tiny_moe import CASES, COMMON, tiny_config  # noqa: E402

def tiny(name, seed=0):
    cfg = tiny_config(name)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def batches():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 61, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # right padding: 2 tokens dropped
    return [ids, {"input_ids": torch.randint(0, 61, (3, 5), generator=g)}, {"input_ids": ids, "attention_mask": mask}]


@pytest.mark.parametrize("name", list(CASES))
def test_capture_every_family(tmp_path, name):
    model = tiny(name)
    path = tmp_path / "t.npz"
    meta = capture_trace(model, batches(), path, store_hidden=True, store_logits=True, chunk_tokens=9)
    dense = 1 if name.startswith("Deepseek") else 0
    assert meta["moe_layer_ids"] == list(range(dense, 3))
    L, T, K, E, S = 3 - dense, 14 + 15 + 12, 2, 8, 3
    t = moebal.load_trace(path)
    assert (t.num_layers, t.num_tokens, t.top_k, t.num_experts, t.num_steps) == (L, T, K, E, S)
    a = load_arrays(path)
    assert a["hidden_states"].shape == (L, T, 32) and a["router_logits"].shape == (L, T, E)
    assert a["position"].tolist()[:7] == list(range(7)) and a["position"].tolist()[14:19] == list(range(5))
    assert a["position"].tolist()[-12:] == list(range(7)) + list(range(5))
    assert a["step"].tolist() == [0] * 14 + [1] * 15 + [2] * 12
    # the recorded hidden state is the router's input: re-running the router on it gives its ids
    routers = find_routers(model)
    for l, (_, _, mod) in enumerate(routers):
        h = torch.from_numpy(a["hidden_states"][l].astype(np.float32))
        logits, w, ids = mod(h)
        np.testing.assert_allclose(a["router_logits"][l], logits.float().detach().numpy(), atol=2e-2, rtol=2e-2)
        agree = (np.sort(ids.numpy(), 1) == np.sort(a["topk_ids"][l], 1)).all(1).mean()
        assert agree > 0.9  # fp16 storage of the hidden state may flip near-ties
    # step 0 is the same tokens as step 2 without padding: identical routing on the kept tokens
    same = (np.sort(a["topk_ids"][:, :7], 2) == np.sort(a["topk_ids"][:, 29:36], 2)).all(2).mean()
    assert same > 0.9


def test_streaming_chunks_do_not_change_the_file(tmp_path):
    model = tiny("Qwen3MoeConfig")
    p1, p2 = tmp_path / "a.npz", tmp_path / "b.npz"
    capture_trace(model, batches(), p1, store_hidden=True, chunk_tokens=1)
    capture_trace(model, batches(), p2, store_hidden=True, chunk_tokens=10**6)
    a, b = load_arrays(p1), load_arrays(p2)
    for k in ("topk_ids", "topk_weights", "hidden_states", "position", "step"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not [f for f in os.listdir(tmp_path) if f.startswith("moebal-trace-")]  # spill dirs removed


def test_writer_spills_to_disk(tmp_path):
    w = TraceWriter(tmp_path / "t.npz", num_experts=4, chunk_tokens=3)
    rec = {"position": np.arange(2, dtype=np.int32),
           "layers": [{"topk_ids": np.array([[0, 1], [2, 3]]), "topk_weights": np.ones((2, 2))}] * 2}
    w.write(rec)
    assert w._buffered == 2
    w.write(rec)
    assert w._buffered == 0 and os.path.getsize(os.path.join(w._tmp, "topk_ids.0.bin")) == 4 * 2 * 4
    w.close()
    t = moebal.load_trace(tmp_path / "t.npz")
    assert t.num_tokens == 4 and t.num_steps == 2


def test_recorder_in_memory_and_generate():
    model = tiny("MixtralConfig")
    sink = MemorySink()
    before = (len(model._forward_hooks), len(model._forward_pre_hooks))
    with RoutingRecorder(model, sink, store_hidden=True):
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert sink.steps == 3  # prefill + 2 decode steps
    assert [x.shape[0] for x in sink.topk_ids[0]] == [3, 1, 1]
    assert [int(p[0]) for p in sink.position] == [0, 3, 4]
    assert (len(model._forward_hooks), len(model._forward_pre_hooks)) == before  # hooks removed on exit


@pytest.mark.parametrize("keep_torch", [False, True])
def test_memory_sink_cat_release(keep_torch):
    sink = MemorySink(keep_torch=keep_torch)
    rng = np.random.default_rng(3)
    chunks = [rng.standard_normal((n, 4)).astype(np.float32) for n in (3, 1, 2)]
    for c in chunks:
        d = {"topk_ids": c[:, :2].astype(np.int32), "topk_weights": c[:, :2], "hidden": torch.from_numpy(c) if keep_torch else c}
        sink.write({"position": np.arange(c.shape[0]), "layers": [d]})
    want = np.concatenate(chunks)
    as_np = (lambda x: x.numpy()) if keep_torch else np.asarray
    np.testing.assert_array_equal(as_np(sink.cat("hidden", 0)), want)
    assert len(sink.hidden[0]) == 3  # a plain cat keeps the per-step chunks
    np.testing.assert_array_equal(as_np(sink.cat("hidden", 0, release=True)), want)
    assert len(sink.hidden[0]) == 1  # released: one chunk, the same rows
    np.testing.assert_array_equal(as_np(sink.cat("hidden", 0)), want)
    with pytest.raises(KeyError, match="no 'hidden' for layer 1"):
        sink.cat("hidden", 1)


def test_unsupported_model_class(tmp_path):
    cfg = transformers.LlamaConfig(**{k: v for k, v in COMMON.items()})
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(ValueError, match=r"LlamaForCausalLM .*no supported MoE router.*qwen3_moe"):
        capture_trace(model, [torch.zeros(1, 3, dtype=torch.long)], tmp_path / "t.npz")
    assert not (tmp_path / "t.npz").exists()


def test_bad_batches_and_empty(tmp_path):
    model = tiny("OlmoeConfig")
    with pytest.raises(ValueError, match="a batch must be"):
        capture_trace(model, ["text"], tmp_path / "t.npz")
    with pytest.raises(ValueError, match="nothing was captured"):
        capture_trace(model, [], tmp_path / "t.npz")


def _rewrite(src, dst, **changes):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            name = item[:-4]
            if name in changes:
                if changes[name] is None:
                    continue
                import io

                buf = io.BytesIO()
                np.save(buf, changes[name])
                zout.writestr(item, buf.getvalue())
            else:
                zout.writestr(item, zin.read(item))


def test_bad_trace_files(tmp_path):
    model = tiny("Qwen3MoeConfig")
    src = tmp_path / "t.npz"
    capture_trace(model, batches(), src, store_hidden=True)
    a = load_arrays(src)
    meta = dict(a["meta"])
    bad = tmp_path / "bad.npz"
    _rewrite(src, bad, __schema__=np.int64(7))
    with pytest.raises(ValueError, match="schema version 7"):
        load_arrays(bad)
    with pytest.raises(ValueError, match="schema version 7"):
        moebal.load_trace(bad)
    _rewrite(src, bad, hidden_states=a["hidden_states"][:2])
    with pytest.raises(ValueError, match="hidden_states has shape .*missing layers"):
        load_arrays(bad)
    _rewrite(src, bad, __meta__=np.array(json.dumps(dict(meta, num_layers=5))))
    with pytest.raises(ValueError, match="missing layers"):
        load_arrays(bad)
    _rewrite(src, bad, __meta__=np.array(json.dumps(dict(meta, hidden_size=64))))
    with pytest.raises(ValueError, match="hidden size 32.*hidden_size=64"):
        load_arrays(bad)


def test_cli_capture(tmp_path, capsys):
    from moebal.cli import main

    model = tiny("Qwen3MoeConfig")
    model.save_pretrained(tmp_path / "m")
    np.save(tmp_path / "ids.npy", np.arange(100) % 61)
    rc = main(["capture", str(tmp_path / "m"), "--tokens", str(tmp_path / "ids.npy"), "--seq-len", "16",
               "--batch", "2", "--out", str(tmp_path / "t.npz"), "--store-hidden"])
    assert rc == 0
    assert "3 MoE layers x 96 tokens in 3 steps" in capsys.readouterr().out
    assert load_arrays(tmp_path / "t.npz")["hidden_states"].shape == (3, 96, 32)
    np.save(tmp_path / "bad.npy", np.array([5, 70, 1] * 10))
    rc = main(["capture", str(tmp_path / "m"), "--tokens", str(tmp_path / "bad.npy"), "--seq-len", "4",
               "--out", str(tmp_path / "u.npz")])
    assert rc == 2 and "token ids must be in [0, 61)" in capsys.readouterr().err
    llama = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**COMMON))
    llama.save_pretrained(tmp_path / "dense")
    rc = main(["capture", str(tmp_path / "dense"), "--tokens", str(tmp_path / "ids.npy"), "--out", str(tmp_path / "v.npz")])
    assert rc == 2 and "no supported MoE router" in capsys.readouterr().err
