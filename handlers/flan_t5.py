"""The Flan-T5 interceptor: encode -> generate -> decode, one prompt at a time, batched.

The one place that knows the prompt and answer conventions: truncation to the model's input
limit, stop sequences, per-prompt errors and streaming text. Each prompt becomes a job for the
model's scheduler (``handlers.scheduler``), which batches the jobs of every caller onto the
engine's lanes; the engine underneath (``handlers.engine``) turns token ids into token ids.
"""

import logging
import queue
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from handlers import gpu_memory
from handlers.artifacts import resolve_model_dir
from handlers.codecs import Generation
from handlers.config import HandlerConfig
from handlers.engine import Engine, GenerationJob, load_engine
from handlers.errors import BadRequest, GatewayTimeout, InferenceError, InternalError
from handlers.figures import Figures
from handlers.generation import GenerationParams, cut_at_stop
from handlers.scheduler import Scheduler

log = logging.getLogger(__name__)
# Longer prompts are tokenized a piece at a time (see FlanT5Model._head_ids): a prompt near
# the 6 MiB body cap costs the few pieces that hold its first max_input_tokens tokens.
PIECE_CHARS = 4096
SAFE_CUT = re.compile(r"[\x00-\x7f] (?=[\x00-\x7f])")  # a space between two ASCII characters


def timeout_text(config: HandlerConfig) -> str:
    return "the model server timeout" if config.timeout_s is None else f"{config.timeout_s:g} s"


