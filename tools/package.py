"""Package a fine-tuned model (a training output dir) as a clean SageMaker ``model.tar.gz``.

    python -m tools.package TRAINING_DIR OUT.tar.gz [--code DIR]
        [--body JSON|@FILE [--content-type TYPE] [--accept TYPE] [--mms-style] | --question TEXT | --no-check]
        [--expect ANSWER | --expect-match REGEX] [--ctranslate2 int8|float32|bfloat16|...|none]
        [--upload s3://BUCKET/PREFIX/]

Keeps what serving needs: ``config.json``, ``generation_config.json``, the weights
(safetensors or ``pytorch_model.bin``, sharded or not), the tokenizer files, and ``code/``
(``--code DIR``, else the training dir's own ``code/``). Leaves out everything else and says
what: optimizer, scheduler and RNG state, ``training_args.bin``, ``checkpoint-*/`` dirs, logs.
Files go in owned by root with mode 0644 (dirs 0755) whatever their modes on disk.

Before writing anything it loads the files as the servers do and answers one request through
their decode -> predict -> encode (the user script's hooks when ``code/inference.py`` exists):
the request your callers send (``--body``), else ``{"inputs": QUESTION}``. When the default
loader serves the model it also ships it converted for CTranslate2 (``ctranslate2/``, int8
unless told otherwise), checked by answering the same request from that copy. A failing check
writes nothing. ``--upload`` then puts the archive on S3 and prints the ``model_data`` URI.
"""

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tools.archive import PackageError, select, stage, write_archive

DEFAULT_QUESTION = "Translate to German: How old are you?"
CONVERTED = "ctranslate2"  # the dir the ctranslate2 backend looks for beside the HF files
# --ctranslate2 QUANTIZATION -> the compute type the check answers with (on the CPU, where
# CTranslate2 has no bfloat16: the GPU types are checked in their CPU counterparts).
CHECK_COMPUTE = {"int8": "int8", "int8_float32": "int8_float32", "float32": "float32",
                 "bfloat16": "float32", "int8_bfloat16": "int8_float32"}


def reason(exc: BaseException) -> str:
    """An InferenceError's message (it names the file or hook), else the exception's type and text."""
    return getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"


class CheckFailed(PackageError):
    """The check failed at ``stage`` ("load" or "answer"), on the converted ``copy`` or not."""

    def __init__(self, stage: str, exc: BaseException, copy: Path | None = None):
        super().__init__(reason(exc))
        self.stage, self.copy = stage, copy


@dataclass(frozen=True)
class CheckRequest:
    """The request the check sends, as a caller would send it, and what must come back."""

    body: bytes
    content_type: str = "application/json"
    accept: str | None = None
    mms_style: bool = False  # a user predict() gets [{"body": bytes}] (MMS stack), not the raw body
    own: bool = False  # the user's (--body), not the default question
    expect: str | None = None  # the whole answer, compared as JSON when both parse
    expect_match: str | None = None  # a regular expression searched in the answer

    @classmethod
    def question(cls, text: str, **kwargs) -> "CheckRequest":
        return cls(json.dumps({"inputs": text}).encode(), **kwargs)

    def describe(self) -> str:
        body = self.body.decode(errors="replace").replace("\n", "\\n")  # one line
        body = body if len(body) <= 200 else body[:200] + "..."
        accept = f", Accept {self.accept}" if self.accept else ""
        mms = ", MMS-style [{\"body\": ...}]" if self.mms_style else ""
        return f"{body} ({self.content_type}{accept}{mms})"


@dataclass
class Checked:
    """What the check saw: the answer, and the converted copy's when one was made."""

    answer: bytes
    content_type: str
    converted: Path | None = None
    converted_answer: bytes | None = None
    not_converted: str | None = None  # why no copy was made


