"""Convert a Hugging Face seq2seq checkpoint to a CTranslate2 model, ahead of time.

    python -m tools.convert MODEL_DIR OUT_DIR [--quantization int8]

OUT_DIR holds all the ctranslate2 backend reads at run time. Put it in model.tar.gz as
``ctranslate2/`` beside the HF files (or alone) and no server converts it at start-up.
"""

import argparse
import logging
import sys
from pathlib import Path

from handlers.artifacts import resolve_model_dir
from handlers.convert import QUANTIZATIONS, convert
from handlers.errors import ModelLoadError

log = logging.getLogger("tools.convert")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.convert", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="Hugging Face model dir (or model.tar.gz)")
    parser.add_argument("out_dir", help="where to write the CTranslate2 model (must be empty or absent)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="float32",
                        help="weight type to store (default float32; CT2_COMPUTE_TYPE may differ at run time)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = convert(resolve_model_dir(args.model_dir), Path(args.out_dir), args.quantization)
    except ModelLoadError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    log.info("wrote %s (%s)", out, args.quantization)
    return 0


if __name__ == "__main__":
    sys.exit(main())
