"""MedPLIB Mixture-of-Experts: a top-1 MoE causal LM against the same LM with its one FFN.

    python benchmarks/bench_moe.py [--config tiny|qwen2-0.5b] [--layers N] [--batch 4] [--seq 256]
                                   [--new-tokens 16] [--rounds 3] [--device cpu]

Builds a ``Qwen2ForCausalLM`` with random weights (timing equals a trained model's):
``qwen2-0.5b`` is Qwen2-0.5B's architecture (hidden 896, 24 layers, 14 heads, 2 KV heads,
intermediate 4864, vocab 151936); ``--layers`` cuts the layer count (CPU). The MoE model is a
copy whose every decoder layer is converted (:func:`pathmllm.models.grounding.moe.convert_to_moe`,
2 experts, top-1, router re-initialised so tokens really split between the experts). Both get the
same random input ids (``--batch`` x ``--seq``).

Timed, each after one untimed warm-up, ``--rounds`` times (median): one forward pass (no grad)
and greedy generation of ``--new-tokens`` tokens (KV cache). Reported: seconds of each, the
MoE/reference ratio of the medians (the issue's target: <= 1.15), the ratio of the fastest
rounds (less sensitive to other work on a shared machine) and the share of tokens per expert. Each token
runs only its chosen expert, so the extra work is the router and the gather/scatter; in
generation's single-token steps both experts' weights are read when a batch's tokens split, which
is the bandwidth cost of any token-routed MoE at small batch.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
from _common import load, print_machine, table  # type: ignore[import-not-found]

CONFIGS = {
    "tiny": dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "qwen2-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, rope_theta=1e6,
                       tie_word_embeddings=True),
}


def _time(fn, device: str) -> float:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: the config's)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=16, help="greedy generation length (0: skip)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after a warm-up pass (median)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch
    import transformers as tf

    from pathmllm.models.grounding.moe import convert_to_moe, routing_statistics

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    kw = dict(CONFIGS[args.config], max_position_embeddings=max(512, args.seq + args.new_tokens),
              pad_token_id=0, eos_token_id=None, bos_token_id=None)
    if args.layers:
        kw["num_hidden_layers"] = args.layers
    cfg = tf.Qwen2Config(**kw)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    with torch.device(args.device):
        ref = tf.Qwen2ForCausalLM(cfg).to(dtype).eval()
    moe = copy.deepcopy(ref)
    mods = convert_to_moe(moe, "all", num_experts=2, top_k=1)
    with torch.no_grad():  # a router whose logits are O(1), so tokens split between the experts
        for m in mods:
            m.router.weight.normal_(std=1.0 / cfg.hidden_size ** 0.5)

    ids = torch.randint(1, cfg.vocab_size, (args.batch, args.seq), device=args.device)
    mask = torch.ones_like(ids)

    def forward(model) -> None:  # noqa: ANN001
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    def generate(model) -> None:  # noqa: ANN001
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    kinds = {"forward": forward}
    if args.new_tokens > 0:
        kinds[f"generate {args.new_tokens}"] = generate
    rows = []
    load_before = load()
    for kind, fn in kinds.items():
        fn(ref)  # warm-up
        fn(moe)
        # interleave the two models' rounds so drifting load hits both alike
        t_ref, t_moe = [], []
        for _ in range(args.rounds):
            t_ref.append(_time(lambda fn=fn: fn(ref), args.device))
            t_moe.append(_time(lambda fn=fn: fn(moe), args.device))
        r, m = float(np.median(t_ref)), float(np.median(t_moe))
        best = min(t_moe) / min(t_ref)  # the least disturbed rounds (shared, loaded machines)
        rows.append([kind, f"{r:.3f}", f"{m:.3f}", f"{m / r:.3f}x", f"{best:.3f}x",
                     "yes" if m / r <= 1.15 else "no"])
    forward(moe)
    stats = routing_statistics(mods, {"all": mask.bool()})["all"]
    share = np.mean([v for v in stats.values()], axis=0)
    print_machine()
    print(f"config {args.config}: hidden {cfg.hidden_size}, layers {cfg.num_hidden_layers}, intermediate "
          f"{cfg.intermediate_size}, vocab {cfg.vocab_size}; {dtype}; device {args.device}; "
          f"batch {args.batch} x seq {args.seq}; {args.rounds} rounds (median); "
          f"load average before {load_before}, after {load()}")
    print(f"MoE: 2 experts, top-1, all {len(mods)} layers; share of tokens per expert (forward, mean over "
          f"layers): {', '.join(f'{s:.2f}' for s in share)}")
    print(table(["pass", "reference s", "MoE s", "MoE / reference", "ratio of fastest rounds", "<= 1.15"],
                rows))


if __name__ == "__main__":
    main()
