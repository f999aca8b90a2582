"""One causal LM shared by concurrent generations: their forward calls that fit together run as one batch.

`SharedLM` stands in for the model of several `SmoothedLM`s that decode at the same time (the service's
concurrent /v1/generate requests). Each generation calls it exactly as it calls the model (through
`forward_lm`: ``inputs_embeds``, ``past_key_values``, ``use_cache``); the call waits in a queue, and one
thread runs the model. When the model is free it takes the oldest waiting call and every other waiting call
of the same kind — the same positions and embedding width, the same dtype and device, and a KV cache of the
same layout and length (or none) — up to `max_rows` copies, concatenates them along the batch, runs the
model once and hands each call its own rows of the logits and of the cache.

Nothing about a generation changes: its copies are drawn from its own keyed streams (docs/design.md,
Randomness), and a row of a batched call is computed exactly as alone — the calls merged are of identical
shape, so each row sees the same positions and the same cache, and no padding is ever added. The tests
check that a generation's record is bit-identical whether it ran alone or among others.

That needs the model's kernels to compute each row the same whatever the batch around it, which matrix
products do for batches of `MIN_ROWS` rows and more on this machine's CPU, and which `SharedLM` checks on
the model itself before it merges anything (`probe`: a prefill and a cached step, each alone and merged,
must agree bit for bit; the embedded LMs' cached step writes its attention out for this reason). A model
that fails the check is never merged (``merging`` False): its calls run one at a time, exactly as before.
A probe of a few shapes is evidence, not proof, for the others, which is why the test suite also
compares whole certified generations alone and among others.

Which calls merge is decided by their shapes only: concurrent requests whose prompts have the same number of
tokens (the same template, a batch of similar inputs) share every batch — selection steps in lock-step,
estimation chunks — while prompts of different lengths still run one call at a time, as before. Caches that
are not nested tuples or lists of tensors (a Hugging Face `Cache` object) are never merged.
"""
from __future__ import annotations

import collections
import threading
from typing import Any

import torch

from smoothgen.errors import InvalidParameterError
from smoothgen.validate import check_count

#: Most noisy copies one merged call may hold (four of the service's batches of 250 copies).
DEFAULT_MAX_ROWS = 1000
#: Fewest copies a call must have to be merged: below this CPU matrix products take another path (a
#: matrix-vector kernel) whose sums are not those of a larger batch, so such calls always run alone.
MIN_ROWS = 16


def _leaves(cache: Any, rows: int) -> list[torch.Tensor] | None:
    """The tensors of a cache made of nested tuples and lists, each with `rows` rows; None for anything else."""
    if isinstance(cache, torch.Tensor):
        return [cache] if cache.ndim >= 1 and cache.shape[0] == rows else None
    if type(cache) in (tuple, list):  # exactly: a named tuple or a Cache object is not taken apart
        out: list[torch.Tensor] = []
        for item in cache:
            leaves = _leaves(item, rows)
            if leaves is None:
                return None
            out += leaves
        return out
    return None


def _layout(cache: Any) -> Any:
    """The nesting of a cache (types and lengths) with each tensor's shape past the batch, dtype and device."""
    if isinstance(cache, torch.Tensor):
        return (tuple(cache.shape[1:]), cache.dtype, cache.device)
    return (type(cache), tuple(_layout(item) for item in cache))


def _rebuild(template: Any, leaves: collections.abc.Iterator) -> Any:
    """`template`'s nesting with its tensors replaced, in order, by `leaves`."""
    if isinstance(template, torch.Tensor):
        return next(leaves)
    return type(template)(_rebuild(item, leaves) for item in template)


#: The calls `probe` runs alone and merged: the smallest merged size, an odd one, a selection's and an
#: estimation chunk's (the service's n0 = 100 and batches of 250).
PROBE_SIZES = (MIN_ROWS, 37, 100, 250)


