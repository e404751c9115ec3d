"""Decode speed, batch 1, on this machine's CPU: anygen's sampler against transformers ``generate``.

Both run the same weights in one process, side by side. Rows:
* text: greedy decoding of ``--new-tokens`` text tokens;
* image + CFG: one 64-code image span with classifier-free guidance (anygen: cond + uncond in one batch;
  transformers: ``guidance_scale`` + ``negative_prompt_ids``, with ``prefix_allowed_tokens_fn`` keeping it to
  image codes);
* the memory-bandwidth floor: weight bytes read per token / measured read bandwidth;
* on a CPU that multiplies in bfloat16 natively, anygen's eager step with its products in bfloat16 as well
  (``matmul_dtype=torch.bfloat16``: bfloat16 copies of the weights, half the bytes per token, so its own floor is
  twice the float32 one).

    python benchmarks/decode.py            # prints the table and writes the decode-<maker> section of RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, cpu_vendor, write_section  # noqa: E402

from anygen.core import CoreConfig, build_core  # noqa: E402
from anygen.generation import Guidance, SamplingParams, decode_steps, fast_decode, span_rules  # noqa: E402
from anygen.tokenizers.simple import GridImageTokenizer  # noqa: E402
from anygen.vocab import ModalitySpec, Vocab  # noqa: E402

CONFIGS = {
    "6M": (4096, CoreConfig(hidden_size=256, num_layers=6, num_heads=8, num_kv_heads=4, intermediate_size=688)),
    "100M": (16384, CoreConfig(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4,
                               intermediate_size=2048)),
}
GREEDY = SamplingParams(do_sample=False)
BF16 = fast_decode.bf16_matmul_supported()  # add the eager step with bfloat16 products as a contender


@dataclass
class Setup:
    core: torch.nn.Module
    vocab: Vocab
    rules: list
    tokenizer: GridImageTokenizer


def build(name: str) -> Setup:
    torch.manual_seed(0)
    text_size, config = CONFIGS[name]
    tokenizer = GridImageTokenizer(cell=8, levels=10)  # 1000 codes, 64 tokens for a 64x64 image
    vocab = Vocab(text_size, [ModalitySpec("image", tokenizer.codebook_size)])
    core = build_core(config, vocab.size).eval()
    return Setup(core, vocab, span_rules(vocab, {"image": tokenizer}, {"image": (64, 64)}), tokenizer)


def timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    n = fn()
    return time.perf_counter() - start, n


def best_rate(fn, repeats: int) -> float:
    """Median tokens/s over ``repeats`` runs."""
    rates = []
    for _ in range(repeats):
        seconds, n = timed(fn)
        rates.append(n / seconds)
    return statistics.median(rates)


def prompt_ids(s: Setup, length: int = 16) -> list[int]:
    g = torch.Generator().manual_seed(1)
    return [s.vocab.bos_id, *torch.randint(0, s.vocab.text_size, (length,), generator=g).tolist()]


def anygen_text(s: Setup, new: int, compile: bool, matmul_dtype: torch.dtype = torch.float32):
    prompt = prompt_ids(s)

    def run() -> int:
        steps = decode_steps(s.core, s.vocab, s.rules, [prompt], max_new_tokens=new, open_modalities=[],
                             sampling={"text": GREEDY}, compile=compile, matmul_dtype=matmul_dtype)
        return sum(1 for _ in steps)
    return run


def hf_text(s: Setup, new: int):
    ids = torch.tensor([prompt_ids(s)])

    def run() -> int:
        with torch.inference_mode():
            out = s.core.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                  pad_token_id=s.vocab.pad_id)
        return out.shape[1] - ids.shape[1]
    return run


def anygen_image(s: Setup, compile: bool, scale: float = 2.0, matmul_dtype: torch.dtype = torch.float32):
    begin = s.vocab.begin_id("image")
    prompt = prompt_ids(s) + [begin]
    guidance = Guidance([[s.vocab.bos_id, begin]], scale)

    def run() -> int:
        steps = decode_steps(s.core, s.vocab, s.rules, [prompt], max_new_tokens=65, guidance=guidance,
                             sampling={"image": GREEDY}, compile=compile, matmul_dtype=matmul_dtype)
        return sum(1 for _ in steps) - 1  # the 64 codes (the last step emits the forced end token)
    return run


def hf_image(s: Setup, scale: float = 2.0):
    begin = s.vocab.begin_id("image")
    ids = torch.tensor([prompt_ids(s) + [begin]])
    negative = torch.tensor([[s.vocab.bos_id, begin]])
    codes = list(s.vocab.span("image"))

    def run() -> int:
        with torch.inference_mode():
            out = s.core.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False, guidance_scale=scale,
                                  negative_prompt_ids=negative, prefix_allowed_tokens_fn=lambda *_: codes,
                                  pad_token_id=s.vocab.pad_id)
        return out.shape[1] - ids.shape[1]
    return run


def read_bandwidth(gigabytes: float = 0.5, repeats: int = 3) -> float:
    """Bytes/s of streaming a large fp32 tensor through a reduction (what decode does with the weights)."""
    x = torch.ones(int(gigabytes * 2**30 / 4))
    x.sum()
    best = min(timed(lambda: (x.sum(), 0)[1])[0] for _ in range(repeats))
    return x.numel() * 4 / best


def weight_bytes(core: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in core.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def measure(s: Setup, task: str, new_tokens: int, repeats: int) -> dict[str, list[float]]:
    """Tokens/s of each contender, alternated (hf, eager, compiled, hf, ...), plus the bandwidth floor measured
    between rounds; every ratio is taken within one round, so slow phases of the machine hit all contenders."""
    if task == "text":
        runs = {"hf": hf_text(s, new_tokens), "eager": anygen_text(s, new_tokens, False),
                "compiled": anygen_text(s, new_tokens, True)}
        if BF16:
            runs["bf16"] = anygen_text(s, new_tokens, False, torch.bfloat16)
    else:
        runs = {"hf": hf_image(s), "eager": anygen_image(s, False), "compiled": anygen_image(s, True)}
        if BF16:
            runs["bf16"] = anygen_image(s, False, matmul_dtype=torch.bfloat16)
    for run in runs.values():
        run()  # warm up (and trace, when compiling)
    rates: dict[str, list[float]] = {name: [] for name in [*runs, "floor"]}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds, n = timed(run)
            rates[name].append(n / seconds)
        rates["floor"].append(read_bandwidth() / weight_bytes(s.core))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.configs:
        s = build(name)
        params = sum(p.numel() for p in s.core.parameters()) / 1e6
        for task in ("text", "image + CFG 2"):
            r = measure(s, task, args.new_tokens, args.repeats)
            ratio = lambda a, b: [x / y for x, y in zip(r[a], r[b])]  # noqa: E731 -- per round
            rows.append(f"| {name} ({params:.1f}M) | {task} | {statistics.median(r['hf']):.1f} | "
                        f"{statistics.median(r['eager']):.1f} | {statistics.median(r['compiled']):.1f} | "
                        f"{spread(ratio('eager', 'hf'))}x | {spread(ratio('compiled', 'hf'))}x | "
                        f"{statistics.median(r['floor']):.1f} | {spread(ratio('floor', 'hf'))}x | "
                        f"{spread([100 * x for x in ratio('eager', 'floor')], 0)}% | "
                        f"{spread([100 * x for x in ratio('compiled', 'floor')], 0)}% |" + (
                            f" {statistics.median(r['bf16']):.1f} | {spread(ratio('bf16', 'hf'))}x | "
                            f"{spread([50 * x for x in ratio('bf16', 'floor')], 0)}% |" if BF16 else ""))
            print(rows[-1], flush=True)
    command = "python benchmarks/decode.py " + " ".join(sys.argv[1:])
    body = "\n".join([
        f"## Decode speed (batch 1, fp32, {cpu_vendor()} CPU)",
        "",
        f"`{command.strip()}` -- {cpu_name()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), {args.new_tokens} text tokens / one 64-code image. Contenders alternate within "
        f"each of {args.repeats} rounds (transformers `generate`, anygen eager, anygen compiled, "
        f"{'anygen eager with bfloat16 products, ' if BF16 else ''}then a read-bandwidth measurement); rates are "
        "medians, ratios are medians of the per-round ratios with their range. "
        "The bandwidth floor is weight bytes per token over the measured read bandwidth; floor / generate is the "
        "most any decoder that reads every weight once per token from memory could gain over `generate`. anygen reads "
        "only the output-matrix rows of the ids the grammar allows (the codes in an image span, the text ids and "
        "specials in text), so it may pass that floor. " + (
            "anygen's eager step multiplies by oneDNN-packed copies of the weights at 100M and by the weights in place "
            "at 6M (below `fast_decode.PACK_MIN_BYTES`); " if fast_decode.PACK_BY_DEFAULT else
            "anygen's eager step multiplies by the weights in place (no packed copies on an Intel CPU, "
            "`fast_decode.PACK_BY_DEFAULT`); ") + "the compiled step always by the weights in place." + (
            " The bfloat16 contender (this CPU multiplies in bfloat16 natively) is the eager step with "
            "`matmul_dtype=torch.bfloat16`, alternated with the others: it reads bfloat16 copies of the weights, "
            "half the bytes, so its own floor is twice the float32 floor of the table." if BF16 else ""),
        "",
        "| core | task | `generate` tok/s | anygen eager tok/s | anygen compiled tok/s | eager / generate | "
        "compiled / generate | bandwidth floor tok/s | floor / generate | eager / floor | compiled / floor |" + (
            " anygen eager, bfloat16 products tok/s | bfloat16 / generate | bfloat16 / its floor |" if BF16 else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if BF16 else ""),
        *rows,
    ])
    print(body)
    if not args.no_write:
        write_section(f"decode-{cpu_vendor()}", body)  # which path wins depends on the CPU's maker (MKL)


if __name__ == "__main__":
    main()
