"""Continuous batching: one thread owns the core and decodes every caller's rows in one running batch.

A caller hands the scheduler exactly what it would hand :func:`~anygen.generation.loop.decode_steps` (prompts,
rules, sampling, guidance, generator) and gets the same :class:`~anygen.generation.loop.Step` s back, one per
token. Between two decoding steps the scheduler thread

1. drops the jobs whose caller went away (:meth:`Job.cancel`) or whose request ran out of time,
2. admits waiting jobs whose rows fit in the free slots (a job's prompt rows, guidance branches included, are
   prefilled together, apart from other jobs', and copied into their slots of the static KV cache),
3. samples one token for every job (its own grammar, sampling settings, guidance and seeded noise; jobs whose
   grammars share their span rules are masked and sampled in one batch of rows, which gives every row the numbers
   it gets alone), hands the step to the caller and frees the slots of the rows that finished,
4. runs the core once over every block of slots that holds a row.

Every row keeps its own cache columns and positions, and the batch is run in blocks of ``block_rows`` rows (blocks
without rows are skipped), so a row gets the same numbers whatever else is running: a job's tokens are identical to
the same job's served alone with the same seed. A block whose rows sit in its first few slots runs only those (new
rows take the lowest free slots), rounded up to a power of two, but only among the row counts that this machine's
kernels were checked, when the scheduler started, to compute bit for bit as the full block does (the BLAS picks its
kernel by the shape; on x86 with MKL, 4 rows and more agree, fewer do not): a lone request does not pay for 32 rows.
(Tokens can differ from the eager loop's in the last bits of the logits, since the eager loop runs another shape.)
"""

from __future__ import annotations

import collections
import queue
import threading
from types import SimpleNamespace
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
from transformers import DynamicCache

from anygen.errors import GenerationError, InvalidArgumentError, check_range
from anygen.gated_lora import has_gated_adapters
from anygen.generation import fast_decode
from anygen.generation.grammar import Grammar, GrammarState, SpanRule
from anygen.generation.loop import (GenerationOutput, Step, _check_finite, _check_inputs, _guide, _sampling_tables,
                                    cache_argument)
from anygen.generation.request_scope import (RequestCancelled, RequestScope, RequestTimeout, current_scope,
                                             request_scope)
from anygen.generation.slot_cache import slot_cache
from anygen.processor import pad_rows
from anygen.generation.sampling import Generators, Guidance, NoiseSource, SamplingParams, pick_tokens, scale_logits
from anygen.vocab import Vocab

__all__ = ["Scheduler", "Job", "RequestScope", "request_scope", "SchedulerBusy", "RequestTimeout",
           "RequestCancelled"]


COLUMN_BUCKET = 64  # the fast step attends over the used cache columns, rounded up to a multiple of this


class SchedulerBusy(GenerationError):
    """The waiting queue is full: try again later (HTTP 503)."""


# ---- jobs --------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One :meth:`Scheduler.decode_steps` call: its rows, sampling state and the queue its steps go out on.

    Rows are ``[cond (b); uncond (b); uncond_all (b)]`` as in the eager loop; ``slots[i]`` is row ``i``'s slot
    (``None`` before admission and after the row finished).
    """

    prompts: list[list[int]]
    b: int
    branches: int
    grammar: Grammar
    tables: dict[str, Any]
    state: GrammarState
    guidance: Guidance | None
    guided_modes: torch.Tensor
    noise: NoiseSource
    max_new_tokens: int
    scope: RequestScope | None = None
    min_new_tokens: int = 0
    group: tuple = ()  # jobs with the same key are sampled together: (span rules, whether top-k / top-p filter)
    index: int = 0
    slots: list[int | None] = field(default_factory=list)
    logits: torch.Tensor | None = None  # (rows, V) the next-token logits of every row
    generated: list[int] = field(default_factory=list)  # tokens each output row emitted before it was done
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # steps, then _END or an exception
    done: bool = False
    _cancelled: bool = False

    def steps(self) -> Iterator[Step]:
        """The job's steps as the scheduler produces them; closing the iterator early cancels the job."""
        try:
            while True:
                item = self.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled or (self.scope is not None and self.scope.cancelled)

    def _put(self, item: Any) -> None:
        self.out.put(item)


_END = object()


