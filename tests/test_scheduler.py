"""The continuous-batching scheduler: the eager loop's results, one row's tokens whatever else runs, and rows that
leave when their caller does (cancellation, timeout, a full queue)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from anygen.errors import GenerationError, InvalidArgumentError
from anygen.generation.fast_decode import bf16_matmul_supported
from anygen.generation.loop import generate
from anygen.generation.sampling import Guidance, SamplingParams
from anygen.generation.scheduler import (RequestCancelled, RequestScope, RequestTimeout, Scheduler, SchedulerBusy,
                                         request_scope)
from anygen.model import AnyGen
from anygen.pipelines import AnyGenPipeline
from anygen.types import TextSegment


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture()
def setup(tiny_model: AnyGen):
    pipe = AnyGenPipeline(tiny_model, max_audio_seconds=1.0)
    scheduler = Scheduler(tiny_model.core, tiny_model.vocab, block_rows=4, blocks=3)
    yield tiny_model, pipe._rules(), scheduler
    scheduler.close()


def prompts_for(model: AnyGen, texts: list[str]) -> list[list[int]]:
    return [[model.vocab.bos_id, *model.processor.encode([TextSegment(t)])] for t in texts]


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


SETTINGS = {
    "sampled": {"max_new_tokens": 40},
    "greedy": {"max_new_tokens": 40, "sampling": {"text": SamplingParams(do_sample=False)}},
    "top_k_top_p": {"max_new_tokens": 30, "sampling": {"text": SamplingParams(0.7, top_k=5, top_p=0.9)}},
    "image_only": {"max_new_tokens": 20, "open_modalities": ["image"]},
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_scheduler_samples_what_the_eager_loop_samples(setup, name: str) -> None:
    model, rules, scheduler = setup
    prompts = prompts_for(model, ["a red circle", "say hello", "two green triangles"])
    kwargs = SETTINGS[name]
    eager = generate(model.core, model.vocab, rules, prompts, generator=seeded(1), **kwargs)
    served = scheduler.generate(model.core, model.vocab, rules, prompts, generator=seeded(1), **kwargs)
    assert served.sequences == eager.sequences
    assert served.finished == eager.finished


def test_guided_rows_match_the_eager_loop(setup) -> None:
    model, rules, scheduler = setup
    prompts = prompts_for(model, ["a red circle", "a yellow star"])
    guidance = Guidance([[model.vocab.bos_id]] * 2, 3.0, modalities=("image", "audio"))
    eager = generate(model.core, model.vocab, rules, prompts, max_new_tokens=60, guidance=guidance,
                     generator=seeded(2))
    served = scheduler.generate(model.core, model.vocab, rules, prompts, max_new_tokens=60, guidance=guidance,
                                generator=seeded(2))
    assert served.sequences == eager.sequences


BF16 = pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    not bf16_matmul_supported(), reason="this CPU does not multiply in bfloat16 natively"))


@pytest.mark.parametrize("matmul_dtype", [torch.float32, BF16], ids=["float32", "bfloat16"])
def test_a_request_gets_the_same_tokens_alone_and_among_others(setup, matmul_dtype: torch.dtype) -> None:
    """Jobs of every kind join a running batch at different steps; each one's tokens equal its tokens alone (also
    with the products in bfloat16)."""
    model, rules, scheduler = setup
    if matmul_dtype != torch.float32:
        scheduler = Scheduler(model.core, model.vocab, block_rows=4, blocks=3, matmul_dtype=matmul_dtype)
        assert scheduler.stats()["matmul_dtype"] == "bfloat16"
    bos = model.vocab.bos_id
    image_begin = model.vocab.begin_id("image")
    jobs = {  # name -> (prompts, kwargs)
        "image_cfg": (prompts_for(model, ["a red circle"] * 2), {
            "max_new_tokens": 17, "guidance": Guidance([[bos, image_begin]] * 2, 2.5, modalities=("image",))}),
        "text": (prompts_for(model, ["say hello"]), {"max_new_tokens": 50}),
        "greedy": (prompts_for(model, ["two green triangles"]), {
            "max_new_tokens": 30, "sampling": {"text": SamplingParams(do_sample=False)}}),
        "filtered": (prompts_for(model, ["a yellow star"]), {
            "max_new_tokens": 45, "sampling": {"text": SamplingParams(0.8, top_k=7, top_p=0.8)}}),
        "image_only": (prompts_for(model, ["draw", "a square"]), {"max_new_tokens": 25, "open_modalities": ["image"]}),
        "text_only": (prompts_for(model, ["hello"]), {"max_new_tokens": 20, "open_modalities": [],
                                                      "min_new_tokens": 5}),
    }
    jobs["image_cfg"] = ([p + [image_begin] for p in jobs["image_cfg"][0]], jobs["image_cfg"][1])

    def run(name: str, seed: int) -> list[list[int]]:
        prompts, kwargs = jobs[name]
        return scheduler.generate(model.core, model.vocab, rules, prompts, generator=seeded(seed), **kwargs).sequences

    alone = {name: run(name, seed) for seed, name in enumerate(jobs)}
    together: dict[str, list[list[int]]] = {}

    def late(name: str, seed: int, delay: float) -> None:
        time.sleep(delay)
        together[name] = run(name, seed)

    threads = [threading.Thread(target=late, args=(name, seed, 0.01 * seed)) for seed, name in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if scheduler is not setup[2]:
        scheduler.close()
    assert together == alone


def test_a_block_runs_only_the_rows_in_use_and_keeps_each_jobs_tokens(tiny_model: AnyGen) -> None:
    """A lone job runs on the smallest checked row count; as others join, the block grows; every job's tokens equal
    its tokens alone."""
    model, rules = tiny_model, AnyGenPipeline(tiny_model, max_audio_seconds=1.0)._rules()
    scheduler = Scheduler(model.core, model.vocab, block_rows=16, blocks=1, cache_len=256)
    try:
        assert scheduler.row_sizes[-1] == 16 and scheduler.row_sizes == sorted(scheduler.row_sizes)
        ran: list[int] = []
        for n, step in list(scheduler._fast[0].items()):
            scheduler._fast[0][n] = lambda *args, n=n, step=step: ran.append(n) or step(*args)
        bos, image_begin = model.vocab.bos_id, model.vocab.begin_id("image")
        guided = ([p + [image_begin] for p in prompts_for(model, ["a red circle"])],
                  {"max_new_tokens": 20, "guidance": Guidance([[bos, image_begin]], 2.0, modalities=("image",))})
        texts = [(prompts_for(model, [t]), {"max_new_tokens": 12 + 4 * i})
                 for i, t in enumerate(["say hello", "a blue square", "two stars", "hello", "red", "a green star"])]
        specs = [guided, *texts]

        def run(i: int) -> list[list[int]]:
            prompts, kwargs = specs[i]
            return scheduler.generate(model.core, model.vocab, rules, prompts, generator=seeded(i), **kwargs).sequences

        alone = [run(i) for i in range(len(specs))]
        fit = [min(n for n in scheduler.row_sizes if n >= rows) for rows in (1, 2)]
        assert set(ran) == set(fit)  # the guided job's two rows, then one row at a time
        ran.clear()
        together: dict[int, list[list[int]]] = {}
        threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, run(i))) for i in range(len(specs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [together[i] for i in range(len(specs))] == alone
        assert set(ran) <= set(scheduler.row_sizes)
    finally:
        scheduler.close()


def test_row_counts_that_compute_otherwise_are_never_run(tiny_model: AnyGen, monkeypatch) -> None:
    from anygen.generation import fast_decode

    call = fast_decode.LlamaDecodeStep.__call__
    # A step whose rows depend on how many rows share the call (as a BLAS kernel chosen by shape may).
    monkeypatch.setattr(fast_decode.LlamaDecodeStep, "__call__",
                        lambda self, tokens, *args: call(self, tokens, *args) + 1e-6 * tokens.shape[0])
    scheduler = Scheduler(tiny_model.core, tiny_model.vocab, block_rows=16, blocks=1, cache_len=128)
    try:
        assert scheduler.row_sizes == [16]
    finally:
        scheduler.close()


def test_jobs_sampled_as_one_batch_get_the_tokens_they_get_alone(setup) -> None:
    """The scheduler samples the rows of jobs with the same span rules in one batch (guidance per job, then one
    grammar mask and one draw over all rows); each job's tokens and grammar states equal its own step alone."""
    model, rules, scheduler = setup
    scheduler.close()
    bos, image_begin = model.vocab.bos_id, model.vocab.begin_id("image")
    specs = [  # (prompts, kwargs): sampled, greedy, guided inside an image span, text only with min_new_tokens
        (prompts_for(model, ["a red circle", "say hello"]), {"max_new_tokens": 30}),
        (prompts_for(model, ["two green triangles"]), {"max_new_tokens": 9,
                                                        "sampling": {"text": SamplingParams(do_sample=False)}}),
        ([p + [image_begin] for p in prompts_for(model, ["a star"])],
         {"max_new_tokens": 17, "guidance": Guidance([[bos, image_begin]], 2.5, modalities=("image",))}),
        (prompts_for(model, ["hello"]), {"max_new_tokens": 20, "open_modalities": [], "min_new_tokens": 5}),
    ]

    def jobs() -> list:
        made = []
        for seed, (prompts, kwargs) in enumerate(specs):
            kwargs = dict(kwargs)
            job = scheduler._job(rules, prompts, kwargs.pop("max_new_tokens"), kwargs.get("sampling"),
                                 kwargs.get("guidance"), kwargs.get("open_modalities"), seeded(seed),
                                 kwargs.get("min_new_tokens", 0))
            job.logits = torch.randn(len(job.prompts), model.vocab.size, generator=seeded(10 + seed)) * 4
            made.append(job)
        return made

    together, alone = jobs(), jobs()
    assert len({job.group for job in together}) == 1
    for _ in range(3):  # three steps, fresh logits each time
        batched = scheduler._sample(together)
        single = [scheduler._sample([job])[0] for job in alone]
        for a, b in zip(batched, single):
            assert torch.equal(a.tokens, b.tokens)
            assert all(torch.equal(getattr(a.after, k), getattr(b.after, k)) for k in ("mode", "pos", "limit"))
        for i, (a, b) in enumerate(zip(together, alone)):
            a.logits = b.logits = torch.randn(len(a.prompts), model.vocab.size, generator=seeded(20 + i)) * 4
    assert [job.index for job in together] == [3] * len(specs)


