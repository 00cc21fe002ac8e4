"""Train moebal's reference MoE language model (transformers Qwen3-MoE classes) on the offline corpus.

Fixed seed, bf16 weights with float32 AdamW master copies, cosine learning rate, the standard
Switch-style load-balancing auxiliary loss of transformers (``router_aux_loss_coef``, 0.01 here).
Each sequence is a random window of one domain's training stream; domains are balanced per batch.
The run length is ``max_steps`` or the step count that fits ``time_budget_s`` (measured over the first
10 steps), whichever is smaller; the schedule is set once that count is known.

Usage: python train.py --corpus DIR --config config.json --out DIR [--device cuda] [--tiny]
Writes OUT/model (save_pretrained, bf16 safetensors), OUT/train_log.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch


def load_corpus(path: str) -> tuple[dict[str, np.ndarray], dict]:
    z = np.load(os.path.join(path, "corpus.npz"), allow_pickle=False)
    meta = json.loads(str(z["__meta__"]))
    return {k: z[k] for k in z.files if k != "__meta__"}, meta


def build_model(model_cfg: dict, vocab_size: int, train_cfg: dict, device: str):
    import transformers

    cfg = transformers.Qwen3MoeConfig(**{k: v for k, v in model_cfg.items() if k != "model_type"}, vocab_size=vocab_size)
    cfg._attn_implementation = train_cfg["attn_implementation"]
    cfg._experts_implementation = train_cfg["experts_implementation"] if device != "cpu" else "eager"
    return transformers.Qwen3MoeForCausalLM(cfg)


class Batches:
    def __init__(self, streams: dict[str, np.ndarray], domains: list[str], seq_len: int, batch: int, seed: int):
        self.streams = {d: torch.from_numpy(streams[f"{d}_train"].astype(np.int64)) for d in domains}
        self.domains, self.seq_len, self.batch = domains, seq_len, batch
        self.rng = np.random.default_rng(seed)

    def next(self) -> torch.Tensor:
        rows = []
        for i in range(self.batch):
            s = self.streams[self.domains[i % len(self.domains)]]
            o = int(self.rng.integers(0, s.numel() - self.seq_len - 1))
            rows.append(s[o:o + self.seq_len])
        return torch.stack(rows)


@torch.no_grad()
def heldout_loss(model, streams, domains, seq_len, n_batches, batch, device) -> dict[str, float]:
    model.eval()
    out = {}
    for d in domains:
        s = torch.from_numpy(streams[f"{d}_heldout"].astype(np.int64))
        losses = []
        for b in range(n_batches):
            rows = [s[(b * batch + i) * seq_len:(b * batch + i + 1) * seq_len] for i in range(batch)]
            rows = [r for r in rows if r.numel() == seq_len]
            if not rows:
                break
            x = torch.stack(rows).to(device)
            o = model(input_ids=x, labels=x, output_router_logits=False)
            losses.append(float(o.loss))
        out[d] = float(np.mean(losses))
    model.train()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: 2 layers, hidden 64, few steps")
    args = ap.parse_args(argv)
    conf = json.load(open(args.config))
    mc, tc = dict(conf["model"]), dict(conf["train"])
    if args.tiny:
        mc.update(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  moe_intermediate_size=32, num_experts=16, num_experts_per_tok=4)
        tc.update(seq_len=64, batch_size=8, max_steps=12, time_budget_s=60, warmup_steps=2, eval_batches=1)
    torch.manual_seed(tc["seed"])
    np.random.seed(tc["seed"])
    streams, cmeta = load_corpus(args.corpus)
    domains = sorted(cmeta["domains"])
    model = build_model(mc, cmeta["vocab_size"], tc, args.device)
    dtype = torch.bfloat16 if args.device != "cpu" else torch.float32
    model.to(device=args.device, dtype=dtype).train()
    params = [p for p in model.parameters() if p.requires_grad]
    master = [p.detach().float().clone().requires_grad_(True) for p in params]
    decay = [m for m, p in zip(master, params) if p.dim() >= 2]
    no_decay = [m for m, p in zip(master, params) if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc["lr"], betas=tuple(tc["betas"]),
                            fused=args.device != "cpu")
    batches = Batches(streams, domains, tc["seq_len"], tc["batch_size"], tc["seed"])
    n_params = sum(p.numel() for p in params)
    print(f"model: {n_params / 1e6:.1f}M params, {mc['num_hidden_layers']} layers, {mc['num_experts']} experts "
          f"top-{mc['num_experts_per_tok']}, hidden {mc['hidden_size']}; device {args.device}", flush=True)
    total_steps = tc["max_steps"]
    log, t0, tokens = [], time.time(), 0
    coef = mc["router_aux_loss_coef"]
    step = 0
    while step < total_steps:
        if step == 10:
            if args.device != "cpu":
                torch.cuda.synchronize()
            per_step = (time.time() - t_10) / 9 if step > 1 else 1.0
            total_steps = int(min(tc["max_steps"], 10 + (tc["time_budget_s"] - (time.time() - t0)) / per_step))
            print(f"{per_step * 1e3:.0f} ms/step -> {total_steps} steps", flush=True)
        if step == 1:
            if args.device != "cpu":
                torch.cuda.synchronize()
            t_10 = time.time()
        warm = tc["warmup_steps"]
        if step < warm:
            lr = tc["lr"] * (step + 1) / warm
        else:
            prog = (step - warm) / max(1, total_steps - warm)
            lr = tc["lr"] * (tc["min_lr_frac"] + (1 - tc["min_lr_frac"]) * 0.5 * (1 + math.cos(math.pi * min(1.0, prog))))
        for g in opt.param_groups:
            g["lr"] = lr
        x = batches.next().to(args.device, non_blocking=True)
        try:
            out = model(input_ids=x, labels=x, output_router_logits=True)
            out.loss.backward()
        except (RuntimeError, NotImplementedError) as e:
            if step != 0 or model.config._experts_implementation == "eager":
                raise
            print(f"experts implementation {model.config._experts_implementation!r} failed ({e}); using 'eager'", flush=True)
            model.config._experts_implementation = "eager"
            for p in params:
                p.grad = None
            out = model(input_ids=x, labels=x, output_router_logits=True)
            out.loss.backward()
        for m, p in zip(master, params):
            m.grad = p.grad.float() if p.grad is not None else torch.zeros_like(m)
            p.grad = None
        gn = torch.nn.utils.clip_grad_norm_(master, tc["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for m, p in zip(master, params):
                p.copy_(m)
        tokens += x.numel()
        if step % 25 == 0 or step == total_steps - 1:
            aux = float(out.aux_loss) if out.aux_loss is not None else float("nan")
            lm = float(out.loss) - coef * aux
            rec = {"step": step, "lr": lr, "lm_loss": lm, "aux_loss": aux, "grad_norm": float(gn),
                   "elapsed_s": time.time() - t0, "tokens": tokens}
            log.append(rec)
            print(json.dumps(rec), flush=True)
        step += 1
    train_s = time.time() - t0
    held = heldout_loss(model, streams, domains, tc["seq_len"], tc["eval_batches"], 16, args.device)
    print(f"held-out loss per domain (nats/token): {held}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(os.path.join(args.out, "model"))
    summary = {"experts_implementation": model.config._experts_implementation, "config": conf, "tiny": args.tiny, "params": n_params, "steps": total_steps, "tokens": tokens,
               "train_s": train_s, "final_train_lm_loss": log[-1]["lm_loss"], "final_aux_loss": log[-1]["aux_loss"],
               "heldout_loss": held, "log": log, "device": torch.cuda.get_device_name(0) if args.device != "cpu" else "cpu",
               "torch": torch.__version__}
    import transformers

    summary["transformers"] = transformers.__version__
    json.dump(summary, open(os.path.join(args.out, "train_log.json"), "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
