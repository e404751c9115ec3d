"""The lean Llama decode step computes what the transformers forward computes, the loops use it where it applies,
and cores it does not cover (hooks, other architectures) keep their own forward."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, StaticCache

from anygen.core import CoreConfig, build_core
from anygen.errors import InvalidArgumentError
from anygen.generation import fast_decode
from anygen.generation.loop import KVRunner, generate
from anygen.generation.sampling import Guidance, SamplingParams
from anygen.generation.scheduler import Scheduler
from anygen.generation.slot_cache import slot_cache
from anygen.model import AnyGen
from anygen.pipelines import AnyGenPipeline
from anygen.types import TextSegment


def llama(vocab: int = 300, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    core = build_core(CoreConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96),
                      vocab).eval()
    with torch.no_grad():
        for p in core.parameters():  # larger weights than the default init, so the logits are far from uniform
            p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return core.to(dtype)


def decode_both(core: torch.nn.Module, prompts: list[list[int]], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decode of ``prompts`` through the transformers forward and through the fast step, from one prefill
    each; returns the per-step logits of both, ``(steps, R, V)``."""
    results = []
    for fast in (False, True):
        runner = KVRunner(core, prompts, 0, steps)
        runner.fast = fast
        if not fast:
            runner.forward = _forward
        logits, out = runner.prefill(), []
        with torch.inference_mode():
            for _ in range(steps):
                logits = runner.decode(logits.argmax(-1))
                out.append(logits.float())
        results.append(torch.stack(out))
    return results[0], results[1]


def _forward(core, tokens, mask, positions, cache, slot, cache_key):
    return core(input_ids=tokens, attention_mask=mask, position_ids=positions, **{cache_key: cache},
                use_cache=True, cache_position=slot).logits[:, -1]


def allow_packing(monkeypatch) -> None:
    """Pack the test cores' weights however small they are, on every CPU (Intel CPUs read them in place by
    default)."""
    monkeypatch.setattr(fast_decode, "PACK_MIN_BYTES", 0)
    monkeypatch.setattr(fast_decode, "PACK_BY_DEFAULT", True)


@pytest.fixture(params=[False, True], ids=["in-place", "packed"])
def packing(request, monkeypatch) -> bool:
    """Runs a test with the small test cores' weights read in place and through packed copies (cores this small
    are not packed by default)."""
    if request.param:
        allow_packing(monkeypatch)
    return request.param


def test_the_fast_step_gives_the_transformers_logits_over_padded_rows(packing: bool) -> None:
    core = llama()
    assert fast_decode.supports(core)
    assert (fast_decode.packed_weights(core) is not None) is packing
    prompts = [[1, 5, 9, 200, 17, 3], [1, 250], [1, 7, 7, 7]]  # left padding differs per row
    reference, fast = decode_both(core, prompts, 12)
    assert reference.argmax(-1).unique().numel() > 3  # the greedy tokens are not one repeated id
    torch.testing.assert_close(fast, reference, atol=2e-5, rtol=2e-5)
    assert torch.equal(fast.argmax(-1), reference.argmax(-1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_fast_step_follows_half_precision_cores(dtype: torch.dtype) -> None:
    reference, fast = decode_both(llama(dtype=dtype), [[1, 5, 9, 200], [1, 42]], 6)
    torch.testing.assert_close(fast, reference, atol=0.05, rtol=0.02)


def test_cores_the_step_does_not_cover_are_recognised() -> None:
    core = llama()
    handle = core.model.layers[0].mlp.up_proj.register_forward_hook(lambda *args: None)
    assert not fast_decode.supports(core)  # a hook (e.g. gated adapters) must run, so the forward decodes
    handle.remove()
    assert fast_decode.supports(core)
    core.config._attn_implementation = "flex_attention"
    assert not fast_decode.supports(core)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2))
    assert not fast_decode.supports(gpt2)
    runner = KVRunner(gpt2, [[1, 2, 3]], 0, 4)  # another architecture still generates, through its forward
    assert not runner.fast and runner.prefill().shape == (1, 100)