def test_a_job_with_non_finite_logits_fails_alone(setup) -> None:
    model, rules, scheduler = setup
    scheduler.close()
    made = [scheduler._job(rules, prompts_for(model, [text]), 10, None, None, None, seeded(0))
            for text in ("a", "b", "c")]
    for job in made:
        job.logits = torch.randn(1, model.vocab.size)
    made[1].logits[0, 3] = float("nan")
    out = scheduler._sample_group(made)
    assert isinstance(out[1], GenerationError) and "non-finite" in str(out[1])
    assert [type(o).__name__ for o in (out[0], out[2])] == ["Step", "Step"]
    assert made[0].index == made[2].index == 1 and made[1].index == 0


def test_a_closed_consumer_frees_its_rows_within_a_step(setup) -> None:
    model, rules, scheduler = setup
    prompts = prompts_for(model, ["a red circle"])
    steps = scheduler.decode_steps(model.core, model.vocab, rules, prompts, max_new_tokens=400, generator=seeded(0))
    next(steps)
    next(steps)
    assert scheduler.stats()["active_rows"] == 1
    steps.close()  # what a server does when the client disconnects
    assert wait_for(lambda: scheduler.stats()["active_rows"] == 0, timeout=5.0)
    after = scheduler.generate(model.core, model.vocab, rules, prompts, max_new_tokens=5, generator=seeded(0))
    assert len(after.sequences[0]) == 5  # and it keeps serving


