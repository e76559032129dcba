#!/usr/bin/env python
"""The seed's serving pattern, as a peer for scripts/benchmark_serving.py: a Flask app that
runs a Hugging Face encoder in PyTorch per request (mean pooling, L2 normalised).

    python scripts/peers/flask_pytorch.py MODEL_DIR PORT
"""

from __future__ import annotations

import sys

import torch
from flask import Flask, jsonify, request
from transformers import AutoModel, AutoTokenizer

model_dir, port = sys.argv[1], int(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModel.from_pretrained(model_dir).eval()
app = Flask(__name__)


@app.get("/health")
def health() -> str:
    return "ok"


@app.post("/embed")
def embed():  # type: ignore[no-untyped-def]
    text = request.get_json()["text"]
    batch = tokenizer([text], truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return jsonify(torch.nn.functional.normalize(pooled, dim=-1)[0].tolist())


if __name__ == "__main__":
    app.run("127.0.0.1", port, threaded=True)