def probe(model: Any, sizes: tuple[int, ...] = PROBE_SIZES, length: int = 12) -> bool:
    """Whether `model` computes each row the same alone and merged: a prefill of `length` positions and one
    cached step, for calls of `sizes` copies, alone and concatenated, must give the same logits and caches
    bit for bit (and the cache must be nested tuples). Any failure (an error, another output) is a no."""
    try:
        table = model.get_input_embeddings().weight.detach()
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, table.shape[0], (sum(sizes), length + 1), generator=generator).to(table.device)
        embeds = table[ids]

        def run(x, past):
            out = model(inputs_embeds=x, past_key_values=past, use_cache=True)
            logits, cache = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out.logits, out.past_key_values)
            leaves = _leaves(cache, x.shape[0])
            if leaves is None:
                raise ValueError("the cache cannot be split")
            return logits, cache, leaves

        with torch.no_grad():
            merged_logits, merged_cache, merged_leaves = run(embeds[:, :length], None)
            step_merged = run(embeds[:, length:], merged_cache)
            start = 0
            for size in sizes:
                part = slice(start, start + size)
                logits, cache, leaves = run(embeds[part, :length], None)
                step = run(embeds[part, length:], cache)
                same = (torch.equal(logits, merged_logits[part]) and torch.equal(step[0], step_merged[0][part])
                        and all(torch.equal(a, b[part]) for a, b in zip(step[2], step_merged[2]))
                        and all(torch.equal(a, b[part]) for a, b in zip(leaves, merged_leaves)))
                if not same:
                    return False
                start += size
        return True
    except Exception:
        return False


class _Call:
    __slots__ = ("embeds", "past", "use_cache", "key", "done", "result", "error")

    def __init__(self, embeds: torch.Tensor, past: Any, use_cache: bool, keyed: bool):
        self.embeds, self.past, self.use_cache = embeds, past, use_cache
        self.key = self._key() if keyed else None  # unkeyed (merging off): it runs alone, nothing to compare
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def _key(self) -> Any:
        """What a call must share with another to run in one batch with it (None: it runs alone)."""
        e = self.embeds
        if not isinstance(e, torch.Tensor) or e.ndim != 3:
            return None
        if self.past is None:
            cache = None
        elif _leaves(self.past, e.shape[0]) is None:
            return None
        else:
            cache = _layout(self.past)
        return (tuple(e.shape[1:]), e.dtype, e.device, self.use_cache, cache)