def test_a_cancelled_scope_ends_its_jobs_and_refuses_new_ones(setup) -> None:
    model, rules, scheduler = setup
    prompts = prompts_for(model, ["say hello"])
    scope = RequestScope()
    with request_scope(scope):
        steps = scheduler.decode_steps(model.core, model.vocab, rules, prompts, max_new_tokens=400)
    next(steps)
    scope.cancel()
    with pytest.raises(RequestCancelled):
        list(steps)
    assert wait_for(lambda: scheduler.stats()["active_rows"] == 0)
    with request_scope(scope), pytest.raises(RequestCancelled):
        scheduler.decode_steps(model.core, model.vocab, rules, prompts, max_new_tokens=4)


def test_a_request_past_its_deadline_times_out(setup) -> None:
    model, rules, scheduler = setup
    with request_scope(RequestScope(timeout=0.0)), pytest.raises(RequestTimeout):
        scheduler.generate(model.core, model.vocab, rules, prompts_for(model, ["say hello"]), max_new_tokens=400)
    assert wait_for(lambda: scheduler.stats()["active_rows"] == 0)


def test_a_full_queue_refuses_with_scheduler_busy(tiny_model: AnyGen) -> None:
    rules = AnyGenPipeline(tiny_model, max_audio_seconds=1.0)._rules()
    scheduler = Scheduler(tiny_model.core, tiny_model.vocab, block_rows=2, blocks=1, max_queue=1)
    try:
        prompts = prompts_for(tiny_model, ["a red circle", "say hello"])
        running = scheduler.submit(rules, prompts, max_new_tokens=400).steps()
        next(running)  # admitted: both rows are taken
        waiting = scheduler.submit(rules, prompts[:1], max_new_tokens=4)
        with pytest.raises(SchedulerBusy, match="busy"):
            scheduler.submit(rules, prompts[:1], max_new_tokens=4)
        running.close()
        assert len(list(waiting.steps())) == 4  # the waiting job runs once rows free up
    finally:
        scheduler.close()


