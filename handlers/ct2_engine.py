"""The CTranslate2 engine: a converted model (``ctranslate2.Translator``) and a ``tokenizers``
tokenizer, no torch. Loading finds the converted model (``handlers.convert``) and reads its
files, so a gunicorn master may load before it forks; ``place()``, in the serving process,
builds the Translator (its threads, and CUDA). How close each parameter's mapping
(``_options``) comes to transformers is measured in docs/BENCHMARKS.md ("Parameters")."""

import json
import logging
import os
import threading
import time
from collections.abc import Hashable
from dataclasses import replace
from pathlib import Path

from handlers import convert, cuda, gpu_memory
from handlers.artifacts import check_model_dir
from handlers.config import HandlerConfig
from handlers.engine import Engine, GenerationJob, gpu_visible
from handlers.errors import BadRequest, ModelLoadError
from handlers.generation import GenerationParams
from handlers.tokenizer import TextTokenizer, input_limit

log = logging.getLogger(__name__)
COMPUTE_TYPES = {"cpu": ("int8", "int8_float32", "float32"), "cuda": ("bfloat16", "int8_bfloat16", "float32")}
# What transformers' GenerationConfig uses when the model's generation_config.json is silent.
GENERATION_DEFAULTS = {"num_beams": 1, "do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
                       "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "length_penalty": 1.0,
                       "early_stopping": False, "min_new_tokens": 0}
# A beam search ends once beam_size x patience hypotheses are finished. Patience 1 is
# transformers' early_stopping true; 2 gave transformers' answers for early_stopping false and
# "never" on the whole demo set (and for every other beam-search parameter measured).
PATIENCE = {True: 1, False: 2, "never": 2}
INT32_MAX = 2**31 - 1  # CTranslate2's integer options (a larger n-gram size bans nothing either way)
# CTranslate2 takes top_p as a float32 and refuses 0: a top_p that rounds to 0 there is raised to the
# smallest normal float32, which keeps the most likely token only, as any such top_p does.
FLOAT32_TINY = 2.0 ** -126


def read_json(path: Path | None) -> dict | list:
    try:
        return json.loads(path.read_text()) if path and path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is corrupt: {exc}") from None


