"""Request bytes -> ``Payload`` and results -> response bytes, by media type.

Conventions (those of Hugging Face's and SageMaker's toolkits):
- ``application/json``: ``{"inputs": str | [str], "parameters": {...}}`` or
  ``{"question": ..., "context": ...}`` -> ``[{"generated_text": ...}, ...]``.
- ``application/jsonlines``: one such object (or a bare JSON string) per line -> one line
  per input line, same order.
- ``text/csv``: one prompt per line -> one row per prompt. ``text/plain``: one prompt.
"""

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from handlers import content_types, strict_json
from handlers.errors import BadRequest, NotAcceptable, UnsupportedMediaType
from handlers.figures import Figures
from handlers.generation import GenerationParams, parse_parameters

QA_TEMPLATE = "Read this and answer the question\n\n{context}\n\n{question}"


@dataclass(frozen=True)
class Record:
    """One request line: its prompts share parameters. ``single``: inputs was one string."""

    prompts: tuple[str, ...]
    params: GenerationParams
    single: bool = True


@dataclass(frozen=True)
class Payload:
    """A decoded request body."""

    records: tuple[Record, ...]
    content_type: str
    accept: str
    stream: bool = False

    @property
    def requests(self) -> list[tuple[str, GenerationParams]]:
        return [(prompt, r.params) for r in self.records for prompt in r.prompts]


@dataclass(frozen=True)
class Generation:
    """What the model produced for one prompt."""

    texts: tuple[str, ...]
    truncated: bool = False
    figures: Figures | None = field(default=None, compare=False)  # what it cost the engine


def decode_text(body: bytes, charset: str | None) -> str:
    charset = charset or "utf-8"
    try:
        return body.decode(charset)
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        raise BadRequest(f"body is not valid {charset}: byte 0x{body[exc.start]:02x} "
                         f"at offset {exc.start} (line {line})") from None
    except UnicodeError as exc:  # idna, punycode: no position
        raise BadRequest(f"body is not valid {charset}: {exc}") from None
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        raise UnsupportedMediaType(f"unsupported charset {charset[:80]!r}") from None


def _unicode(value: str, where: str) -> str:
    """``value``, unless it holds an unpaired surrogate (JSON's ``"\\ud800"``), which no
    tokenizer can encode."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRequest(f"{where} holds an unpaired surrogate \\u{ord(value[exc.start]):04x} "
                             f"at character {exc.start}: not valid Unicode") from None
    return value


def _prompt(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRequest(f"{where} is empty")
    return _unicode(value, where)


def record_from_json(obj: Any, cap: int, where: str = "body") -> tuple[Record, bool]:
    """One JSON request -> (Record, stream wanted)."""
    if isinstance(obj, str):
        return Record((_prompt(obj, where),), GenerationParams()), False
    if not isinstance(obj, dict):
        raise BadRequest(f"{where} must be a JSON object with 'inputs', got {type(obj).__name__}")
    parameters = obj.get("parameters")
    try:
        params = parse_parameters(parameters, max_new_tokens_cap=cap)
    except BadRequest as exc:
        raise BadRequest(f"{where}: {exc.message}") from None
    stream = obj.get("stream", isinstance(parameters, dict) and parameters.get("stream", False))
    if not isinstance(stream, bool):
        raise BadRequest(f"{where}: 'stream' must be true or false, got {stream!r:.80}")
    if "inputs" in obj:
        inputs = obj["inputs"]
        if isinstance(inputs, list):
            if not inputs:
                raise BadRequest(f"{where}: 'inputs' is an empty list")
            prompts = tuple(_prompt(v, f"{where}: 'inputs'[{i}]") for i, v in enumerate(inputs))
            return Record(prompts, params, single=False), stream
        return Record((_prompt(inputs, f"{where}: 'inputs'"),), params), stream
    if "question" in obj:
        question = _prompt(obj["question"], f"{where}: 'question'")
        context = obj.get("context")
        if context is None:
            return Record((question,), params), stream
        context = _prompt(context, f"{where}: 'context'")
        return Record((QA_TEMPLATE.format(context=context, question=question),), params), stream
    raise BadRequest(f"{where} has no 'inputs' (or 'question') field; "
                     "expected {\"inputs\": \"...\", \"parameters\": {...}}")


def read_text(body: bytes, content_type: str | None) -> tuple[str, str]:
    """(media type, body text) of a readable, non-empty body; JSON when no type is given."""
    media_type, params = content_types.parse(content_type)
    media_type = media_type or content_types.JSON
    if media_type not in content_types.READABLE:
        hint = " (curl -d sends that: add -H 'Content-Type: application/json')" \
            if media_type == "application/x-www-form-urlencoded" else ""
        raise UnsupportedMediaType(f"unsupported Content-Type {media_type!r:.100}{hint}; "
                                   f"supported: {', '.join(content_types.READABLE)}")
    if not body or not body.strip():
        raise BadRequest("request body is empty")
    return media_type, decode_text(body, params.get("charset"))


def json_lines(text: str) -> list[str]:
    """JSON Lines split on newlines only (``str.splitlines`` also splits on U+2028, which
    JSON strings may hold raw)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def decode(body: bytes, content_type: str | None, accept: str, cap: int) -> Payload:
    """Parse a request body; every error says what is wrong and where."""
    media_type, text = read_text(body, content_type)
    if media_type == content_types.JSON:
        record, stream = record_from_json(strict_json.loads(text, "body"), cap)
        return Payload((record,), media_type, accept, stream)
    if media_type == content_types.JSONLINES:
        records = []
        for number, line in enumerate(json_lines(text), start=1):
            if line.strip():
                where = f"line {number}"
                record, stream = record_from_json(strict_json.loads(line, where), cap, where)
                if stream:
                    raise BadRequest(f"{where}: streaming is not available for jsonlines bodies")
                records.append(record)
        return Payload(tuple(records), media_type, accept)
    if media_type == content_types.CSV:
        return Payload(_decode_csv(text), media_type, accept)
    return Payload((Record((_prompt(text, "body"),), GenerationParams()),), media_type, accept)