def test_the_fast_prefill_and_steps_write_the_same_cache_as_the_forward(packing: bool) -> None:
    """Every column a token attends to (the padding's columns are never read) holds the forward's keys and values,
    and the prefill's logits are the forward's."""
    core = llama()
    caches, logits = [], []
    for fast in (False, True):
        runner = KVRunner(core, [[1, 4, 8], [1, 9]], 0, 3)
        runner.fast = fast
        if not fast:
            runner.forward = _forward
        with torch.inference_mode():
            logits.append(runner.prefill())
            runner.decode(torch.tensor([11, 12]))
            runner.decode(torch.tensor([13, 14]))
        caches.append(runner.cache)
    torch.testing.assert_close(logits[1], logits[0], atol=2e-5, rtol=2e-5)
    assert isinstance(caches[0], StaticCache)
    read = runner.mask[:, :5].bool()  # (R, columns): row 1's first column is padding
    assert not read.all()
    for a, b in zip(caches[0].layers, caches[1].layers):
        for row in range(2):
            columns = read[row]
            torch.testing.assert_close(b.keys[row, :, :5][:, columns], a.keys[row, :, :5][:, columns],
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(b.values[row, :, :5][:, columns], a.values[row, :, :5][:, columns],
                                       atol=1e-5, rtol=1e-5)


def test_the_schedulers_prefill_gives_the_forwards_logits_and_cache(tiny_model: AnyGen) -> None:
    """Right-padded prompts of different lengths prefilled through the fast step (packed: the shipped model is
    large enough) and through the core's forward: the same logits and the same keys and values in each row's
    slot."""
    prompts = [[tiny_model.vocab.bos_id, *tiny_model.processor.encode([TextSegment(text)])]
               for text in ("a red circle", "two green triangles above a blue square", "hi")]
    assert len({len(p) for p in prompts}) == 3
    fast, forward = (Scheduler(tiny_model.core, tiny_model.vocab, block_rows=4, blocks=1) for _ in range(2))
    try:
        forward._fast = None
        with torch.inference_mode():
            logits = [s._prefill([0, 1, 2], prompts) for s in (fast, forward)]
        torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=1e-4)
        for a, b in zip(fast._caches[0].layers, forward._caches[0].layers):
            for row, prompt in enumerate(prompts):
                torch.testing.assert_close(a.keys[row, :, :len(prompt)], b.keys[row, :, :len(prompt)],
                                           atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(a.values[row, :, :len(prompt)], b.values[row, :, :len(prompt)],
                                           atol=1e-4, rtol=1e-4)
    finally:
        fast.close()
        forward.close()


def test_a_step_told_which_ids_may_follow_computes_only_their_logits(packing: bool) -> None:
    core, prompts = llama(), [[1, 5, 9, 200], [1, 250]]
    full, narrow = KVRunner(core, prompts, 0, 3), KVRunner(core, prompts, 0, 3)
    ids = slice(120, 180)
    with torch.inference_mode():
        tokens = full.prefill().argmax(-1)
        narrow.prefill()
        expected, got = full.decode(tokens), narrow.decode(tokens, ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got[:, ids], expected[:, ids], atol=2e-5, rtol=2e-5)
    assert torch.isneginf(got[:, :120]).all() and torch.isneginf(got[:, 180:]).all()


def test_packed_copies_follow_weights_that_change_between_steps(monkeypatch) -> None:
    """A core that trains between two calls (an optimizer's in-place update, a replaced parameter) decodes with its
    new weights: every packed copy is made again from the weights as they are now."""
    allow_packing(monkeypatch)
    core, prompts = llama(), [[1, 5, 9, 200], [1, 250]]

    def first_step(ids: slice | None = None) -> torch.Tensor:
        runner = KVRunner(core, prompts, 0, 2)
        with torch.inference_mode():
            return runner.decode(runner.prefill().argmax(-1), ids)

    def reference() -> torch.Tensor:
        runner = KVRunner(core, prompts, 0, 2)
        runner.fast, runner.forward = False, _forward
        with torch.inference_mode():
            return runner.decode(runner.prefill().argmax(-1))

    before = first_step()
    optimizer = torch.optim.SGD(core.parameters(), lr=0.5)
    core(torch.tensor(prompts[:1]), labels=torch.tensor(prompts[:1])).loss.backward()
    optimizer.step()  # every weight changes in place
    core.model.layers[1].mlp.up_proj.weight = torch.nn.Parameter(torch.randn(96, 64) * 0.3)  # and one is replaced
    after, narrow, expected = first_step(), first_step(slice(120, 180)), reference()
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(after, expected, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(narrow[:, 120:180], expected[:, 120:180], atol=2e-5, rtol=2e-5)


def test_packing_applies_to_float32_cores_on_a_cpu_within_its_size_bounds(monkeypatch) -> None:
    core = llama()  # ~0.3 MB of weights: cache-resident, read in place by default
    assert fast_decode.packed_weights(core) is None
    allow_packing(monkeypatch)
    packs = fast_decode.packed_weights(core)
    assert packs is not None and fast_decode.packed_weights(core) is packs  # one set of copies per core
    assert fast_decode.packed_weights(llama(dtype=torch.bfloat16)) is None
    monkeypatch.setattr(fast_decode, "PACK_BY_DEFAULT", False)  # a CPU that reads the weights as fast in place
    assert fast_decode.packed_weights(core) is None and fast_decode.packed_weights(core, always=True) is packs
    cache = slot_cache(core, 1, 4, torch.zeros(1, dtype=torch.long))
    assert [fast_decode.LlamaDecodeStep(core, cache, pack=p).packs for p in (None, True, False)] == [None, packs, None]
    monkeypatch.setattr(fast_decode, "PACK_MAX_BYTES", 0)  # off
    assert fast_decode.packed_weights(core) is None and fast_decode.packed_weights(core, always=True) is None


def test_the_schedulers_blocks_pack_on_every_cpu(monkeypatch, tiny_model) -> None:
    """A packed product computes each row alike at every row count, so a block may run only its rows in use."""
    allow_packing(monkeypatch)
    monkeypatch.setattr(fast_decode, "PACK_BY_DEFAULT", False)
    scheduler = Scheduler(tiny_model.core, tiny_model.vocab, block_rows=4, blocks=1)
    try:
        packs = fast_decode.packed_weights(tiny_model.core, always=True)
        assert packs is not None and all(step.packs is packs for step in scheduler._fast[0].values())
    finally:
        scheduler.close()


@pytest.mark.skipif(not fast_decode.bf16_matmul_supported(), reason="this CPU does not multiply in bfloat16")
def test_bfloat16_products_round_only_the_products() -> None:
    """bfloat16 copies of their own; float32 logits, within bfloat16's rounding of the float32 step's."""
    core = llama()
    cache = slot_cache(core, 3, 16, torch.zeros(3, dtype=torch.long))
    step = fast_decode.LlamaDecodeStep(core, cache, matmul_dtype=torch.bfloat16)
    assert step.packs is fast_decode.packed_weights(core, always=True, dtype=torch.bfloat16)
    assert step.packs is not fast_decode.packed_weights(core, always=True) and step.packs.dtype == torch.bfloat16
    exact = fast_decode.LlamaDecodeStep(core, slot_cache(core, 3, 16, torch.zeros(3, dtype=torch.long)), pack=False)
    tokens = torch.tensor([[5], [250], [7]])
    positions, mask = torch.tensor([[0], [0], [0]]), torch.ones(3, 1, 1, 1, dtype=torch.bool)
    with torch.inference_mode():
        rounded, float32 = (s(tokens, positions, positions[:, 0], mask) for s in (step, exact))
    assert rounded.dtype == torch.float32 and not torch.equal(rounded, float32)
    torch.testing.assert_close(rounded, float32, atol=0.05 * float32.abs().max().item(), rtol=0.05)


def test_bfloat16_products_are_refused_where_they_do_not_apply(monkeypatch, tiny_model) -> None:
    core = llama()
    cache = slot_cache(core, 1, 4, torch.zeros(1, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match="matmul_dtype=torch.float16 is not one of float32, bfloat16"):
        fast_decode.LlamaDecodeStep(core, cache, matmul_dtype=torch.float16)
    with pytest.raises(InvalidArgumentError, match="matmul_dtype=.*pack=False"):
        fast_decode.LlamaDecodeStep(core, cache, pack=False, matmul_dtype=torch.bfloat16)
    with pytest.raises(InvalidArgumentError, match="matmul_dtype=.*compile"):
        Scheduler(tiny_model.core, tiny_model.vocab, block_rows=2, compile=True, matmul_dtype=torch.bfloat16)
    monkeypatch.setattr(fast_decode, "bf16_matmul_supported", lambda: False)  # e.g. a CPU without AMX / AVX512-BF16
    assert fast_decode.packed_weights(core, always=True, dtype=torch.bfloat16) is None
    with pytest.raises(InvalidArgumentError, match="matmul_dtype=torch.bfloat16 needs a CPU that multiplies in "
                                                   "bfloat16 natively"):
        Scheduler(tiny_model.core, tiny_model.vocab, block_rows=2, matmul_dtype=torch.bfloat16)


@pytest.mark.skipif(not fast_decode.bf16_matmul_supported(), reason="this CPU does not multiply in bfloat16")
def test_a_pipeline_asked_for_bfloat16_products_decodes_and_scores_with_them(tiny_model: AnyGen) -> None:
    """The loop's prompt and steps multiply in bfloat16 when asked (logits within bfloat16's rounding of float32's,
    not equal to them), the pipeline asks its sampler for it, and its scores are rounded likewise."""
    from anygen.generation.loop import decode_steps

    exact, rounded = AnyGenPipeline(tiny_model), AnyGenPipeline(tiny_model, matmul_dtype="bfloat16")
    assert rounded.matmul_dtype == "bfloat16" and rounded._matmul_dtype() == torch.bfloat16
    vocab = tiny_model.vocab
    prompt = [vocab.bos_id, *tiny_model.processor.encode([TextSegment("a red circle")]), vocab.begin_id("image")]
    with torch.inference_mode():
        runners = [KVRunner(tiny_model.core, [prompt], vocab.pad_id, 4, matmul_dtype=d)
                   for d in (torch.float32, torch.bfloat16)]
        (a, b), (c, d) = ([r.prefill(), r.decode(torch.tensor([vocab.span("image").start]))] for r in runners)
    for float32, bfloat16 in ((a, c), (b, d)):
        assert bfloat16.dtype == torch.float32 and not torch.equal(float32, bfloat16)
        torch.testing.assert_close(bfloat16, float32, atol=0.05 * float32.abs().max().item(), rtol=0.05)
    asked = []

    def recording(*args, **options):
        asked.append(options.get("matmul_dtype"))
        return decode_steps(*args, **options)

    rounded.sampler = exact.sampler = recording
    for pipe in (rounded, exact):
        pipe.text_to_image("a red circle", num_candidates=1, generator=torch.Generator().manual_seed(3))
    assert asked == [torch.bfloat16, None]  # None: the sampler's own dtype, float32 for the loop
    picture = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = ["a red circle", "two blue squares"]
    a, b = (pipe.caption_likelihood([picture, picture], texts) for pipe in (exact, rounded))
    assert a != b and a == pytest.approx(b, abs=0.5)


def test_a_pipelines_matmul_dtype_is_checked_where_it_is_given(monkeypatch, tiny_model: AnyGen) -> None:
    from anygen.generation.loop import decode_steps

    with pytest.raises(InvalidArgumentError, match=r"matmul_dtype='float16' must be one of \['float32', "
                                                   r"'bfloat16', 'auto'\]"):
        AnyGenPipeline(tiny_model, matmul_dtype="float16")
    assert AnyGenPipeline(tiny_model, matmul_dtype=torch.float32).matmul_dtype == "float32"
    with pytest.raises(InvalidArgumentError, match="matmul_dtype=torch.bfloat16 cannot run with compile=True"):
        AnyGenPipeline(tiny_model, matmul_dtype="bfloat16", compile=True)
    with pytest.raises(InvalidArgumentError, match="matmul_dtype=torch.float16 is not one of float32, bfloat16"):
        next(decode_steps(tiny_model.core, tiny_model.vocab, [], [[tiny_model.vocab.bos_id]], max_new_tokens=2,
                          matmul_dtype=torch.float16))
    scheduler = Scheduler(tiny_model.core, tiny_model.vocab, block_rows=2)
    try:  # a scheduler multiplies in its own dtype for every request
        with pytest.raises(InvalidArgumentError, match="matmul_dtype=torch.bfloat16: this scheduler multiplies in "
                                                       "torch.float32"):
            scheduler.decode_steps(tiny_model.core, tiny_model.vocab, [], [[tiny_model.vocab.bos_id]],
                                   max_new_tokens=2, matmul_dtype=torch.bfloat16)
    finally:
        scheduler.close()
    monkeypatch.setattr(fast_decode, "bf16_matmul_supported", lambda: False)  # e.g. a CPU without AMX / AVX512-BF16
    with pytest.raises(InvalidArgumentError, match="matmul_dtype=torch.bfloat16 needs a CPU that multiplies in "
                                                   "bfloat16 natively"):
        AnyGenPipeline(tiny_model, matmul_dtype="bfloat16")
    assert AnyGenPipeline(tiny_model, matmul_dtype="auto")._matmul_dtype() == torch.float32
    monkeypatch.setattr(fast_decode, "bf16_matmul_supported", lambda: True)
    assert AnyGenPipeline(tiny_model, matmul_dtype="auto")._matmul_dtype() == torch.bfloat16
    assert AnyGenPipeline(tiny_model, matmul_dtype="auto", compile=True)._matmul_dtype() == torch.float32
    assert AnyGenPipeline(tiny_model)._matmul_dtype() is None  # the sampler's own


def test_auto_multiplies_in_bfloat16_where_a_loop_gains_by_it(monkeypatch, tiny_model: AnyGen) -> None:
    """``"auto"`` decodes a few rows over a small core in float32 and many rows, or any rows over a large core, in
    bfloat16; its scoring passes (many tokens per row) multiply in bfloat16 whatever the rows. The sampler is told
    which, per call, counting the guidance branches."""
    from anygen.generation.loop import decode_steps

    monkeypatch.setattr(fast_decode, "bf16_matmul_supported", lambda: True)
    asked = []

    def recording(*args, **options):  # records the dtype asked for, decodes in float32 (any CPU)
        asked.append((len(args[3]), options.pop("matmul_dtype")))
        return decode_steps(*args, **options)

    pipe = AnyGenPipeline(tiny_model, matmul_dtype="auto", sampler=recording)
    rows = fast_decode.AUTO_BF16_MIN_ROWS
    generator = torch.Generator().manual_seed(0)
    pipe.text_to_image("a red circle", num_candidates=1, generator=generator)  # one prompt, guided: 2 rows
    pipe.text_to_image("a red circle", num_images_per_prompt=rows // 2, num_candidates=1, generator=generator)
    pipe.text_to_image("a red circle", guidance_scale=1.0, num_images_per_prompt=rows, num_candidates=1,
                       generator=generator)  # unguided: one row per image
    assert asked == [(1, torch.float32), (rows // 2, torch.bfloat16), (rows, torch.bfloat16)]
    assert pipe._matmul_dtype() == torch.bfloat16  # scoring passes
    monkeypatch.setattr(fast_decode, "AUTO_BF16_MIN_BYTES", 0)  # a core this large gains at any row count
    assert pipe._matmul_dtype(1) == torch.bfloat16
    monkeypatch.setattr(fast_decode, "bf16_matmul_supported", lambda: False)
    assert {pipe._matmul_dtype(r) for r in (None, 1, 64)} == {torch.float32}


def test_a_forward_within_packed_forward_multiplies_by_the_packed_copies(monkeypatch) -> None:
    """The core's own forward (scoring passes) gives the same logits through the packed copies, which it fills; with
    autograd on, or for a core that packing does not apply to, it is the plain forward."""
    core, ids = llama(), torch.tensor([[1, 5, 9, 200, 17], [1, 250, 3, 3, 8]])
    with torch.inference_mode():
        plain = core(input_ids=ids).logits
        with fast_decode.packed_forward(core):  # too small to pack by default: nothing changes
            assert torch.equal(core(input_ids=ids).logits, plain)
    allow_packing(monkeypatch)
    packs = fast_decode.packed_weights(core)
    with torch.inference_mode(), fast_decode.packed_forward(core):
        packed = core(input_ids=ids).logits
    linears = [m for m in core.modules() if type(m) is torch.nn.Linear]
    assert len(packs._copies) == len(linears)  # every projection and the output matrix went through a copy
    torch.testing.assert_close(packed, plain, atol=2e-5, rtol=2e-5)
    with fast_decode.packed_forward(core):
        core(input_ids=ids).logits.sum().backward()  # autograd records: the weights themselves, with gradients
    assert all(m.weight.grad is not None for m in linears)


def test_a_step_taken_while_autograd_records_reads_the_weights_themselves(monkeypatch) -> None:
    allow_packing(monkeypatch)
    core = llama()
    step = fast_decode.LlamaDecodeStep(core, slot_cache(core, 1, 4, torch.zeros(1, dtype=torch.long)))
    assert step.packs is not None
    mask = torch.ones(1, 1, 1, 4, dtype=torch.bool)
    logits = step(torch.tensor([[7]]), torch.tensor([[3]]), torch.tensor([3]), mask)
    logits.sum().backward()  # a packed product would have no gradient
    assert core.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_inside_a_span_the_loop_computes_only_the_spans_logits_and_samples_the_same(tiny_model: AnyGen,
                                                                                      monkeypatch) -> None:
    """Steps in an image span ask the core for the code logits (and the end id's) alone; the sampled codes are
    those of a loop that computes every logit, with and without guidance."""
    from anygen.generation import loop

    vocab, rules = tiny_model.vocab, AnyGenPipeline(tiny_model)._rules()
    begin = vocab.begin_id("image")
    prompt = [vocab.bos_id, *tiny_model.processor.encode([TextSegment("a red circle")]), begin]
    decode, asked = KVRunner.decode, []

    def recording(self, tokens, ids=None):
        asked.append(ids)
        return decode(self, tokens, ids)

    monkeypatch.setattr(KVRunner, "decode", recording)
    for guidance in (None, Guidance([[vocab.bos_id, begin]], 3.0)):
        kwargs = dict(max_new_tokens=80, guidance=guidance, sampling={"image": SamplingParams(temperature=0.9)})
        asked.clear()
        narrow = generate(tiny_model.core, vocab, rules, [prompt], generator=torch.Generator().manual_seed(4),
                          **kwargs)
        codes = vocab.span("image")
        inside = [ids for ids, token in zip(asked, narrow.sequences[0][1:]) if token in codes]  # ids for a code
        assert len(inside) >= 8 and len(inside) == sum(token in codes for token in narrow.sequences[0]) - 1
        assert all(ids is not None and codes.start <= ids.start and ids.stop <= codes.stop for ids in inside)
        monkeypatch.setattr(loop, "allowed_columns", lambda allowed: None)
        full = generate(tiny_model.core, vocab, rules, [prompt], generator=torch.Generator().manual_seed(4),
                        **kwargs)
        monkeypatch.undo()
        monkeypatch.setattr(KVRunner, "decode", recording)
        assert narrow.sequences == full.sequences


def test_the_loop_narrows_a_step_to_the_allowed_range_when_it_saves_a_sixteenth_of_the_vocabulary() -> None:
    from anygen.generation.loop import allowed_columns

    allowed = torch.zeros(2, 1000, dtype=torch.bool)
    allowed[0, :800] = True  # text ids (a vocabulary whose appended codes are a fifth of it)
    allowed[1, 805] = True  # a special after them
    assert allowed_columns(allowed) == slice(0, 806)
    allowed[1, 950] = True  # the range would leave out less than a sixteenth: every logit is computed
    assert allowed_columns(allowed) is None
    image = torch.zeros(1, 1000, dtype=torch.bool)
    image[0, 900:964] = True
    assert allowed_columns(image) == slice(900, 964)


def test_text_steps_of_a_vocabulary_with_appended_codes_ask_for_the_text_ids_alone(tiny_model: AnyGen,
                                                                                    monkeypatch) -> None:
    """The shipped model's text rows: only the ids before the first modality's codes are computed, and the text
    sampled is that of a loop that computes every logit."""
    from anygen.generation import loop

    vocab, rules = tiny_model.vocab, AnyGenPipeline(tiny_model)._rules()
    prompt = [vocab.bos_id, *tiny_model.processor.encode([TextSegment("a red circle and")])]
    decode, asked = KVRunner.decode, []

    def recording(self, tokens, ids=None):
        asked.append(ids)
        return decode(self, tokens, ids)

    monkeypatch.setattr(KVRunner, "decode", recording)
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, open_modalities=[],
                  sampling={"text": SamplingParams(temperature=1.0)})
    narrow = generate(tiny_model.core, vocab, rules, [prompt], generator=torch.Generator().manual_seed(2), **kwargs)
    first_code = min(vocab.span(name).start for name in vocab.modality_names[1:])
    assert len(asked) == 11 and all(ids is not None and ids.stop <= first_code for ids in asked)
    monkeypatch.setattr(loop, "allowed_columns", lambda allowed: None)
    full = generate(tiny_model.core, vocab, rules, [prompt], generator=torch.Generator().manual_seed(2), **kwargs)
    assert narrow.sequences == full.sequences


def test_the_shipped_model_decodes_through_the_fast_step(tiny_model: AnyGen) -> None:
    assert fast_decode.supports(tiny_model.core)
    prompt = [tiny_model.vocab.bos_id, *tiny_model.processor.encode([TextSegment("a red circle")])]
    assert KVRunner(tiny_model.core, [prompt], tiny_model.vocab.pad_id, 4).fast
    scheduler = Scheduler(tiny_model.core, tiny_model.vocab, block_rows=2, blocks=1)
    try:
        assert scheduler._fast is not None
    finally:
        scheduler.close()


@pytest.mark.slow
def test_a_compiled_step_samples_what_the_eager_step_samples(tiny_model: AnyGen) -> None:
    """torch.compile of the fast step (tens of seconds to trace on a CPU): same image codes, with guidance."""
    pipe = AnyGenPipeline(tiny_model)
    vocab, rules = tiny_model.vocab, pipe._rules()
    begin = vocab.begin_id("image")
    prompt = [vocab.bos_id, *tiny_model.processor.encode([TextSegment("two blue squares")]), begin]
    kwargs = dict(max_new_tokens=70, guidance=Guidance([[vocab.bos_id, begin]], 3.0),
                  sampling={"image": SamplingParams(temperature=0.9, top_k=50)})
    eager = generate(tiny_model.core, vocab, rules, [prompt], generator=torch.Generator().manual_seed(3), **kwargs)
    compiled = generate(tiny_model.core, vocab, rules, [prompt], generator=torch.Generator().manual_seed(3),
                        compile=True, **kwargs)
    assert compiled.sequences == eager.sequences


@pytest.mark.slow
def test_the_scheduler_switches_to_the_compiled_step_and_keeps_its_results(tiny_model: AnyGen) -> None:
    import time

    pipe = AnyGenPipeline(tiny_model)
    vocab, rules = tiny_model.vocab, pipe._rules()
    prompt = [vocab.bos_id, *tiny_model.processor.encode([TextSegment("say hello")])]
    kwargs = dict(max_new_tokens=30, sampling={"text": SamplingParams(do_sample=False)})

    def run(scheduler: Scheduler) -> list[int]:
        return [int(s.tokens[0]) for s in scheduler.decode_steps(tiny_model.core, vocab, rules, [prompt], **kwargs)]

    eager_scheduler = Scheduler(tiny_model.core, vocab, block_rows=2, blocks=1, cache_len=128)
    compiled_scheduler = Scheduler(tiny_model.core, vocab, block_rows=2, blocks=1, cache_len=128, compile=True)
    try:
        deadline = time.monotonic() + 600
        while not compiled_scheduler.compiled and time.monotonic() < deadline:
            time.sleep(0.5)
        assert compiled_scheduler.compiled
        assert run(compiled_scheduler) == run(eager_scheduler)
    finally:
        eager_scheduler.close()
        compiled_scheduler.close()


def test_greedy_steps_draw_no_noise_and_pick_the_same_tokens() -> None:
    from anygen.errors import InvalidArgumentError
    from anygen.generation.sampling import NoiseSource, pick_tokens

    torch.manual_seed(0)
    scaled, allowed = torch.randn(3, 50), torch.rand(3, 50) > 0.3
    scaled = scaled.masked_fill(~allowed, float("-inf"))
    k, p = torch.zeros(3, dtype=torch.long), torch.ones(3)
    greedy = torch.ones(3, dtype=torch.bool)
    with_noise = pick_tokens(scaled, allowed, k, p, greedy, NoiseSource(3, torch.Generator())(0, 50), False)
    assert torch.equal(pick_tokens(scaled, allowed, k, p, greedy, None, False), with_noise)
    with pytest.raises(InvalidArgumentError, match="noise"):
        pick_tokens(scaled, allowed, k, p, torch.tensor([True, False, True]), None, False)


def test_pipelines_compile_where_asked_and_on_gpus_by_default(tiny_model: AnyGen) -> None:
    from anygen.generation.loop import decode_steps

    seen = []

    def sampler(*args, **kwargs):
        seen.append(kwargs["compile"])
        return decode_steps(*args, **{**kwargs, "compile": False})

    for compile, expected in ((None, False), (True, True), (False, False)):  # None: eager on this CPU
        pipe = AnyGenPipeline(tiny_model, sampler=sampler, compile=compile)
        pipe.text_to_image("a red circle", num_inference_steps=None, guidance_scale=1.0)
        assert seen[-1] is expected
