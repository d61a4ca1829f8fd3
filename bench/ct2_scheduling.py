"""What CTranslate2 offers a scheduler that must not hold short answers behind long ones,
measured on the t5-small shape (int8, one-thread replicas, one per core):

    .venv/bin/python bench/ct2_scheduling.py

1. one batch of 6 short (8 tokens) and 2 long (128 tokens) rows, each stopped at its own length
   by the per-token callback: when the short rows' answers are complete, against the batch's end;
2. a short batch on one replica while a long batch runs on the other (two lanes), against the
   short batch alone;
3. a long generation continued in chunks with ``target_prefix`` (so that new requests could
   join between chunks), against one call.
The numbers behind the scheduler's design (docs/DESIGN.md, "The scheduler").
"""

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.models import build_t5, prompts, shipped_copy  # noqa: E402


def median_ms(run, times: int = 5) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return 1000 * statistics.median(samples)


def main() -> int:
    import ctranslate2
    import tokenizers

    with tempfile.TemporaryDirectory(prefix="ct2-scheduling-") as tmp:
        model = shipped_copy(build_t5(Path(tmp) / "t5"), Path(tmp) / "shipped", {"int8"}) / "ctranslate2"
        tokenizer = tokenizers.Tokenizer.from_file(str(model / "tokenizer.json"))
        source = [tokenizer.encode(q).tokens for q in prompts(16)]
        translator = ctranslate2.Translator(str(model), device="cpu", compute_type="int8", inter_threads=2,
                                            intra_threads=1)

        def batch(rows, tokens, **options):
            return translator.translate_batch(rows, beam_size=1, max_decoding_length=tokens, min_decoding_length=tokens,
                                              max_batch_size=len(rows), **options)

        batch(source[:4], 8)
        lengths, done, started = [8] * 6 + [128] * 2, {}, [0.0]

        def on_step(step) -> bool:
            if step.step + 1 >= lengths[step.batch_id]:
                done.setdefault(step.batch_id, time.perf_counter() - started[0])
                return True
            return False

        started[0] = time.perf_counter()
        batch(source[:8], 128, callback=on_step)
        total = time.perf_counter() - started[0]
        print(f"1. one batch, 6 x 8 + 2 x 128 tokens: the short rows end at {1000 * max(done[i] for i in range(6)):.0f} ms, "
              f"the batch at {1000 * total:.0f} ms (6 x 8 tokens alone: {median_ms(lambda: batch(source[:6], 8)):.0f} ms)")

        alone = median_ms(lambda: batch(source[:6], 8), 9)
        stop, longs = threading.Event(), []

        def long_lane():
            while not stop.is_set():
                longs.append(median_ms(lambda: batch(source[8:10], 128), 1))

        thread = threading.Thread(target=long_lane)
        thread.start()
        time.sleep(0.3)
        beside = median_ms(lambda: batch(source[:6], 8), 9)
        stop.set()
        thread.join()
        print(f"2. 6 x 8 tokens on one replica: {alone:.0f} ms alone, {beside:.0f} ms while the other replica runs "
              f"2 x 128 tokens ({statistics.median(longs):.0f} ms a batch)")

        def chunked(chunk: int):
            prefix = [[] for _ in range(2)]
            while len(prefix[0]) < 128:
                results = batch(source[:2], len(prefix[0]) + chunk, target_prefix=prefix)
                prefix = [r.hypotheses[0] for r in results]

        whole = median_ms(lambda: batch(source[:2], 128), 3)
        for chunk in (16, 32, 64):
            print(f"3. 2 x 128 tokens in chunks of {chunk} (target_prefix): {median_ms(lambda: chunked(chunk), 3):.0f} ms, "
                  f"in one call: {whole:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