def _collect(steps: Iterator[Step], eos_id: int) -> GenerationOutput:
    """Steps -> generated ids per row, cut after ``<|eos|>`` (what :func:`~anygen.generation.loop.generate`
    returns)."""
    tokens = torch.stack([s.tokens for s in steps], 1).tolist()  # (B, S)
    cut = [row.index(eos_id) + 1 if eos_id in row else len(row) for row in tokens]
    return GenerationOutput([row[:n] for row, n in zip(tokens, cut)], [eos_id in row for row in tokens])


# ---- the scheduler -----------------------------------------------------------------------------------------


class Scheduler:
    """Serve many callers' generations from one running batch (continuous batching).

    Args:
        core: the transformers causal LM (``model.core``); only the scheduler thread runs it.
        vocab: the model's vocab.
        block_rows: rows the core runs at once at most; the batch is ``blocks`` such blocks. A block whose rows
            all sit in its first ``n`` slots runs ``n`` rows where ``n`` is in :attr:`row_sizes`.
        blocks: so ``block_rows * blocks`` rows (guidance branches count) decode together.
        max_queue: jobs that may wait for free rows; one more is refused with :class:`SchedulerBusy`.
        cache_len: KV-cache columns per row, i.e. the longest prompt + ``max_new_tokens`` (default: the core's
            context).
        compile: trace a ``torch.compile``-d decode step in the background and switch to it when ready (for GPUs;
            on a CPU the eager fast step measured faster).
        matmul_dtype: ``torch.bfloat16`` runs the fast step's matrix products in bfloat16 (on a CPU that multiplies
            in bfloat16 natively, :func:`~anygen.generation.fast_decode.bf16_matmul_supported`; not with
            ``compile``): a full block 1.2-2x as fast, and answers that differ from float32's as any rounding does
            (they still do not depend on what else is running).

    Use :meth:`decode_steps` and :meth:`generate` as drop-in replacements of the eager loop's functions (a
    pipeline takes the scheduler as its ``sampler``); :meth:`close` stops the thread.

    Example:
        >>> scheduler = Scheduler(model.core, model.vocab)                        # doctest: +SKIP
        >>> pipe = AnyGenPipeline(model, sampler=scheduler.decode_steps)          # doctest: +SKIP
    """

    def __init__(self, core: torch.nn.Module, vocab: Vocab, *, block_rows: int = 32, blocks: int = 1,
                 max_queue: int = 64, cache_len: int | None = None, compile: bool = False,
                 matmul_dtype: torch.dtype = torch.float32) -> None:
        check_range("block_rows", block_rows, 1, 1024)
        check_range("blocks", blocks, 1, 1024)
        check_range("max_queue", max_queue, 0, None)
        if has_gated_adapters(core):
            raise InvalidArgumentError("the batching scheduler cannot serve a core with gated adapters (their gates "
                                       "follow one cache per call); serve such a model without a scheduler")
        context = getattr(core.config, "max_position_embeddings", None) or 2048
        self.cache_len = context if cache_len is None else cache_len
        check_range("cache_len", self.cache_len, 2, context)
        if matmul_dtype != torch.float32:
            problem = "runs through the eager fast step; leave compile off" if compile else \
                fast_decode.bf16_matmul_problem(core) if matmul_dtype == torch.bfloat16 else \
                f"must be one of {', '.join(fast_decode.MATMUL_DTYPES)}"
            if problem:
                raise InvalidArgumentError(f"matmul_dtype={matmul_dtype} {problem}")
        self.matmul_dtype = matmul_dtype
        self.core, self.vocab = core, vocab
        self.block_rows, self.blocks, self.max_queue = block_rows, blocks, max_queue
        self.rows = block_rows * blocks
        self.device = next(core.parameters()).device
        self._cache_key = cache_argument(core)
        self._write_at = [torch.zeros(block_rows, dtype=torch.long, device=self.device) for _ in range(blocks)]
        self._caches = [slot_cache(core, block_rows, self.cache_len, w) for w in self._write_at]
        # Llama cores decode through the lean step of fast_decode (the same function, less Python per step); with
        # ``compile`` a compiled step takes over once a background trace on a scratch cache has finished.
        # Row counts a block may run on (the eager fast step only; a compiled step keeps one shape), and a fast step
        # over the first rows of each block's cache for each. The steps multiply by the packed weight copies on every
        # CPU (pack=True): a packed product computes each row alike at every row count, so a lone request runs one
        # or two rows, where MKL's products agree only from 4 or 16 rows up (one client 1.4x faster on an Intel Xeon,
        # docs/serving.md).
        fast = fast_decode.supports(core)
        self.row_sizes = self._alike_row_counts() if fast and not compile else [block_rows]
        self._fast = [{n: self._step_over(_first_rows(c, n)) for n in self.row_sizes} for c in self._caches] \
            if fast else None
        self.compiled = False  # True once decoding runs through the compiled step
        if compile and self._fast is not None:
            threading.Thread(target=self._compile, daemon=True, name="anygen-compile").start()
        self._length = torch.zeros(self.rows, dtype=torch.long)  # tokens in each slot's cache
        self._tokens = torch.full((self.rows,), vocab.pad_id, dtype=torch.long)  # next input of each slot
        self._owner: list[Job | None] = [None] * self.rows
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._steps = 0  # decoding steps run so far
        self._tokens_out = 0  # tokens sampled for rows that were not done yet
        self._thread = threading.Thread(target=self._run, daemon=True, name="anygen-scheduler")
        self._thread.start()

    # ---- the caller's side -------------------------------------------------------------------------------
    def decode_steps(self, core: torch.nn.Module, vocab: Vocab, rules: Sequence[SpanRule],
                     prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                     sampling: Mapping[str, SamplingParams] | None = None, guidance: Guidance | None = None,
                     open_modalities: Sequence[str] | None = None, generator: Generators = None,
                     compile: bool = False, min_new_tokens: int = 0,
                     matmul_dtype: torch.dtype | None = None) -> Iterator[Step]:
        """:func:`~anygen.generation.loop.decode_steps`, decoded in the shared batch (``compile`` is ignored; a
        ``matmul_dtype`` other than the scheduler's own, :attr:`matmul_dtype`, is refused).

        Raises (before queueing): :class:`InvalidArgumentError` for bad arguments or a job that can never fit,
        :class:`SchedulerBusy` when the queue is full, :class:`RequestCancelled` in a cancelled scope.
        """
        if core is not self.core or vocab is not self.vocab:
            raise InvalidArgumentError("this scheduler serves one model: pass its own core and vocab")
        if matmul_dtype not in (None, self.matmul_dtype):
            raise InvalidArgumentError(f"matmul_dtype={matmul_dtype}: this scheduler multiplies in "
                                       f"{self.matmul_dtype} for every request (Scheduler(matmul_dtype=...))")
        return self.submit(rules, prompts, max_new_tokens=max_new_tokens, sampling=sampling, guidance=guidance,
                           open_modalities=open_modalities, generator=generator,
                           min_new_tokens=min_new_tokens).steps()

    def generate(self, core: torch.nn.Module, vocab: Vocab, rules: Sequence[SpanRule],
                 prompts: Sequence[Sequence[int]], **kwargs: Any) -> GenerationOutput:
        """:func:`~anygen.generation.loop.generate` in the shared batch."""
        return _collect(self.decode_steps(core, vocab, rules, prompts, **kwargs), vocab.eos_id)

    def submit(self, rules: Sequence[SpanRule], prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               sampling: Mapping[str, SamplingParams] | None = None, guidance: Guidance | None = None,
               open_modalities: Sequence[str] | None = None, generator: Generators = None,
               min_new_tokens: int = 0) -> Job:
        """Check and queue one generation; its steps come out of :meth:`Job.steps`."""
        job = self._job(rules, prompts, max_new_tokens, sampling, guidance, open_modalities, generator,
                        min_new_tokens)
        with self._cond:
            if self._closed:
                raise GenerationError("the scheduler is closed")
            if job.scope is not None and job.scope.cancelled:
                raise RequestCancelled("the request was cancelled")
            if len(self._waiting) >= self.max_queue:
                raise SchedulerBusy(f"the server is busy: {len(self._waiting)} requests are waiting (the limit); "
                                    "try again shortly")
            if job.scope is not None:
                job.scope.jobs.append(job)
            self._waiting.append(job)
            self._cond.notify()
        return job

    def _job(self, rules: Sequence[SpanRule], prompts: Sequence[Sequence[int]], max_new_tokens: int,
             sampling: Mapping[str, SamplingParams] | None, guidance: Guidance | None,
             open_modalities: Sequence[str] | None, generator: Generators, min_new_tokens: int = 0) -> Job:
        """Everything :func:`decode_steps` checks and builds before its first step, plus the fit in the batch."""
        _check_inputs(prompts, max_new_tokens, guidance, generator, min_new_tokens)
        grammar = Grammar(self.vocab, rules, open_modalities)
        tables = _sampling_tables(self.vocab, sampling)
        state = grammar.initial_state(prompts, max_new_tokens)
        b = len(prompts)
        branches = 1 if guidance is None else guidance.branches
        rows = [list(p) for p in prompts]
        if branches > 1:
            rows += [list(p) for p in guidance.uncond_prompts]
        if branches > 2:
            rows += [list(p) for p in guidance.uncond_all_prompts]
        if len(rows) > self.rows:
            raise InvalidArgumentError(f"the request needs {len(rows)} rows ({b} outputs x {branches} guidance "
                                       f"branches) but the batch has {self.rows}; ask for fewer outputs "
                                       "(or num_candidates)")
        longest = max(len(r) for r in rows)
        if longest + max_new_tokens > self.cache_len:
            raise InvalidArgumentError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = "
                                       f"{longest + max_new_tokens} exceeds the {self.cache_len} tokens a row may "
                                       "hold; shorten the prompt or lower max_new_tokens")
        guided_modes = torch.zeros(len(self.vocab.modality_names) + 1, dtype=torch.bool)
        for name in guidance.modalities if branches > 1 else ():
            guided_modes[grammar.mode_of(name)] = True
        return Job(rows, b, branches, grammar, tables, state, guidance, guided_modes, NoiseSource(b, generator),
                   max_new_tokens, scope=current_scope(), generated=[0] * b, min_new_tokens=min_new_tokens,
                   group=(tuple(grammar.rules), tables["filtered"]))

    def stats(self) -> dict[str, int | bool | str | list[int]]:
        """``active_rows`` (slots holding a row), ``active_jobs``, ``waiting`` (queued jobs), ``steps`` (decoding
        steps run since the start), ``tokens`` (tokens generated since the start, guidance branches not
        counted), ``compiled`` (whether decoding runs through the compiled step yet), ``row_sizes`` and
        ``matmul_dtype`` (its name)."""
        with self._cond:
            return {"active_rows": sum(o is not None for o in self._owner), "active_jobs": len(self._active),
                    "waiting": len(self._waiting), "steps": self._steps, "tokens": self._tokens_out,
                    "compiled": self.compiled, "row_sizes": list(self.row_sizes),
                    "matmul_dtype": str(self.matmul_dtype).removeprefix("torch.")}

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the thread; jobs still running or waiting end with a :class:`GenerationError`."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    # ---- the scheduler thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._waiting or self._active):
                    self._cond.wait()
                if self._closed:
                    break
            self._drop_stale()
            self._admit()
            if self._active:
                self._step()
        for job in [*self._active, *self._waiting]:
            self._fail(job, GenerationError("the scheduler was closed"))

    def _drop_stale(self) -> None:
        """1. Cancelled and expired jobs leave, waiting or running."""
        with self._cond:
            jobs = [*self._waiting, *self._active]
        for job in jobs:
            if job.cancelled:
                self._fail(job, RequestCancelled("the request was cancelled"))
            elif job.scope is not None and job.scope.expired():
                self._fail(job, RequestTimeout("the request ran out of time; raise the server's request timeout "
                                               "or ask for fewer tokens"))

    def _admit(self) -> None:
        """2. Waiting jobs take free slots in arrival order; each row is prefilled into its slot."""
        while True:
            with self._cond:
                free = [s for s, o in enumerate(self._owner) if o is None]
                if not self._waiting or len(self._waiting[0].prompts) > len(free):
                    return
                job = self._waiting.popleft()
                job.slots = list(free[: len(job.prompts)])
                for slot in job.slots:
                    self._owner[slot] = job
                self._active.append(job)
            try:
                with torch.inference_mode():
                    job.logits = self._prefill(job.slots, job.prompts)
            except Exception as err:  # noqa: BLE001 -- this job fails, the others go on
                self._fail(job, err)

    def _prefill(self, slots: list[int], prompts: list[list[int]]) -> torch.Tensor:
        """Run one job's prompt rows together (right-padded: a row's tokens never attend to the padding after them)
        and copy each row's keys and values into columns ``[0, len)`` of its slot; the rows' next-token logits.
        Only the job's own rows share the call, so its numbers do not depend on what else is running."""
        lengths = torch.tensor([len(p) for p in prompts])
        ids, mask = pad_rows(prompts, self.vocab.pad_id, "right")
        width = ids.shape[1]
        last = lengths - 1
        positions = torch.arange(width, device=self.device).expand(len(prompts), width)
        if self._fast is not None:  # causal: the padding after a row's tokens attends to them, they never to it
            cache = slot_cache(self.core, len(prompts), width, torch.zeros(len(prompts), dtype=torch.long,
                                                                           device=self.device))
            attend = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
            logits = self._step_over(cache).prefill(
                ids.to(self.device), positions, attend.expand(len(prompts), 1, width, width), last.to(self.device))
        else:
            cache = DynamicCache(config=self.core.config)
            keep = torch.unique(last)  # the logits of each row's last position only (sorted)
            out = self.core(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=positions, **{self._cache_key: cache}, use_cache=True,
                            logits_to_keep=keep.to(self.device))
            logits = out.logits[torch.arange(len(prompts)), torch.searchsorted(keep, last).to(self.device)]
        for i, (slot, n) in enumerate(zip(slots, lengths.tolist())):
            block, row = divmod(slot, self.block_rows)
            for target, source in zip(self._caches[block].layers, cache.layers):
                target.keys[row, :, :n] = source.keys[i, :, :n]
                target.values[row, :, :n] = source.values[i, :, :n]
            self._length[slot] = n
        return logits  # (rows, V)

    def _step(self) -> None:
        """3. One token for every running job, then 4. one core call per block that holds a row."""
        self._steps += 1
        groups: dict[tuple, list[Job]] = {}
        for job in list(self._active):
            groups.setdefault(job.group, []).append(job)
        for jobs in groups.values():
            for job, step in zip(jobs, self._sample_group(jobs)):
                if isinstance(step, BaseException):  # e.g. non-finite logits: this job fails, the others go on
                    self._fail(job, step)
                    continue
                job._put(step)
                if job.index == job.max_new_tokens or bool((job.state.mode == job.grammar.done_mode).all()):
                    self._finish(job)
                else:
                    self._feed(job, step.tokens)
        try:
            with torch.inference_mode():
                self._decode()
        except Exception as err:  # noqa: BLE001 -- the core failed: no running job can go on
            for job in list(self._active):
                self._fail(job, GenerationError(f"the core failed while decoding: {err}"))

    def _sample_group(self, jobs: list[Job]) -> list[Step | BaseException]:
        """Each job's step, sampled together; if that fails, each job alone, so only the job at fault fails."""
        try:
            with torch.inference_mode():
                return self._sample(jobs)
        except Exception as err:  # noqa: BLE001
            if len(jobs) == 1:
                return [err]
        out: list[Step | BaseException] = []
        for job in jobs:
            try:
                with torch.inference_mode():
                    out += self._sample([job])
            except Exception as err:  # noqa: BLE001
                out.append(err)
        return out

    def _sample(self, jobs: list[Job]) -> list[Step]:
        """The eager loop's step for the rows of ``jobs`` (one grammar's rules): guidance per job, then the grammar
        mask, per-modality sampling and seeded noise over all their rows at once. Every operation after guidance
        works row by row, so a row gets the same token as when its job is sampled alone. Jobs are updated only once
        every row has its token."""
        grammar, sizes = jobs[0].grammar, [job.b for job in jobs]
        owner = torch.repeat_interleave(torch.arange(len(jobs)), torch.tensor(sizes))  # (B,) each row's job
        raw = [job.logits.float() for job in jobs]
        guided = [logits[: job.b] if job.branches == 1 else
                  _guide(logits, job.b, job.branches, job.guidance, job.state, job.guided_modes)
                  for job, logits in zip(jobs, raw)]
        state = GrammarState(*(torch.cat([getattr(job.state, key) for job in jobs])
                               for key in ("mode", "pos", "limit")))
        remaining = torch.tensor([job.max_new_tokens - job.index for job in jobs])[owner]
        allowed = grammar.allowed(state, remaining, torch.stack([job.grammar.may_open for job in jobs])[owner])
        early = torch.tensor([job.index < job.min_new_tokens for job in jobs])[owner]  # <|eos|> not allowed yet
        allowed[:, self.vocab.eos_id] &= ~early

        def per_row(key: str) -> torch.Tensor:  # a sampling table, looked up by each row's job and mode
            return torch.stack([job.tables[key] for job in jobs])[owner, state.mode]

        scaled = scale_logits(torch.cat(guided), allowed, per_row("temperature"))
        if len(jobs) == 1:
            _check_finite(raw[0], scaled, allowed, jobs[0].index, jobs[0].guidance)
        elif not bool(torch.isfinite(torch.cat(raw)).all() & (torch.isfinite(scaled) | ~allowed).all()):
            raise GenerationError("non-finite logits")  # _sample_group finds the job and its message
        greedy = per_row("greedy")
        draws = None
        if not bool(greedy.all()):  # noise for the jobs that sample; all-greedy jobs draw nothing
            width = scaled.shape[-1]
            draws = torch.cat([torch.ones(job.b, width) if bool(rows.all()) else job.noise(job.index, width)
                               for job, rows in zip(jobs, greedy.split(sizes))])
        tokens = pick_tokens(scaled, allowed, per_row("top_k"), per_row("top_p"), greedy, draws,
                             jobs[0].tables["filtered"])
        after = grammar.advance(state, tokens, remaining)
        parts = zip(tokens.split(sizes), after.mode.split(sizes), after.pos.split(sizes), after.limit.split(sizes))
        steps = []
        for job, (row_tokens, *job_after) in zip(jobs, parts):
            steps.append(Step(job.index, row_tokens, job.state, GrammarState(*job_after)))
            for row, was in enumerate(job.state.mode.tolist()):
                job.generated[row] += was != job.grammar.done_mode
                self._tokens_out += was != job.grammar.done_mode
            job.state, job.index = steps[-1].after, job.index + 1
        return steps

    def _feed(self, job: Job, tokens: torch.Tensor) -> None:
        """Set each row's next input; rows whose output finished give their slots back."""
        done = (job.state.mode == job.grammar.done_mode).tolist()
        with self._cond:
            for i, slot in enumerate(job.slots):
                if slot is None:
                    continue
                if done[i % job.b]:
                    self._release(job, i)
                else:
                    self._tokens[slot] = tokens[i % job.b]

    def _decode(self) -> None:
        """One core call per block with a row; every slot with a row gets its next logits."""
        with self._cond:
            held = [o is not None for o in self._owner]
        logits: dict[int, torch.Tensor] = {}
        columns = torch.arange(self.cache_len, device=self.device)
        for block in range(self.blocks):
            first = block * self.block_rows
            slots = range(first, first + self.block_rows)
            if not any(held[s] for s in slots):
                continue
            rows = torch.tensor([held[s] for s in slots])
            length = torch.where(rows, self._length[first: first + self.block_rows], 0)
            self._write_at[block].copy_(length)
            tokens = self._tokens[first: first + self.block_rows, None].to(self.device)
            positions = length[:, None].to(self.device)
            if self._fast is not None:
                # The fast step reads only the columns the block's rows use (rounded up, for few compiled shapes),
                # and runs only its first n rows, n the smallest allowed row count that covers every held slot.
                used = min(self.cache_len, -(-(int(length.max()) + 1) // COLUMN_BUCKET) * COLUMN_BUCKET)
                mask = (columns[None, :used] <= positions)[:, None, None, :]  # (R, 1, 1, used)
                if self.compiled:
                    out = self._compiled[block](tokens, positions, self._write_at[block], mask)  # (R, V)
                else:
                    top = max(s - first for s in slots if held[s]) + 1
                    n = next(size for size in self.row_sizes if size >= top)
                    out = self._fast[block][n](tokens[:n], positions[:n], self._write_at[block][:n], mask[:n])
            else:
                mask = (columns[None, :] <= positions)[:, None, None, :]  # (R, 1, 1, C)
                out = self.core(input_ids=tokens, position_ids=positions, attention_mask=mask,
                                **{self._cache_key: self._caches[block]}, use_cache=True).logits[:, -1]
            for row, slot in enumerate(slots):
                if held[slot]:  # (rows past out's are not held)
                    logits[slot] = out[row]
                    self._length[slot] += 1
        for job in list(self._active):
            for i, slot in enumerate(job.slots):
                if slot is not None and slot in logits:
                    job.logits[i] = logits[slot]

    def _alike_row_counts(self) -> list[int]:
        """The powers of two below ``block_rows`` whose rows the fast step computes bit for bit as it computes the
        same rows within the full block (checked on random keys, values and tokens: kernels are chosen by shape, not
        by value), then ``block_rows``."""
        rows, width = self.block_rows, min(self.cache_len, COLUMN_BUCKET)
        generator = torch.Generator().manual_seed(0)
        scratch = slot_cache(self.core, rows, width, torch.zeros(rows, dtype=torch.long, device=self.device))
        for layer in scratch.layers:
            for tensor in (layer.keys, layer.values):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
        tokens = torch.randint(0, self.core.config.vocab_size, (rows, 1), generator=generator).to(self.device)
        positions = torch.randint(0, width, (rows, 1), generator=generator).to(self.device)
        mask = (torch.arange(width, device=self.device)[None, :] <= positions)[:, None, None, :]
        sizes = []
        with torch.inference_mode():
            full = self._step_over(scratch)(tokens, positions, positions[:, 0], mask)
            for n in (2 ** i for i in range(rows.bit_length())):
                if n == rows:
                    continue
                step = self._step_over(_first_rows(scratch, n))
                if torch.equal(step(tokens[:n], positions[:n], positions[:n, 0], mask[:n]), full[:n]):
                    sizes.append(n)
        return [*sizes, rows]

    def _step_over(self, cache: Any) -> fast_decode.LlamaDecodeStep:
        """The scheduler's fast step over ``cache``: packed products in :attr:`matmul_dtype`."""
        return fast_decode.LlamaDecodeStep(self.core, cache, pack=True, matmul_dtype=self.matmul_dtype)

    def _compile(self) -> None:
        """Trace the compiled step on a scratch cache of the blocks' shape, then switch decoding to it. Decoding
        goes on eagerly meanwhile; if compiling fails (no compiler on this machine), it stays eager."""
        scratch = slot_cache(self.core, self.block_rows, self.cache_len, torch.zeros_like(self._write_at[0]))
        warm = fast_decode.compiled_step(self.core, scratch)
        rows = self.block_rows
        try:
            with torch.inference_mode():
                warm(torch.full((rows, 1), self.vocab.pad_id, device=self.device),
                     torch.zeros(rows, 1, dtype=torch.long, device=self.device), torch.zeros_like(self._write_at[0]),
                     torch.ones(rows, 1, 1, self.cache_len, dtype=torch.bool, device=self.device))
        except Exception:  # noqa: BLE001 -- the eager step keeps serving
            return
        self._compiled = [fast_decode.compiled_step(self.core, c) for c in self._caches]
        self.compiled = True

    # ---- leaving --------------------------------------------------------------------------------------------
    def _release(self, job: Job, row: int) -> None:
        slot = job.slots[row]
        if slot is not None and self._owner[slot] is job:
            self._owner[slot] = None
            self._length[slot] = 0
            self._tokens[slot] = self.vocab.pad_id
        job.slots[row] = None

    def _finish(self, job: Job) -> None:
        with self._cond:
            for row in range(len(job.slots)):
                self._release(job, row)
            if job in self._active:
                self._active.remove(job)
        job.done = True
        job._put(_END)

    def _fail(self, job: Job, err: BaseException) -> None:
        with self._cond:
            for row in range(len(job.slots)):
                self._release(job, row)
            if job in self._active:
                self._active.remove(job)
            if job in self._waiting:
                self._waiting.remove(job)
        if not job.done:
            job.done = True
            job._put(err)


def _first_rows(cache: Any, rows: int) -> SimpleNamespace:
    """The first ``rows`` rows of a static cache's layers, as views (a fast step over them writes the cache)."""
    return SimpleNamespace(layers=[SimpleNamespace(keys=layer.keys[:rows], values=layer.values[:rows])
                                   for layer in cache.layers])
