"""Universal embedder: batched (bucketed) embedding against a naive one-example-at-a-time loop.

    python benchmarks/bench_embed.py [--model tiny-qwen2-vl] [--n 192] [--batch-size 32] [--device cpu]

Both paths use the same model in the same process: the naive loop calls the embedder with one
input at a time (no padding, no batching); the batched path embeds all inputs with length
buckets. Each is run once untimed (torch builds CPU kernels for each new tensor shape), then
``--rounds`` times; the median is reported. Reported: inputs/s of each and their ratio, for images, texts and image+text pairs
(real LC25000 tiles from ../shared/data, or random images when absent). On a GPU, the peak
memory too. ``--config qwen2-vl-2b`` builds Qwen2-VL-2B's architecture with random weights
(timing equals a trained model's).
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
from _common import DATA, print_machine, table  # type: ignore[import-not-found]


def _inputs(n: int) -> tuple[list, list[str]]:
    from PIL import Image

    tiles = sorted((DATA / "tiles" / "lc25000-lung").glob("*/*.jpeg"))
    rng = random.Random(0)
    if tiles:
        images = [Image.open(p).convert("RGB") for p in rng.sample(tiles, min(n, len(tiles)))]
    else:
        g = np.random.default_rng(0)
        images = [Image.fromarray((g.random((224, 224, 3)) * 255).astype("uint8")) for _ in range(n)]
    words = ["lung", "adenocarcinoma", "benign", "tissue", "squamous", "cell", "carcinoma", "with", "glands",
             "keratin", "pearls", "necrosis", "stroma", "lymphocytes", "an", "H&E", "image", "of"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 30))) for _ in range(len(images))]
    return images, texts


def _build(model: str, device: str, config: str | None):
    from pathmllm.models.embedder import UniversalEmbedder, load_embedder

    if config is None:
        return load_embedder(model, device=device)
    import torch
    import transformers as tf

    from pathmllm.models.backbone import Backbone
    from pathmllm.models.tiny import build_tiny

    if config != "qwen2-vl-2b":
        raise SystemExit(f"unknown --config {config}")
    _, processor = build_tiny("tiny-qwen2-vl")
    text = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    vision = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    ids = {k: int(processor.tokenizer.convert_tokens_to_ids(t)) for k, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    cfg = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model_ = tf.Qwen2VLForConditionalGeneration(cfg).to(dtype).eval()
    processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}
    return UniversalEmbedder(Backbone(model_, processor, "qwen2_vl", "qwen2-vl-2b (random weights)"))


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
    ap.add_argument("--model", default="tiny-qwen2-vl")
    ap.add_argument("--config", default=None, help="qwen2-vl-2b: the real architecture with random weights")
    ap.add_argument("--n", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after a warm-up pass (median)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    emb = _build(args.model, args.device, args.config)
    images, texts = _inputs(args.n)
    kinds = {
        "image": (lambda i, j: emb.embed_images(images[i:j], batch_size=args.batch_size)),
        "text": (lambda i, j: emb.embed_texts(texts[i:j], batch_size=args.batch_size)),
        "pair": (lambda i, j: emb.embed_pairs(images[i:j], texts[i:j], batch_size=args.batch_size)),
    }
    rows = []
    n = len(images)
    for kind, run in kinds.items():
        # warm-up: one full pass of each (torch builds CPU kernels per new tensor shape)
        def naive_pass(run=run) -> None:  # noqa: ANN001
            for i in range(n):
                run(i, i + 1)

        def batched_pass(run=run) -> None:  # noqa: ANN001
            run(0, n)

        naive_pass()
        batched_pass()
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        naive = float(np.median([_time(naive_pass, args.device) for _ in range(args.rounds)]))
        batched = float(np.median([_time(batched_pass, args.device) for _ in range(args.rounds)]))
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if args.device.startswith("cuda") else "-"
        rows.append([kind, n, f"{n / naive:.1f}", f"{n / batched:.1f}", f"{naive / batched:.2f}x", peak])
    print_machine()
    print(f"model: {emb.name}; batch size {args.batch_size}; device {args.device}")
    print(table(["kind", "inputs", "naive /s", "batched /s", "speed-up", "peak GiB"], rows))


if __name__ == "__main__":
    main()
