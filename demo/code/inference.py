"""Inference script for the demo Flan-T5 model (packed as code/inference.py in model.tar.gz).

Written in the style of the older SageMaker flask / multi-model-server images:

    model = load_model(model_dir)
    result = predict(model, payload)

payload is what the server hands over:
  * flask-style images: the raw request body (bytes)
  * MMS-style images:   a list of requests, e.g. [{"body": bytes}] (or "data" instead of "body")
A body is JSON {"inputs": "..." | ["...", ...], "parameters": {"max_new_tokens": N}} or plain
text (one prompt). The result is JSON-serialisable: [{"generated_text": "..."}, ...], one entry
per input. For an MMS list with several requests, one such list per request.
Generation is greedy.
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer  # noqa: E402

MAX_NEW_TOKENS = 16
MAX_NEW_TOKENS_CAP = 64


def load_model(model_dir):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, local_files_only=True)
    model.to(device)
    model.eval()
    return {"tokenizer": tokenizer, "model": model, "device": device}


def _parse(body):
    """-> (list of prompts, parameters dict)"""
    if isinstance(body, dict):  # some MMS front ends hand over already-decoded JSON
        data = body
    else:
        if isinstance(body, (bytes, bytearray)):
            text = bytes(body).decode("utf-8")
        elif isinstance(body, str):
            text = body
        else:
            raise ValueError("unsupported payload type: %s" % type(body).__name__)
        try:
            data = json.loads(text)
        except ValueError:
            data = text.strip()  # plain text: the prompt itself
        if not isinstance(data, (dict, list, str)):
            data = text.strip()  # e.g. a bare number: still a prompt
    parameters = {}
    if isinstance(data, dict):
        if "inputs" not in data:
            raise ValueError('JSON body needs an "inputs" field')
        parameters = data.get("parameters") or {}
        data = data["inputs"]
    prompts = [data] if isinstance(data, str) else data
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError('"inputs" must be a string or a non-empty list of strings')
    return prompts, parameters


def _generate(model, prompts, parameters):
    max_new_tokens = int(parameters.get("max_new_tokens", MAX_NEW_TOKENS))
    max_new_tokens = max(1, min(max_new_tokens, MAX_NEW_TOKENS_CAP))
    tokenizer, net = model["tokenizer"], model["model"]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True).to(model["device"])
    with torch.inference_mode():
        ids = net.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [{"generated_text": t.strip()} for t in texts]


def predict(model, payload):
    if isinstance(payload, list) and payload and all(isinstance(item, dict) for item in payload):  # MMS
        results = []
        for item in payload:
            body = item.get("body") if item.get("body") is not None else item.get("data")
            results.append(_generate(model, *_parse(body)))
        return results[0] if len(results) == 1 else results
    return _generate(model, *_parse(payload))