def test_jobs_that_can_never_fit_are_refused_before_queueing(setup) -> None:
    model, rules, scheduler = setup
    prompts = prompts_for(model, ["a red circle"] * 13)  # 13 rows, the batch has 12
    with pytest.raises(InvalidArgumentError, match="13 rows"):
        scheduler.submit(rules, prompts, max_new_tokens=4)
    with pytest.raises(InvalidArgumentError, match="max_new_tokens"):
        scheduler.submit(rules, prompts[:1], max_new_tokens=scheduler.cache_len)
    with pytest.raises(InvalidArgumentError, match="max_new_tokens"):
        scheduler.submit(rules, prompts[:1], max_new_tokens=0)
    assert scheduler.stats() == {"active_rows": 0, "active_jobs": 0, "waiting": 0, "steps": 0, "tokens": 0,
                                 "compiled": False, "row_sizes": scheduler.row_sizes, "matmul_dtype": "float32"}


def test_a_closed_scheduler_fails_its_jobs(tiny_model: AnyGen) -> None:
    rules = AnyGenPipeline(tiny_model, max_audio_seconds=1.0)._rules()
    scheduler = Scheduler(tiny_model.core, tiny_model.vocab, block_rows=2, blocks=1)
    steps = scheduler.submit(rules, prompts_for(tiny_model, ["say hello"]), max_new_tokens=400).steps()
    next(steps)
    scheduler.close()
    with pytest.raises(GenerationError, match="closed"):
        list(steps)


def test_a_pipeline_with_the_scheduler_returns_what_the_eager_pipeline_returns(tiny_model: AnyGen) -> None:
    eager = AnyGenPipeline(tiny_model, max_audio_seconds=1.0)
    scheduler = Scheduler(tiny_model.core, tiny_model.vocab, block_rows=4, blocks=2)
    try:
        served = AnyGenPipeline(tiny_model, max_audio_seconds=1.0, sampler=scheduler.decode_steps)
        images = [pipe.text_to_image("a red circle", num_images_per_prompt=2, generator=seeded(3),
                                     num_candidates=2).images for pipe in (eager, served)]
        assert [x.tobytes() for x in images[0]] == [x.tobytes() for x in images[1]]
        assert torch.equal(eager.speak("say hello", generator=seeded(4), num_candidates=2).audios[0],
                           served.speak("say hello", generator=seeded(4), num_candidates=2).audios[0])
        with pytest.raises(InvalidArgumentError, match="num_candidates"):  # 8 x 2 rows do not fit in 8
            served.text_to_image("a red circle", generator=seeded(3))
    finally:
        scheduler.close()
