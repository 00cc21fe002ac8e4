"""Build the reference-MoE corpus from text that ships with this machine (no network).

Four domains with distinct token statistics:
  python  - the CPython standard library sources (*.py)
  c       - C headers under /usr/include (*.h)
  man     - English man pages (troff source, /usr/share/man/man[1-8])
  prose   - English package documentation (/usr/share/doc: README, *.txt, *.md, *.rst, changelogs)

Files are deduplicated by content hash and split by file (never inside a file) into train and
held-out sets with a fixed seed. A byte-level BPE tokenizer (``tokenizers``) is trained on a sample
of the training text of every domain. Output: ``tokenizer.json`` and ``corpus.npz`` holding, per
domain, ``<domain>_train`` and ``<domain>_heldout`` uint16 token streams (documents separated by
the ``<|eos|>`` token), plus ``__meta__`` (JSON: sources, sizes, vocab).

Usage: python build_corpus.py OUT_DIR [--vocab 8192] [--train-mb 12] [--heldout-frac 0.05]
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
import random
import sys

import numpy as np

PY_ROOT = "/root/.pyenv/versions/3.11.7/lib/python3.11"
EOS = "<|eos|>"


def _read(path: str) -> str | None:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read(2_000_000)
        else:
            with open(path, "rb") as f:
                raw = f.read(2_000_000)
    except OSError:
        return None
    if b"\x00" in raw[:4096]:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if len(text) >= 200 else None


def domain_files() -> dict[str, list[str]]:
    py = [p for p in glob.glob(f"{PY_ROOT}/**/*.py", recursive=True) if "/site-packages/" not in p]
    c = glob.glob("/usr/include/**/*.h", recursive=True)
    man = [p for s in range(1, 9) for p in glob.glob(f"/usr/share/man/man{s}/*")]
    prose = []
    for p in glob.glob("/usr/share/doc/**/*", recursive=True):
        b = os.path.basename(p).lower()
        if os.path.isfile(p) and (b.endswith((".txt", ".md", ".rst", ".txt.gz", ".md.gz", ".rst.gz"))
                                  or b.startswith(("readme", "changelog", "news", "faq"))):
            prose.append(p)
    return {"python": sorted(py), "c": sorted(c), "man": sorted(man), "prose": sorted(prose)}


def load_domain(files: list[str], rng: random.Random, budget_bytes: int, heldout_frac: float):
    files = list(files)
    rng.shuffle(files)
    seen: set[str] = set()
    train, held, nbytes = [], [], 0
    n_held_target = max(8, int(len(files) * heldout_frac))
    for p in files:
        t = _read(p)
        if t is None:
            continue
        h = hashlib.sha1(t.encode()).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        if len(held) < n_held_target:
            held.append(t)
            continue
        train.append(t)
        nbytes += len(t)
        if nbytes >= budget_bytes:
            break
    return train, held


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--train-mb", type=float, default=12.0, help="training text per domain (MB)")
    ap.add_argument("--heldout-frac", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    os.makedirs(args.out_dir, exist_ok=True)
    rng = random.Random(args.seed)
    data = {}
    for dom, files in domain_files().items():
        train, held = load_domain(files, rng, int(args.train_mb * 1e6), args.heldout_frac)
        data[dom] = (train, held)
        print(f"{dom}: {len(files)} files found, {len(train)} train docs "
              f"({sum(map(len, train)) / 1e6:.1f} MB), {len(held)} held-out docs "
              f"({sum(map(len, held)) / 1e6:.2f} MB)", flush=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def sample():
        for dom, (train, _) in data.items():
            budget = 3_000_000
            for t in train:
                yield t
                budget -= len(t)
                if budget <= 0:
                    break

    tok.train_from_iterator(sample(), trainer=trainer)
    tok.save(os.path.join(args.out_dir, "tokenizer.json"))
    eos = tok.token_to_id(EOS)
    arrays, meta = {}, {"vocab_size": tok.get_vocab_size(), "eos_id": eos, "seed": args.seed, "domains": {}}
    for dom, (train, held) in data.items():
        for split, docs in (("train", train), ("heldout", held)):
            ids = []
            for enc in tok.encode_batch(docs):
                ids.extend(enc.ids)
                ids.append(eos)
            arrays[f"{dom}_{split}"] = np.asarray(ids, dtype=np.uint16)
        meta["domains"][dom] = {"train_tokens": int(arrays[f"{dom}_train"].size),
                                "heldout_tokens": int(arrays[f"{dom}_heldout"].size),
                                "train_docs": len(train), "heldout_docs": len(held)}
        print(f"{dom}: {meta['domains'][dom]}", flush=True)
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez_compressed(os.path.join(args.out_dir, "corpus.npz"), **arrays)
    print(f"wrote {args.out_dir}/corpus.npz ({os.path.getsize(os.path.join(args.out_dir, 'corpus.npz')) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