def answer_with_handlers(model_dir: Path, request: CheckRequest, quantization: str | None,
                         on_answer=lambda answer, copy: None) -> Checked:
    """Every call into ``handlers`` (the servers' own API) lives here. Loads ``model_dir`` as a
    server does and answers ``request`` through decode -> predict -> encode, then calls
    ``on_answer(body, None)`` (which may raise); when the default loader serves the model (no user
    ``load_model`` / ``model_fn``) and ``quantization`` is set, converts it into
    ``model_dir/ctranslate2`` and answers again from that copy (``on_answer(body, copy_dir)``)."""
    from handlers.config import HandlerConfig
    from handlers.convert import convert
    from handlers.errors import InferenceError
    from handlers.flan_t5 import FlanT5Model
    from handlers.service import load_service

    def ask(config: HandlerConfig, copy: Path | None):
        try:
            service = load_service(model_dir, config, predict_records=request.mms_style)
            service.start()
        except Exception as exc:  # an InferenceError, or a user script's own failure
            raise CheckFailed("load", exc, copy) from exc
        try:
            payload = service.decode(request.body, request.content_type, request.accept)
            [result] = service.predict([payload])
            if isinstance(result, InferenceError):
                raise result
            body, content_type = service.encode(result, payload)
        except Exception as exc:
            raise CheckFailed("answer", exc, copy) from exc
        on_answer(body, copy)
        return service, body, content_type

    service, body, content_type = ask(HandlerConfig(backend="transformers"), None)
    checked = Checked(body, content_type)
    if not quantization:
        return checked
    if not isinstance(getattr(service, "model", None), FlanT5Model):
        checked.not_converted = "the user script loads its own model (load_model / model_fn)"
        return checked
    del service
    try:
        checked.converted = convert(model_dir, model_dir / CONVERTED, quantization)
    except Exception as exc:  # a model CTranslate2 cannot convert: shipped without
        shutil.rmtree(model_dir / CONVERTED, ignore_errors=True)
        checked.not_converted = f"CTranslate2 cannot convert it: {reason(exc)}"
        return checked
    config = HandlerConfig(backend="ctranslate2", device="cpu", compute_type=CHECK_COMPUTE[quantization])
    _, checked.converted_answer, _ = ask(config, checked.converted)
    return checked


def same_answer(answer: str, expected: str) -> bool:
    try:
        return json.loads(answer) == json.loads(expected)
    except ValueError:
        return answer.strip() == expected.strip()


def failure(exc: CheckFailed, request: CheckRequest, scripted: bool, quantization: str | None) -> str:
    """One line: what failed, why, and what to do."""
    verb = "does not load" if exc.stage == "load" else f"does not answer {request.describe()}"
    if exc.copy is not None:
        return (f"the {CONVERTED}/ copy ({quantization}) {verb}: {exc}; ship it in float32 "
                f"(--ctranslate2 float32) or without it (--ctranslate2 none)")
    line = f"the model {verb}: {exc}"
    if exc.stage == "answer" and scripted and not request.own:
        line += ("; that is the default check request: give the one your script expects, as your "
                 "callers send it: --body '{\"question\": \"...\"}' (or --body @request.json) "
                 "[--content-type TYPE] [--accept TYPE] [--mms-style]")
    return line + (" (the script's traceback: --verbose)" if scripted else "")


def run_check(staged: Path, request: CheckRequest, quantization: str | None, scripted: bool,
              report) -> Checked:
    """Answer ``request`` from the staged files (and their converted copy), reporting each answer
    and holding it to the expected one."""
    first: list[str] = []

    def on_answer(body: bytes, copy: Path | None) -> None:
        if copy is not None:
            size = sum(f.stat().st_size for f in copy.rglob("*") if f.is_file())
            names = ", ".join(sorted(f.name for f in copy.iterdir()))
            report(f"converted: {CONVERTED}/ ({quantization}, {size:,d} bytes: {names})")
        text = body.decode(errors="replace")
        source = "answer" if copy is None else f"answer from {CONVERTED}/ ({quantization})"
        report(f"{source}: {text}")
        if copy is None:
            first.append(text)
        elif text != first[0] and request.expect is None and request.expect_match is None:
            report(f"note: the {quantization} copy answers otherwise than the checkpoint; --expect or "
                   "--expect-match holds both to the answer you need (--ctranslate2 float32 rounds less)")
        wrong = (request.expect is not None and not same_answer(text, request.expect)) or \
            (request.expect_match is not None and not re.search(request.expect_match, text))
        if wrong:
            wanted = (f"not the expected {request.expect!r}" if request.expect is not None
                      else f"which does not match {request.expect_match!r}")
            fix = (": ship it in float32 (--ctranslate2 float32) or without it (--ctranslate2 none)"
                   if copy is not None else "")
            raise PackageError(f"the {source} is {text!r}, {wanted}{fix}")

    report(f"checking: loading it as a server does and sending {request.describe()}")
    try:
        checked = answer_with_handlers(staged, request, quantization, on_answer)
    except CheckFailed as exc:
        raise PackageError(failure(exc, request, scripted, quantization)) from exc
    if checked.not_converted:
        report(f"not converted: {checked.not_converted}")
    return checked


def package(training_dir: Path, out: Path, code: Path | None = None, request: CheckRequest | None = None,
            quantization: str | None = "int8", check: bool = True, report=print) -> None:
    """Write ``out`` from ``training_dir`` (see the module's doc), or raise PackageError having
    written nothing."""
    kept, left_out = select(training_dir)
    if (training_dir / "code").is_dir():
        if code is None:
            code = training_dir / "code"
        elif code.resolve() != (training_dir / "code").resolve():
            left_out.append(f"code/ (replaced by {code})")
    if not out.parent.is_dir():
        raise PackageError(f"{out.parent} does not exist")
    with tempfile.TemporaryDirectory(prefix="package-") as scratch:
        staged = Path(scratch)
        stage(kept, code, staged)
        names = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        report(f"keeping: {', '.join(names)}")
        if left_out:
            report(f"leaving out: {', '.join(left_out)}")
        if check:
            try:
                run_check(staged, request or CheckRequest.question(DEFAULT_QUESTION), quantization,
                          code is not None, report)
            except PackageError as exc:  # name the user's files, not the scratch copies
                raise PackageError(str(exc).replace(str(staged), str(training_dir))) from exc
        else:
            report("warning: --no-check: the archive was neither loaded nor asked anything, nor "
                   f"converted ({CONVERTED}/): a model that does not load fails on the endpoint")
        write_archive(staged, out)
    report(f"wrote {out} ({out.stat().st_size:,d} bytes)")


