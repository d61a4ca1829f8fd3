"""The Flan-T5 interceptor: encode -> generate -> decode over a list of requests.

The one place that knows the prompt and answer conventions: truncation to the model's input
limit, stop sequences, grouping requests by parameters, per-group errors and streaming text.
The engine underneath (``handlers.engine``) only turns token ids into token ids.
"""

import logging
import queue
import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from handlers.artifacts import resolve_model_dir
from handlers.codecs import Generation
from handlers.config import HandlerConfig
from handlers.engine import Engine, load_engine
from handlers.errors import BadRequest, GatewayTimeout, InferenceError, InternalError
from handlers.generation import GenerationParams, cut_at_stop

log = logging.getLogger(__name__)
# Longer prompts are tokenized a piece at a time (see FlanT5Model._head_ids): a prompt near
# the 6 MiB body cap costs the few pieces that hold its first max_input_tokens tokens.
PIECE_CHARS = 4096
SAFE_CUT = re.compile(r"[\x00-\x7f] (?=[\x00-\x7f])")  # a space between two ASCII characters


class FlanT5Model:
    """A seq2seq model behind an engine. ``load`` runs nothing, so a process may load, fork,
    and let the child ``place()`` and run it."""

    def __init__(self, engine: Engine, model_dir: Path, config: HandlerConfig):
        self.engine, self.model_dir = engine, model_dir
        self.max_batch_size, self._max_input_tokens = config.max_batch_size, config.max_input_tokens

    @classmethod
    def load(cls, model_dir, config: HandlerConfig = HandlerConfig()) -> "FlanT5Model":
        path = resolve_model_dir(model_dir)
        return cls(load_engine(path, config), path, config)

    def place(self) -> None:
        self.engine.place()

    @property
    def max_input_tokens(self) -> int:
        return self._max_input_tokens or self.engine.max_input_tokens

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

    def _generate(self, prompts: list[str], params: GenerationParams) -> list[Generation]:
        self.place()
        self.engine.check(params)
        inputs, truncated = self._encode(prompts)
        texts = self.engine.detokenize(self.engine.generate(inputs, params))
        n = params.num_return_sequences
        return [Generation(tuple(cut_at_stop(t, params.stop) for t in texts[i * n:(i + 1) * n]), cut)
                for i, cut in enumerate(truncated)]

    def generate(self, requests: list[tuple[str, GenerationParams]]) -> list[Generation | InferenceError]:
        """One result per request, same order. Requests with equal parameters run as one batch;
        a failing batch fails only its own requests."""
        results: list = [None] * len(requests)
        groups = defaultdict(list)
        for index, (_, params) in enumerate(requests):
            groups[params].append(index)
        for params, indexes in groups.items():
            # A seeded sample must not depend on what shares its batch: one prompt per call.
            size = 1 if params.seed is not None else self.max_batch_size
            for start in range(0, len(indexes), size):
                chunk = indexes[start:start + size]
                try:
                    outputs = self._generate([requests[i][0] for i in chunk], params)
                except InferenceError as exc:  # e.g. a parameter this engine cannot honour
                    outputs = [exc] * len(chunk)
                except Exception as exc:  # a model failure is this group's 500, not the server's
                    log.exception("generate failed for %d prompt(s)", len(chunk))
                    outputs = [InternalError.from_exception("generate", exc)] * len(chunk)
                for index, output in zip(chunk, outputs):
                    results[index] = output
        return results

    def warm_up(self) -> None:
        """One real generate on the target device; raises if the model cannot answer."""
        [result] = self.generate([("warm up", GenerationParams(max_new_tokens=2))])
        if isinstance(result, Exception):
            raise result

    def stream(self, prompt: str, params: GenerationParams, timeout: float) -> "TextStream":
        if params.num_beams not in (None, 1) or params.num_return_sequences != 1:
            raise BadRequest("streaming supports one sequence without beam search "
                             "(num_beams 1, num_return_sequences 1)")
        self.engine.check(params)  # the model is placed: warm_up() ran on the model thread
        return TextStream(self, prompt, params, timeout)

    def stream_tokens(self, prompt: str, params: GenerationParams, on_token) -> None:
        [inputs], _ = self._encode([prompt])
        self.engine.stream(inputs, params, on_token)


class TextStream:
    """Text pieces of one generation. ``run()`` generates (call it on the model's own thread);
    iterating yields the pieces as they come, cut at the first stop sequence."""

    def __init__(self, model: FlanT5Model, prompt: str, params: GenerationParams, timeout: float):
        self.model, self.prompt, self.params, self.timeout = model, prompt, params, timeout
        self.tokens: queue.SimpleQueue = queue.SimpleQueue()  # token ids, then None at the end
        self.cancelled = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.model.stream_tokens(self.prompt, self.params, self._put)
        except BaseException as exc:
            log.exception("streaming generate failed")
            self.error = exc
        finally:
            self.tokens.put(None)

    def _put(self, token: int) -> bool:
        self.tokens.put(token)
        return self.cancelled.is_set()

    def cancel(self) -> None:
        self.cancelled.set()

    def _texts(self) -> Iterator[tuple[str, bool]]:
        """(text so far, final): before the end, the text up to its last space (decoding may
        still change the word after it), then the whole text."""
        ids: list[int] = []
        while (token := self.tokens.get(timeout=self.timeout)) is not None:
            ids.append(token)
            text = self.model.engine.detokenize([ids])[0]
            yield text[:max(text.rfind(" "), 0)], False
        if self.error is not None:
            raise InternalError.from_exception("generate", self.error)
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
