"""Both stacks of this checkout against another checkout's (the code before a change), on
CTranslate2 at concurrency 1 and 8, in rounds that alternate which goes first.

    .venv/bin/python bench/before_after.py --baseline-tree ../base [--rounds 4] [--duration 10]
        [--model t5-small]

One run on a 2-core machine moves by up to 20 %, so one pair of runs cannot show a 5 % change:
each round measures new and before back to back (the same load, ``bench/stacks_bench.py``'s
wrk clients, 16 tokens per request) and gives the ratio new / before of req/s; the median of
the rounds' ratios, and their range, are printed as a Markdown table.
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.stacks_bench import LOGS, Stack, measure, shipped  # noqa: E402

LEVELS = [1, 8]
STACKS = {"flask": {"INFERENCE_BACKEND": "ctranslate2"},
          "mms": {"INFERENCE_BACKEND": "ctranslate2", "SERVING_STACK": "mms"}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-tree", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--model", default="t5-small")
    args = parser.parse_args()
    LOGS.mkdir(parents=True, exist_ok=True)
    ratios: dict[str, list[float]] = {f"{s} c={c}": [] for s in STACKS for c in LEVELS}
    with tempfile.TemporaryDirectory(prefix="before-after-") as tmp:
        work = Path(tmp)
        model = shipped(args.model, work)
        for round_ in range(args.rounds):
            for name, env in STACKS.items():
                trees = {"new": REPO, "before": args.baseline_tree.resolve()}
                order = ["new", "before"] if round_ % 2 == 0 else ["before", "new"]
                rows = {which: measure(Stack(f"{name}, {which}", model, env, tree_dir=trees[which]), LEVELS,
                                       args.duration, work) for which in order}
                for c in LEVELS:
                    new, before = rows["new"][str(c)], rows["before"][str(c)]
                    if "error" in new or "error" in before or new["errors"] or before["errors"]:
                        print(f"round {round_ + 1} {name} c={c}: failed: {new} / {before}", flush=True)
                        return 1
                    ratios[f"{name} c={c}"].append(new["req_per_s"] / before["req_per_s"])
                    print(f"round {round_ + 1} {name} c={c}: new {new['req_per_s']} req/s, "
                          f"before {before['req_per_s']} req/s", flush=True)
    print(f"\n{args.model} shape, {args.rounds} rounds of {args.duration:g} s per level\n")
    print("| stack | new / before, each round | median | range |\n| --- | --- | --- | --- |")
    for key, values in ratios.items():
        print(f"| {key} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.median(values):.2f} | "
              f"{min(values):.2f}-{max(values):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