class FlanT5Model:
    """A seq2seq model behind an engine and the scheduler that feeds it. ``load`` runs nothing
    and starts no thread, so a process may load, fork, and let the child ``start()`` it (the
    first ``generate`` starts it too)."""

    def __init__(self, engine: Engine, model_dir: Path, config: HandlerConfig):
        self.engine, self.model_dir, self.config = engine, model_dir, config
        self.scheduler = Scheduler(self._run, lanes=engine.lanes, max_size=config.max_batch_size,
                                   max_wait_s=config.max_batch_wait_ms / 1000, name="model")
        self._starting = threading.Lock()

    @classmethod
    def load(cls, model_dir, config: HandlerConfig | None = None) -> "FlanT5Model":
        path = resolve_model_dir(model_dir)
        config = config or HandlerConfig()
        return cls(load_engine(path, config), path, config)

    def start(self) -> None:
        """Place the model on its lanes and warm it up with one real generate; raises if it
        cannot answer. Idempotent."""
        with self._starting:
            self.scheduler.start(self.engine.place, at_exit=self.engine.close)
        [result] = self.generate([("warm up", GenerationParams(max_new_tokens=2))])
        if isinstance(result, Exception):
            raise result

    def engine_info(self) -> dict[str, str]:
        return self.engine.describe()

    @property
    def max_input_tokens(self) -> int:
        return self.config.max_input_tokens or self.engine.max_input_tokens

    def _head_ids(self, text: str, need: int, piece_chars: int = PIECE_CHARS) -> tuple[list[int], bool]:
        """The first ``need`` token ids of a long ``text`` (fewer when it has fewer), and
        whether it has more: tokenized piece by piece, each piece ending before a space
        between two ASCII characters, where ``engine.splits_at_spaces`` guarantees that the
        pieces' tokens concatenate to the whole text's; it stops once ``need`` are known."""
        ids, start, size = [], 0, piece_chars
        while start < len(text) and len(ids) < need:
            cut = SAFE_CUT.search(text, start + size) if start + size < len(text) else None
            end = cut.start() + 1 if cut else len(text)
            ids += self.engine.tokenize([text[start:end]], special=False)[0]
            start, size = end, size * 2
        return ids, start < len(text) or len(ids) >= need

    def _encode(self, prompts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids, truncated to the model's input limit (kept: the closing ``</s>``)."""
        limit, eos = self.max_input_tokens, self.engine.eos_token_id
        pieces = self.engine.splits_at_spaces
        long = {i for i, p in enumerate(prompts) if pieces and len(p) > PIECE_CHARS}
        short = [i for i in range(len(prompts)) if i not in long]
        rows: dict[int, tuple[list[int], bool]] = {}
        for i, row in zip(short, self.engine.tokenize([prompts[i] for i in short]) if short else []):
            rows[i] = (row[:limit - 1] + [eos], True) if len(row) > limit else (row, False)
        for i in long:
            head, more = self._head_ids(prompts[i], limit)
            rows[i] = (head[:limit - 1] + [eos], True) if more else (head + [eos], False)
        return [rows[i][0] for i in range(len(prompts))], [rows[i][1] for i in range(len(prompts))]

    def submit(self, prompt: str, params: GenerationParams, on_token=None) -> tuple[GenerationJob, bool]:
        """Queue one prompt's generation: (its job, whether the prompt was truncated). Raises
        BadRequest for a parameter the engine cannot honour."""
        if not self.scheduler.ready.is_set():
            self.start()
        self.engine.check(params)
        [ids], [truncated] = self._encode([prompt])
        stream_alone = on_token is not None and not self.engine.streams_in_batches
        bound = params.max_new_tokens or self.engine.max_new_tokens
        job = GenerationJob(key=object() if stream_alone else self.engine.batch_key(params), cost=bound,
                            ids=ids, params=params, max_new_tokens=bound, on_token=on_token)
        self.scheduler.submit(job)
        return job, truncated

    def generate(self, requests: list[tuple[str, GenerationParams]],
                 deadline: float | None = None) -> list[Generation | InferenceError]:
        """One result per request, same order, each its own error. Requests from any number of
        threads are batched together by the scheduler; each is answered when its own sequences
        end. Past ``deadline`` (time.monotonic()) a request is a 504."""
        submitted: list = []
        for prompt, params in requests:
            try:
                submitted.append(self.submit(prompt, params))
            except InferenceError as exc:
                submitted.append(exc)
        return [item if isinstance(item, InferenceError) else self._result(*item, params, deadline)
                for item, (_, params) in zip(submitted, requests)]

    def _result(self, job: GenerationJob, truncated: bool, params: GenerationParams,
                deadline: float | None) -> Generation | InferenceError:
        try:
            sequences = job.future.result(None if deadline is None else max(deadline - time.monotonic(), 0.001))
        except FutureTimeout:
            job.future.cancel()
            return GatewayTimeout(f"inference did not finish within {timeout_text(self.config)} "
                                  "(SAGEMAKER_MODEL_SERVER_TIMEOUT)")
        except InferenceError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a model failure is this request's 500, not the server's
            return InternalError.from_exception("generate", exc)
        texts = self.engine.detokenize(sequences)
        return Generation(tuple(cut_at_stop(t, params.stop) for t in texts), truncated,
                          job_figures(job, sum(map(len, sequences))))

    def _run(self, jobs: list[GenerationJob]) -> None:
        """A batch on the engine, in calls that fit the device's memory budget (GPU); a call that
        still runs out of memory is split and retried, and a prompt that cannot fit alone is a
        400 naming what to lower (``handlers.gpu_memory``)."""
        params, budget = jobs[0].params, getattr(self.engine, "budget", None)
        per_input = (params.num_beams or 1) * params.num_return_sequences
        size = len(jobs) if budget is None else budget.max_inputs(
            max(len(j.ids) for j in jobs), max(j.max_new_tokens for j in jobs), per_input)
        for start in range(0, len(jobs), size):
            for job, error in zip(jobs[start:start + size], gpu_memory.run_in_memory(
                    self._run_unanswered, jobs[start:start + size], too_big=self._too_big)):
                if error is not None:
                    job.fail(error)

    def _run_unanswered(self, jobs: list[GenerationJob]) -> list[None]:
        """One engine call for the jobs whose callers still wait; its first job reports it."""
        log.debug("batch of %d prompt(s)", len(jobs))
        live = [job for job in jobs if not job.future.done()]
        started = time.monotonic()
        for job in live:
            job.started, job.reports_call = started, 0
        if live:
            live[0].reports_call = len(live)
            self.engine.run(live)
        return [None] * len(jobs)

    @staticmethod
    def _too_big(job: GenerationJob) -> InferenceError:
        return gpu_memory.does_not_fit(len(job.ids), job.max_new_tokens, job.params.num_beams or 1,
                                 job.params.num_return_sequences)

    def stream(self, prompt: str, params: GenerationParams, timeout: float) -> "TextStream":
        if params.num_beams not in (None, 1) or params.num_return_sequences != 1:
            raise BadRequest("streaming supports one sequence without beam search "
                             "(num_beams 1, num_return_sequences 1)")
        stream = TextStream(self, params, timeout)
        stream.attach(self.submit(prompt, params, on_token=stream.put)[0])
        return stream


def job_figures(job: GenerationJob, generated: int) -> Figures | None:
    if not job.started:
        return None
    return Figures(job.started, job.finished or time.monotonic(), len(job.ids), generated,
                   (job.reports_call,) if job.reports_call else ())


class TextStream:
    """Text pieces of one generation, as its tokens arrive from the engine; iterating yields
    them, cut at the first stop sequence. Leaving the iteration (done, a stop sequence, or the
    caller went away) stops the generation."""

    def __init__(self, model: FlanT5Model, params: GenerationParams, timeout: float):
        self.model, self.params, self.timeout = model, params, timeout
        self.tokens: queue.SimpleQueue = queue.SimpleQueue()  # token ids, then None at the end
        self.cancelled = threading.Event()
        self.job: GenerationJob | None = None
        self.generated = 0  # tokens the engine sent this stream

    def attach(self, job: GenerationJob) -> None:
        self.job = job
        job.future.add_done_callback(lambda _: self.tokens.put(None))

    def put(self, token: int) -> bool:
        self.generated += 1
        self.tokens.put(token)
        return self.cancelled.is_set()

    def figures(self) -> Figures | None:
        """What this stream cost the engine, once it has ended; None if it never ran."""
        return None if self.job is None else job_figures(self.job, self.generated)

    def cancel(self) -> None:
        self.cancelled.set()
        if self.job is not None:
            self.job.future.cancel()  # not started yet: never runs

    def _texts(self) -> Iterator[tuple[str, bool]]:
        """(text so far, final): before the end, the text up to its last space (decoding may
        still change the word after it), then the whole text."""
        ids: list[int] = []
        while (token := self.tokens.get(timeout=self.timeout)) is not None:
            ids.append(token)
            text = self.model.engine.detokenize([ids])[0]
            yield text[:max(text.rfind(" "), 0)], False
        error = None if self.job.future.cancelled() else self.job.future.exception()
        if error is not None:
            raise error if isinstance(error, InferenceError) else InternalError.from_exception("generate", error)
        yield self.model.engine.detokenize([ids])[0], True

    def __iter__(self) -> Iterator[str]:
        sent = 0
        hold = max((len(s) for s in self.params.stop), default=1) - 1
        try:
            for text, final in self._texts():
                cut = cut_at_stop(text, self.params.stop)
                if len(cut) < len(text) or final:
                    if cut[sent:]:
                        yield cut[sent:]
                    return
                if len(text) - hold > sent:
                    yield text[sent:len(text) - hold]
                    sent = len(text) - hold
        except queue.Empty:
            raise GatewayTimeout("no token generated within the model server timeout") from None
        finally:
            self.cancel()  # a stop sequence, or the caller went away: stop generating