class SharedLM:
    """A causal LM that concurrent generations call at the same time; compatible calls run as one batch.

    Attribute reads (``get_input_embeddings``, ``config``, ``context_length``, ...) go to the model, so a
    `SmoothedLM` takes it as it takes the model. Call `close` (or use it as a context manager) to stop its
    thread; a call after that raises.

    Args:
        model: the causal LM (a torch module in eval mode, on its device).
        max_rows: most copies in one merged call (a single larger call still runs, alone).
        merge: False never merges (every call alone, in the order they came).

    Attributes:
        calls: forward calls made so far; batches: model runs that served them (calls − batches were merged).
    """

    def __init__(self, model: Any, max_rows: int = DEFAULT_MAX_ROWS, merge: bool = True):
        if isinstance(model, SharedLM):
            raise InvalidParameterError("the model is already a SharedLM")
        self.model = model
        self.max_rows = check_count(max_rows, "max_rows")
        self.calls = 0
        self.batches = 0
        self._queue: collections.deque[_Call] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._mergeable = True  # until the model returns a cache that cannot be split
        self.eval()
        #: Whether calls are merged at all: the model computed every row the same alone and merged (`probe`).
        self.merging = probe(model) if merge else False
        self._thread = threading.Thread(target=self._loop, name="smoothgen-shared-lm", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the model's face
    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not yet set (during __init__ or unpickling): never recurse
            raise AttributeError(name)
        return getattr(self.model, name)

    def to(self, *args: Any, **kwargs: Any) -> "SharedLM":
        self.model = self.model.to(*args, **kwargs)
        return self

    def eval(self) -> "SharedLM":
        if isinstance(self.model, torch.nn.Module):
            self.model.eval()
        return self

    def __call__(self, inputs_embeds: torch.Tensor, past_key_values: Any = None, use_cache: bool = True) -> tuple:
        """One forward call, as the model's: (logits [B, T, V], the extended cache)."""
        call = _Call(inputs_embeds, past_key_values, bool(use_cache), keyed=self.merging and self._mergeable)
        with self._cv:
            if self._closed:
                raise InvalidParameterError("this SharedLM is closed")
            self._queue.append(call)
            self._cv.notify()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def close(self, wait: bool = True) -> None:
        """Stop the thread once the calls already queued have run (`wait`: until it has)."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> "SharedLM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ the loop
    def _take(self) -> list[_Call] | None:
        """The oldest call and every queued call that may run with it (None once closed and empty)."""
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if not self._queue:
                return None
            first = self._queue.popleft()
            group = [first]
            if first.key is None or not (self.merging and self._mergeable) or first.embeds.shape[0] < MIN_ROWS:
                return group
            rows = first.embeds.shape[0]
            rest = collections.deque()
            while self._queue:
                call = self._queue.popleft()
                if (call.key == first.key and call.embeds.shape[0] >= MIN_ROWS
                        and rows + call.embeds.shape[0] <= self.max_rows):
                    group.append(call)
                    rows += call.embeds.shape[0]
                else:
                    rest.append(call)
            self._queue = rest
            return group

    def _loop(self) -> None:
        while True:
            group = self._take()
            if group is None:
                return
            with torch.no_grad():  # grad mode is per thread: the callers' no_grad does not reach this one
                if len(group) > 1 and self._run_merged(group):
                    continue
                for call in group:
                    self._run_alone(call)

    def _forward(self, embeds: torch.Tensor, past: Any, use_cache: bool) -> tuple[Any, Any]:
        out = self.model(inputs_embeds=embeds, past_key_values=past, use_cache=use_cache)
        if isinstance(out, (tuple, list)):
            return out[0], (out[1] if len(out) > 1 else None)
        return getattr(out, "logits", None), getattr(out, "past_key_values", None)

    def _run_alone(self, call: _Call) -> None:
        self.calls += 1
        self.batches += 1
        try:
            call.result = self._forward(call.embeds, call.past, call.use_cache)
        except BaseException as exc:  # the caller's error, raised in its own thread
            call.error = exc
        finally:
            call.done.set()

    def _run_merged(self, group: list[_Call]) -> bool:
        """Run `group` as one call and hand out each call's rows; False (nothing handed out) when the model
        fails on the merged call or returns something that cannot be split, so each call runs alone."""
        sizes = [call.embeds.shape[0] for call in group]
        try:
            embeds = torch.cat([call.embeds for call in group])
            past = None
            if group[0].past is not None:
                parts = [_leaves(call.past, size) for call, size in zip(group, sizes)]
                merged = [torch.cat(column) for column in zip(*parts)]
                past = _rebuild(group[0].past, iter(merged))
            logits, cache = self._forward(embeds, past, group[0].use_cache)
        except Exception:
            return False
        total = sum(sizes)
        if not isinstance(logits, torch.Tensor) or logits.ndim < 1 or logits.shape[0] != total:
            return False
        leaves = None if cache is None else _leaves(cache, total)
        if cache is not None and leaves is None:
            self._mergeable = False  # e.g. a Hugging Face Cache object: never merge for this model again
            return False
        logits_parts = torch.split(logits, sizes)
        cache_parts = [None] * len(group) if leaves is None else list(zip(*[torch.split(t, sizes) for t in leaves]))
        self.calls += len(group)
        self.batches += 1
        for call, part, cache_leaves in zip(group, logits_parts, cache_parts):
            call.result = (part, None if cache_leaves is None else _rebuild(cache, iter(cache_leaves)))
            call.done.set()
        return True


__all__ = ["DEFAULT_MAX_ROWS", "MIN_ROWS", "SharedLM", "probe"]