class CTranslate2Engine(Engine):
    name = "ctranslate2"
    streams_in_batches = True  # the per-token callback feeds each stream of a batch

    def __init__(self, model_dir: Path, config: HandlerConfig):
        """Everything but the Translator: device, compute type, the converted model (converting
        the checkpoint once, in a subprocess, when none was shipped) and its files."""
        compute_type = config.compute_type
        if compute_type in ("float16", "int8_float16"):
            raise ModelLoadError(f"CT2_COMPUTE_TYPE={compute_type} is refused: T5 overflows to NaN "
                                 "in float16; use bfloat16, int8_bfloat16 or float32 on a GPU")
        known = sorted({t for types in COMPUTE_TYPES.values() for t in types})
        if compute_type and compute_type not in known:
            raise ModelLoadError(f"CT2_COMPUTE_TYPE={compute_type!r} is not one of {', '.join(known)}")
        shipped = convert.shipped_model(model_dir)
        if shipped is None:
            check_model_dir(model_dir)  # an HF checkpoint, converted on first use
        kind, _, index = (config.device or ("cuda" if gpu_visible() else "cpu")).partition(":")
        if kind not in COMPUTE_TYPES:
            raise ModelLoadError(f"INFERENCE_DEVICE={config.device!r}: CTranslate2 runs on cpu or cuda")
        self.compute_type = compute_type or ("int8" if kind == "cpu" else "bfloat16")
        if self.compute_type not in COMPUTE_TYPES[kind]:
            raise ModelLoadError(f"CT2_COMPUTE_TYPE={self.compute_type} is not available on {kind}: use one "
                                 f"of {', '.join(COMPUTE_TYPES[kind])}")
        self.model_dir, self.config, self.kind, self.index = model_dir, config, kind, int(index or 0)
        self.threads = config.threads or len(os.sched_getaffinity(0))
        # On CPU, one-thread replicas sharing the weights, each running its own batch: one thread
        # per batch ran 2.4x the throughput of two threads per matrix product (docs/BENCHMARKS.md).
        self.lanes = self.threads if kind == "cpu" else 1
        self.translator = self.lone = None  # lone: a copy on all the threads for a prompt alone
        self.running, self.running_lock = 0, threading.Lock()  # translate_batch calls under way
        self.path = shipped or convert.cached_conversion(model_dir, self.compute_type,
                                                         convert.cache_dir(config.ct2_cache_dir))

        def find(name: str) -> Path | None:  # in the converted dir, else the model dir beside it
            return next((d / name for d in (self.path, model_dir) if (d / name).is_file()), None)

        if find("tokenizer.json") is None:
            raise ModelLoadError(f"no tokenizer.json in {self.path}: convert with `python -m tools.convert`, "
                                 "which writes one")
        self.tokenizer = TextTokenizer(find("tokenizer.json"), find("tokenizer_config.json"))
        self.eos_token_id = self.tokenizer.eos_token_id
        self.splits_at_spaces = self.tokenizer.splits_at_spaces
        hf_config = read_json(model_dir / "config.json")  # (a bare CTranslate2 dir: its own, no limit)
        self.max_input_tokens = input_limit(self.tokenizer.model_max_length, hf_config.get("n_positions"))
        generation = read_json(find("generation_config.json"))
        self.defaults = {name: value if generation.get(name) is None else generation[name]
                         for name, value in GENERATION_DEFAULTS.items()}
        self.max_new_tokens = min(generation.get("max_new_tokens") or 64, config.max_new_tokens)
        self.vocabulary = read_json(self.path / "shared_vocabulary.json")
        if not self.vocabulary:
            raise ModelLoadError(f"{self.path} has no shared_vocabulary.json: not a CTranslate2 seq2seq "
                                 "model")
        self.ids = {token: i for i, token in reversed(list(enumerate(self.vocabulary)))}  # first of equals

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "compute_type": self.compute_type,
                "device": self.kind if self.kind == "cpu" else f"{self.kind}:{self.index}"}

    def place(self) -> None:
        """Build the Translator (its threads, and CUDA) in the process that runs it."""
        if self.translator is not None:
            return
        import ctranslate2  # it loads cuBLAS when it first uses it, not on import
        kind, index, compute_type = self.kind, self.index, self.compute_type
        if kind == "cuda":
            cublas = cuda.preload_cublas12()  # the wheel dlopens CUDA 12's cuBLAS by name
            if not cublas.ok:
                raise ModelLoadError(f"CTranslate2 cannot run on the GPU: {cublas}")
            if not ctranslate2.get_cuda_device_count():
                raise ModelLoadError("a GPU is visible but CTranslate2 finds no usable CUDA device (driver "
                                     "or CUDA libraries); set INFERENCE_DEVICE=cpu to serve on the CPU")
            devices = cuda.run_probe().get("devices") or [{}]  # before the weights take their share
            free = devices[min(index, len(devices) - 1)].get("free", 0)
            shape = gpu_memory.T5Shape.from_config(read_json(self.model_dir / "config.json"))
            self.budget = gpu_memory.MemoryBudget.measure(free, shape, compute_type, weights_loaded=False)
            supported = ctranslate2.get_supported_compute_types("cuda", index)
            if not self.config.compute_type and "bfloat16" not in supported:
                compute_type = "float32"  # no bf16 on this GPU
        threads = 1 if kind == "cpu" else self.threads

        def build(replicas: int, threads: int):
            return ctranslate2.Translator(str(self.path), device=kind, device_index=index,
                                          compute_type=compute_type, inter_threads=replicas,
                                          intra_threads=threads)

        try:
            self.translator = build(self.lanes, threads)
            layout = self.config.thread_layout  # auto: not tried on an AMD EPYC (_pick_lone_layout)
            if kind == "cpu" and self.threads > 1 and layout != "replicas":
                if layout == "both" or "AuthenticAMD" not in Path("/proc/cpuinfo").read_text():
                    self._pick_lone_layout(build(1, self.threads))
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"CTranslate2 cannot load {self.path}: {exc}") from exc
        self.compute_type = compute_type  # as built: float32 where the GPU has no bf16
        log.info("loaded %s with CTranslate2 (%s on %s, %d lane(s) of %d thread(s)%s)", self.path,
                 compute_type, kind, self.lanes, threads,
                 f"; a prompt alone on {self.threads} threads" if self.lone else "")

    def _pick_lone_layout(self, shared) -> None:
        """One-thread replicas run batches fastest on every CPU measured; a prompt alone may run
        faster on all the threads at once (on an Intel Xeon, 63 vs 83 ms; on an AMD EPYC only on
        larger models, where auto does not try, to keep one copy of the weights). Keep the copy
        on all the threads for lone prompts where it wins by 10 % here ("both": always)."""
        def lone_ms(translator) -> float:
            source, times = [["▁a"] * 24 + ["</s>"]], []
            for _ in range(4):
                started = time.perf_counter()
                translator.translate_batch(source, beam_size=1, max_decoding_length=8, min_decoding_length=8)
                times.append(time.perf_counter() - started)
            return 1000 * sorted(times[1:])[1]
        replicas, all_threads = lone_ms(self.translator), lone_ms(shared)
        keep = self.config.thread_layout == "both" or all_threads < 0.9 * replicas
        log.info("a prompt alone: %.1f ms on one thread, %.1f ms on %d threads: %s", replicas, all_threads,
                 self.threads, f"lone prompts on {self.threads} threads" if keep else
                 "one-thread replicas only")
        self.lone = shared if keep else None

    def close(self) -> None:
        self.translator = self.lone = None  # their destructors join CTranslate2's threads

    def tokenize(self, texts: list[str], special: bool = True) -> list[list[int]]:
        return self.tokenizer.encode(texts, special)

    def detokenize(self, sequences: list[list[int]]) -> list[str]:
        return self.tokenizer.decode(sequences)

    def _settings(self, params: GenerationParams) -> dict:
        """The generation parameters, the model's defaults where the request is silent."""
        return {name: value if getattr(params, name) is None else getattr(params, name)
                for name, value in self.defaults.items()}

    def check(self, params: GenerationParams) -> None:
        """400 for ``seed``, the one parameter CTranslate2 cannot honour."""
        if params.seed is not None:
            raise BadRequest("parameter 'seed' is not supported on the CTranslate2 engine: its sampler draws "
                             "from one random generator per engine thread, seeded once when the thread "
                             "starts, so a request cannot choose its seed (leave seed out, or serve with "
                             "INFERENCE_BACKEND=transformers)")

    def batch_key(self, params: GenerationParams) -> Hashable:
        """Greedy search and sampling stop each sequence on its own (see ``run``): requests that
        differ only in ``max_new_tokens`` or ``stop`` share a batch. Beam search cannot."""
        if (params.num_beams or self.defaults["num_beams"]) == 1:
            return replace(params, max_new_tokens=None, stop=())
        return replace(params, stop=())

    def _options(self, params: GenerationParams, longest: int) -> tuple[dict, int]:
        """translate_batch options, and how many copies of each input to run (one per sample)."""
        value = self._settings(params)
        options = {"max_input_length": 0, "beam_size": 1, "return_end_token": True,
                   "max_decoding_length": longest,
                   "min_decoding_length": min(value["min_new_tokens"], longest),
                   "repetition_penalty": value["repetition_penalty"],
                   "no_repeat_ngram_size": min(value["no_repeat_ngram_size"], INT32_MAX)}
        if value["do_sample"]:  # top_k 0 is every token, as in transformers
            options.update(sampling_topk=min(value["top_k"], len(self.vocabulary)),
                           sampling_topp=max(value["top_p"], FLOAT32_TINY),
                           sampling_temperature=value["temperature"])
        if value["num_beams"] > 1:
            options.update(beam_size=value["num_beams"], num_hypotheses=params.num_return_sequences,
                           length_penalty=value["length_penalty"], patience=PATIENCE[value["early_stopping"]])
            return options, 1
        return options, params.num_return_sequences if value["do_sample"] else 1

    def _strip(self, ids: list[int]) -> list[int]:
        return ids[:-1] if ids and ids[-1] == self.eos_token_id else ids

    def run(self, jobs: list[GenerationJob]) -> None:
        """One ``translate_batch`` on one replica (``max_batch_size`` = the batch). In greedy
        search and sampling its per-token callback (``_on_step``) answers each job the moment
        its last sequence ends, while longer ones go on."""
        options, copies = self._options(jobs[0].params, max(job.max_new_tokens for job in jobs))
        rows = [job for job in jobs for _ in range(copies)]
        source = [[self.vocabulary[i] for i in job.ids] for job in rows]
        if options["beam_size"] == 1:
            options["callback"] = self._on_step(rows, copies)
        with self.running_lock:
            alone, self.running = self.running == 0, self.running + 1
        translator = self.lone if self.lone is not None and alone and len(source) == 1 else self.translator
        try:
            results = translator.translate_batch(source, max_batch_size=len(source), **options)
        finally:
            with self.running_lock:
                self.running -= 1
        for i, job in enumerate(jobs):  # those the callback did not answer (beam search; an empty input)
            job.finish([self._strip([self.ids[token] for token in tokens])
                        for result in results[i * copies:(i + 1) * copies] for tokens in result.hypotheses])

    def _on_step(self, rows: list[GenerationJob], copies: int):
        """The per-token callback of a greedy or sampled batch: each row stops at its own
        ``max_new_tokens`` (or when its stream's reader stopped it, or its caller gave up), and
        a job is answered as soon as its last row ends."""
        tokens: list[list[int]] = [[] for _ in rows]
        left = {id(job): copies for job in rows}

        def on_step(step) -> bool:
            row, job = step.batch_id, rows[step.batch_id]
            tokens[row].append(step.token_id)
            end = step.is_last or len(tokens[row]) >= job.max_new_tokens or job.future.cancelled()
            if job.on_token is not None and step.token_id != self.eos_token_id:
                end = job.on_token(step.token_id) or end
            if end:
                left[id(job)] -= 1
                if not left[id(job)]:
                    first = row - row % copies
                    job.finish([self._strip(ids) for ids in tokens[first:first + copies]])
            return end and not step.is_last

        return on_step
