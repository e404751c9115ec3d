"""Does continuous batching pay? Writes the ``serve`` section of benchmarks/RESULTS.md.

One pass = the same mixed requests (text to image with guidance, speech, a question about a picture) with fixed
seeds: ``--requests`` of them, rounds of a 16-request mix. With as many clients as requests a pass is one batch and
ends with its slowest request; with several requests per client, requests join the running batch as others leave
(the server's steady state). Contenders, alternated pass by pass (the order rotates every repeat):

- **one at a time**: the pipeline API's eager loop, one call after another in this process (a server without
  batching would do no better: its HTTP overhead is left out);
- **server, c clients**: ``anygen serve`` in its own process, ``c`` client threads sending the pass's requests
  over loopback HTTP (the openai client), so up to ``c`` requests share the running batch.

Reported: images/s and generated tokens/s over the pass (guidance branches not counted), and the p50 / p99 of the
requests' latencies (p99 of one pass is close to its slowest request); medians (min-max) over ``--repeats``. A
second table times one core call over a block of R rows (the scheduler's unit of work, its products in the server's
``--matmul-dtype``) and the pipelines' own step over 2 rows (an image with guidance), alternated, which bounds what
batching can gain on this machine. Sections are named by the CPU's maker and the products' dtype.

    python benchmarks/serve.py --repeats 5 --clients 1 4 16 --requests 64
    python benchmarks/serve.py --repeats 5 --clients 1 4 16 --requests 64 --matmul-dtype bfloat16
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, cpu_vendor, write_section  # noqa: E402

from anygen.assets import model_dir  # noqa: E402
from anygen.generation.fast_decode import MATMUL_DTYPES, LlamaDecodeStep, fastest_matmul_dtype  # noqa: E402
from anygen.generation.loop import decode_steps  # noqa: E402
from anygen.model import AnyGen  # noqa: E402
from anygen.pipelines import AnyGenPipeline  # noqa: E402
from anygen.types import ImageSegment, TextSegment  # noqa: E402

PROMPTS = ["a red circle", "a blue square on the left", "two green triangles", "a yellow star above a red circle",
           "a purple square", "three blue circles", "a green star", "an orange triangle below a blue square"]
WORDS = ["hello", "red circle", "play the notes C5 E5", "good morning"]


@dataclass
class Request:
    """One request of a pass: how the eager pipeline answers it and how the openai client asks for it."""

    kind: str
    images: int
    eager: Callable[[AnyGenPipeline], object]
    http: Callable[[object], object]


def workload(picture: bytes, count: int = 16) -> list[Request]:
    """``count`` requests: rounds of the 16-request mix, each round with its own seeds. Both contenders do the same
    work: one sample per image and per clip (the server's default; the pipelines' own defaults pick among several)."""
    return [r for start in range(0, count, 16) for r in mix(picture, seed=start)][:count]


def mix(picture: bytes, seed: int = 0) -> list[Request]:
    url = "data:image/png;base64," + base64.b64encode(picture).decode()
    segments = [TextSegment("What colour is the shape?"), ImageSegment(Image.open(io.BytesIO(picture)))]
    requests = []
    for i, prompt in enumerate(PROMPTS):
        requests.append(Request(
            "image", 1,
            lambda pipe, p=prompt, s=seed + i: pipe.text_to_image(p, generator=torch.Generator().manual_seed(s),
                                                                  num_candidates=1),
            lambda client, p=prompt, s=seed + i: client.images.generate(model="m", prompt=p, extra_body={"seed": s})))
    for i, words in enumerate(WORDS):
        requests.append(Request(
            "speech", 0,
            lambda pipe, w=words, s=seed + i: pipe.speak(w, generator=torch.Generator().manual_seed(s),
                                                         num_candidates=1),
            lambda client, w=words, s=seed + i: client.audio.speech.create(model="m", voice="default", input=w,
                                                                           extra_body={"seed": s})))
    question = [{"role": "user", "content": [{"type": "text", "text": "What colour is the shape?"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    for i in range(4):
        requests.append(Request(
            "question", 0,
            lambda pipe, s=seed + i: pipe.stream(segments, max_new_tokens=32,
                                                 generator=torch.Generator().manual_seed(s), output_modalities=[]),
            lambda client, s=seed + i: client.chat.completions.create(model="m", messages=question, max_tokens=32,
                                                                      modalities=["text"], temperature=1.0, seed=s)))
    kinds = [[r for r in requests if r.kind == k] for k in ("image", "speech", "question")]
    mixed = [r for group in zip(kinds[0][::2], kinds[0][1::2], kinds[1], kinds[2]) for r in group]
    return mixed  # image, image, speech, question, image, ...: any prefix is a mix


# ---- contenders ----------------------------------------------------------------------------------------------


@dataclass
class Pass:
    seconds: float
    latencies: list[float]
    images: int
    tokens: int


class CountingSampler:
    """The eager loop, counting the tokens it generates for rows that are not done (as the scheduler does)."""

    def __init__(self, done_mode: int) -> None:
        self.done_mode, self.tokens = done_mode, 0

    def __call__(self, *args: object, **kwargs: object) -> Iterator:
        for step in decode_steps(*args, **kwargs):
            self.tokens += int((step.before.mode != self.done_mode).sum())
            yield step


def one_at_a_time(pipe: AnyGenPipeline, sampler: CountingSampler, requests: list[Request]) -> Pass:
    before = sampler.tokens
    latencies = []
    began = time.perf_counter()
    for request in requests:
        start = time.perf_counter()
        out = request.eager(pipe)
        if isinstance(out, Iterator):
            list(out)
        latencies.append(time.perf_counter() - start)
    return Pass(time.perf_counter() - began, latencies, sum(r.images for r in requests), sampler.tokens - before)


def served(url: str, clients: int, requests: list[Request]) -> Pass:
    import openai

    client = openai.OpenAI(api_key="unused", base_url=url + "/v1", max_retries=0, timeout=3600)
    before = httpx.get(url + "/health").json()["tokens"]

    def timed(request: Request) -> float:
        start = time.perf_counter()
        request.http(client)
        return time.perf_counter() - start

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(timed, requests))
    seconds = time.perf_counter() - began
    tokens = httpx.get(url + "/health").json()["tokens"] - before
    return Pass(seconds, latencies, sum(r.images for r in requests), tokens)


@dataclass
class Tally:
    passes: list[Pass] = field(default_factory=list)

    def rates(self, what: str) -> list[float]:
        return [getattr(p, what) / p.seconds for p in self.passes]

    def latency(self, q: float) -> list[float]:
        return [statistics.quantiles(p.latencies, n=100, method="inclusive")[int(q) - 1] for p in self.passes]


def block_costs(model: AnyGen, sizes: list[int], repeats: int, matmul_dtype: str,
                calls: int = 20) -> dict[str, tuple[int, list[float]]]:
    """Milliseconds per eager fast-step call on ``R`` rows of a slot cache whose rows use 64 columns: the scheduler's
    step (packed products in ``matmul_dtype``) for each of ``sizes``, the same in float32 over the largest size when
    ``matmul_dtype`` is another, and the pipelines' own step over 2 rows, all alternated. Keyed by a label, each with
    its row count."""
    from anygen.generation.slot_cache import slot_cache

    core, length, used = model.core, 512, 64

    def cache(r: int) -> object:
        return slot_cache(core, r, length, torch.zeros(r, dtype=torch.long))

    steps = {f"server, {r}": (r, LlamaDecodeStep(core, cache(r), pack=True, matmul_dtype=MATMUL_DTYPES[matmul_dtype]))
             for r in sizes}
    if matmul_dtype != "float32":
        steps[f"server in float32, {sizes[-1]}"] = (sizes[-1], LlamaDecodeStep(core, cache(sizes[-1]), pack=True))
    steps["pipelines, 2"] = (2, LlamaDecodeStep(core, cache(2)))
    costs: dict[str, tuple[int, list[float]]] = {label: (r, []) for label, (r, _) in steps.items()}
    with torch.inference_mode():
        for repeat in range(repeats + 1):  # the first round warms up
            for label, (r, step) in steps.items():
                mask = (torch.arange(used)[None] <= 20)[:, None, None, :].expand(r, 1, 1, used)
                args = (torch.zeros(r, 1, dtype=torch.long), torch.full((r, 1), 20), torch.full((r,), 20), mask)
                began = time.perf_counter()
                for _ in range(calls):
                    step(*args)
                if repeat:
                    costs[label][1].append(1000 * (time.perf_counter() - began) / calls)
    return costs


def spread(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


# ---- the server process --------------------------------------------------------------------------------------


def start_server(model: str, block_rows: int, blocks: int, threads: int, compile: bool,
                 matmul_dtype: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "anygen", "serve", "--model", model, "--port", str(port), "--log-level",
               "warning", "--served-model-name", "m", "--block-rows", str(block_rows), "--blocks", str(blocks),
               "--max-queue", "64", "--compile" if compile else "--no-compile", "--matmul-dtype", matmul_dtype]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            health = httpx.get(url + "/health", timeout=2)
            if health.status_code == 200 and (health.json()["compiled"] or not compile):  # timed once compiled
                return process, url
            time.sleep(0.5)
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="anygen-tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=16,
                        help="requests per pass: rounds of the 16-request mix, new seeds each round")
    parser.add_argument("--block-rows", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each process (client, server)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="the server's compiled decode step (timing starts once it is traced)")
    parser.add_argument("--matmul-dtype", default="auto", choices=["auto", *sorted(MATMUL_DTYPES)],
                        help="the server's --matmul-dtype (the pipelines' one-at-a-time contender keeps float32)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    directory = model_dir(args.model)
    began = time.perf_counter()
    say = lambda what: print(f"[{time.perf_counter() - began:6.0f} s] {what}", flush=True)  # noqa: E731
    model = AnyGen.from_pretrained(directory)
    if args.matmul_dtype == "auto":  # as the server resolves it
        args.matmul_dtype = "float32" if args.compile else str(fastest_matmul_dtype(model.core)).removeprefix("torch.")
    sampler = CountingSampler(done_mode=len(model.vocab.modality_names))  # the grammar's mode after <|eos|>
    pipe = AnyGenPipeline(model, sampler=sampler)
    pipe.set_progress_bar_config(disable=True)
    picture = io.BytesIO()
    pipe.text_to_image("a red circle", generator=torch.Generator().manual_seed(0)).images[0].save(picture, "PNG")
    requests = workload(picture.getvalue(), args.requests)
    say("model loaded")
    costs = block_costs(model, [2, 8, 16, 32], args.repeats, args.matmul_dtype)
    say("timed the core calls")
    process, url = start_server(args.model, args.block_rows, args.blocks, args.threads, args.compile,
                                args.matmul_dtype)
    row_sizes = httpx.get(url + "/health").json()["row_sizes"]
    say(f"server up; a block runs {row_sizes} rows")
    try:
        names = ["one at a time", *[f"server, {c} clients" for c in args.clients]]
        run = {"one at a time": lambda: one_at_a_time(pipe, sampler, requests),
               **{f"server, {c} clients": (lambda c=c: served(url, c, requests)) for c in args.clients}}
        warm = requests[:3]
        for name in names:  # a short warm-up of each, not counted
            (one_at_a_time(pipe, sampler, warm) if name == "one at a time" else served(url, 4, warm))
            say(f"warmed up: {name}")
        tallies = {name: Tally() for name in names}
        load = [os.getloadavg()[0]]
        for repeat in range(args.repeats):
            order = names[repeat % len(names):] + names[: repeat % len(names)]
            for name in order:
                tallies[name].passes.append(run[name]())
                say(f"repeat {repeat}: {name}: {tallies[name].passes[-1].seconds:.1f} s")
                load.append(os.getloadavg()[0])
    finally:
        process.terminate()
        process.wait(30)
    body = table(args, argv, requests, tallies, load, row_sizes) + "\n\n" + cost_table(costs)
    print(body)
    if not args.no_write:  # one section per CPU maker, products' dtype and thread count
        name = "-".join(["serve", cpu_vendor(), *([] if args.matmul_dtype == "float32" else [args.matmul_dtype]),
                         *([] if args.threads == 1 else [f"threads-{args.threads}"])])
        write_section(name, body)
    return 0


def table(args: argparse.Namespace, argv: list[str] | None, requests: list[Request], tallies: dict[str, Tally],
          load: list[float], row_sizes: list[int]) -> str:
    base = tallies["one at a time"].rates("tokens")
    kinds = {k: sum(r.kind == k for r in requests) for k in ("image", "speech", "question")}
    lines = [
        "## Serving: continuous batching vs one request at a time"
        + ("" if args.threads == 1 else f" ({args.threads} torch threads per process)"),
        "",
        f"`python benchmarks/serve.py {shlex.join(argv or sys.argv[1:])}` on {cpu_name()} "
        f"({os.cpu_count()} cores, {args.threads} torch thread(s) per process), torch {torch.__version__}, model "
        f"`{args.model}`; the server multiplies in {args.matmul_dtype} and batches "
        f"{args.blocks} blocks of {args.block_rows} rows (a block runs only its first rows in use, rounded up to "
        f"one of {row_sizes}). A pass is {len(requests)} requests: "
        f"{kinds['image']} text-to-image (guidance 2: two rows each), {kinds['speech']} speech (guidance 2), "
        f"{kinds['question']} questions about a picture (32 tokens). Median (min-max) of {args.repeats} passes per "
        f"contender, contenders alternated; p99 of a pass of {len(requests)} requests is about its slowest one. "
        f"The machine's 1-minute load average during the run: {min(load):.1f}-{max(load):.1f} (other work shared "
        "its cores whenever this is above ~2).",
        "",
        "| contender | images/s | tokens/s | p50 latency (s) | p99 latency (s) | tokens/s vs one at a time |",
        "|---|---|---|---|---|---|",
    ]
    for name, tally in tallies.items():
        ratio = [t / b for t, b in zip(tally.rates("tokens"), base)]
        lines.append(f"| {name} | {spread(tally.rates('images'), 2)} | {spread(tally.rates('tokens'), 0)} | "
                     f"{spread(tally.latency(50), 2)} | {spread(tally.latency(99), 2)} | {spread(ratio, 2)}x |")
    return "\n".join(lines)


def cost_table(costs: dict[str, tuple[int, list[float]]]) -> str:
    lines = ["| whose step, rows per core call | ms per call | ms per row |", "|---|---|---|"]
    for label, (rows, values) in costs.items():
        lines.append(f"| {label} | {spread(values, 1)} | {spread([v / rows for v in values], 2)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