def _decode_csv(text: str) -> tuple[Record, ...]:
    reader = csv.reader(io.StringIO(text, newline=""))
    records = []
    try:
        for row in reader:
            # An unquoted comma is part of the prompt, not a column separator.
            prompt = ",".join(row)
            if prompt.strip():
                records.append(Record((_unicode(prompt, f"line {reader.line_num}"),), GenerationParams()))
    except csv.Error as exc:
        raise BadRequest(f"malformed CSV at line {reader.line_num}: {exc}") from None
    return tuple(records)


def _answer(generation: Generation) -> list[dict]:
    extra = {"truncated": True} if generation.truncated else {}
    return [{"generated_text": text, **extra} for text in generation.texts]


def record_answer(record: Record, generations: list[Generation]) -> Any:
    """HF shape: one input -> a flat list; a list of inputs -> one entry per input."""
    answers = [_answer(g) for g in generations]
    if record.single:
        return answers[0]
    return [a[0] if len(a) == 1 else a for a in answers]


def _line_answer(record: Record, generations: list[Generation]) -> Any:
    answer = record_answer(record, generations)
    return answer[0] if record.single and len(answer) == 1 else answer


def _split(payload: Payload, generations: list[Generation]) -> list[list[Generation]]:
    per_record, start = [], 0
    for record in payload.records:
        per_record.append(generations[start:start + len(record.prompts)])
        start += len(record.prompts)
    return per_record


def answer(payload: Payload, generations: list[Generation]) -> Any:
    """The JSON answer: HF shape for one JSON/text request, else one entry per record."""
    per_record = _split(payload, generations)
    if len(payload.records) == 1 and payload.content_type in (content_types.JSON, content_types.TEXT):
        return record_answer(payload.records[0], per_record[0])
    return [_line_answer(r, g) for r, g in zip(payload.records, per_record)]


def encode(payload: Payload, generations: list[Generation]) -> tuple[bytes, str]:
    """Results (one per prompt, in payload order) -> (body, content type of ``payload.accept``)."""
    accept = payload.accept
    if accept == content_types.JSON:
        return json.dumps(answer(payload, generations), ensure_ascii=False).encode(), accept
    if accept == content_types.JSONLINES:
        lines = [json.dumps(_line_answer(r, g), ensure_ascii=False)
                 for r, g in zip(payload.records, _split(payload, generations))]
        return ("\n".join(lines) + "\n").encode(), accept
    if accept == content_types.CSV:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for generation in generations:
            writer.writerow(generation.texts)
        return out.getvalue().encode(), accept
    if accept == content_types.TEXT:
        return "\n".join(t for g in generations for t in g.texts).encode(), accept
    raise NotAcceptable(f"cannot produce {accept!r:.100}; supported: {', '.join(content_types.WRITABLE)}")


def decode_object(body: bytes, content_type: str | None) -> Any:
    """The default ``input_fn`` for a user ``predict_fn``: the body as plain Python data
    (JSON -> object, jsonlines -> list of objects, csv -> list of lines, text -> str)."""
    media_type, text = read_text(body, content_type)
    if media_type == content_types.JSON:
        return strict_json.loads(text, "body")
    if media_type == content_types.JSONLINES:
        return [strict_json.loads(line, f"line {n}") for n, line in enumerate(json_lines(text), 1)
                if line.strip()]
    if media_type == content_types.CSV:
        return [r.prompts[0] for r in _decode_csv(text)]
    return text