def check_request(parser: argparse.ArgumentParser, args: argparse.Namespace) -> CheckRequest | None:
    """The check's request from the command line (None: --no-check)."""
    asked = [flag for flag, value in (("--body", args.body), ("--question", args.question),
                                      ("--content-type", args.content_type), ("--accept", args.accept),
                                      ("--expect", args.expect), ("--expect-match", args.expect_match),
                                      ("--mms-style", args.mms_style)) if value]
    if args.no_check:
        if asked:
            parser.error(f"--no-check sends no request: drop {', '.join(asked)}")
        return None
    if args.content_type and args.body is None:
        parser.error("--content-type goes with --body (--question sends application/json)")
    if args.expect_match is not None:
        try:
            re.compile(args.expect_match)
        except re.error as exc:
            parser.error(f"--expect-match {args.expect_match!r}: {exc}")
    common = dict(accept=args.accept, mms_style=args.mms_style, expect=args.expect,
                  expect_match=args.expect_match)
    if args.body is None:
        return CheckRequest.question(args.question or DEFAULT_QUESTION, **common)
    if args.body.startswith("@"):
        try:
            body = Path(args.body[1:]).read_bytes()
        except OSError as exc:
            raise PackageError(f"--body {args.body}: {exc.strerror}") from None
    else:
        body = args.body.encode()
    return CheckRequest(body, args.content_type or "application/json", own=True, **common)


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.package", description=__doc__.splitlines()[0])
    parser.add_argument("training_dir", type=Path, help="the fine-tuned model (a training output dir)")
    parser.add_argument("out", type=Path, help="the model.tar.gz to write")
    parser.add_argument("--code", type=Path, help="dir packed as code/ (inference.py, requirements.txt); "
                        "default: TRAINING_DIR/code when it exists")
    ask = parser.add_argument_group("the check: one request answered before anything is written")
    which = ask.add_mutually_exclusive_group()
    which.add_argument("--body", help="the request body your callers send, inline or @FILE")
    which.add_argument("--question", help=f'send {{"inputs": QUESTION}} (default: {DEFAULT_QUESTION!r})')
    which.add_argument("--no-check", action="store_true",
                       help="write the archive without loading or asking it (and without converting it)")
    ask.add_argument("--content-type", help="the body's Content-Type (default application/json)")
    ask.add_argument("--accept", help="the Accept header (default: none, as callers that send none)")
    ask.add_argument("--mms-style", action="store_true", help='a user predict() gets [{"body": bytes}] '
                     "as on the multi-model (MMS) stack, not the raw body as on the single-model stack")
    expected = ask.add_mutually_exclusive_group()
    expected.add_argument("--expect", help="the whole answer expected (compared as JSON when it is JSON)")
    expected.add_argument("--expect-match", metavar="REGEX", help="a pattern the answer must contain")
    parser.add_argument("--ctranslate2", default="int8", choices=[*CHECK_COMPUTE, "none"],
                        help=f"ship {CONVERTED}/, the model converted for INFERENCE_BACKEND=ctranslate2, in "
                        "this precision (default int8; bfloat16 or int8_bfloat16 for GPUs); none: do not")
    parser.add_argument("--upload", metavar="s3://BUCKET/PREFIX/",
                        help="put the archive on S3 (boto3) and print the model_data URI")
    parser.add_argument("--verbose", action="store_true", help="show the servers' log (tracebacks)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    if not args.verbose:  # a failure is one line; --verbose shows what the libraries and scripts log
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    destination = None
    try:
        request = check_request(parser, args)
        if args.upload:  # the destination first: a wrong bucket fails before any work
            from tools.upload import destination_for
            destination = destination_for(args.upload, args.out.name)
        package(args.training_dir, args.out, args.code, request,
                None if args.ctranslate2 == "none" else args.ctranslate2, request is not None)
    except PackageError as exc:
        print(f"package: error: {exc}; nothing written", file=sys.stderr)
        return 1
    if destination is not None:
        from tools.upload import upload
        try:
            print(f"model_data: {upload(args.out, destination)}")
        except PackageError as exc:
            print(f"package: error: {exc}; {args.out} is written, not uploaded", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
