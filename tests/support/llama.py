"""llama.cpp's ``llama-server`` as a real backend in tests, with a tiny random-weight model.

The binary is built by ``.ci/llama-server`` (from the llama.cpp tree that llama-cpp-python's sdist
vendors) into ``${REGIONGATE_CACHE:-~/.cache/regiongate}/llama-server-<version>/``, or given by
``REGIONGATE_LLAMA_SERVER``. Missing: the tests skip, except under ``CI=true`` where they fail.

The model is written at test time with the ``gguf`` package: llama architecture, 2 layers, 64-wide,
random weights, the sdist's GPT-2 vocabulary and Qwen 2.5's chat template (so ``--jinja``
parses tool calls). Its text is gibberish; the protocol, streaming, grammar-constrained JSON and tool
calls, usage, errors, slots and the prompt cache are the real server's.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

VERSION = "0.3.36"
VOCAB = "ggml-vocab-gpt-2.gguf"
TEMPLATE = "Qwen-Qwen2.5-7B-Instruct.jinja"
MODEL = "tiny-llama"  # the name the gateway's deployment offers and the server's --alias

N_EMBD, N_LAYER, N_HEAD, N_FF, N_CTX = 64, 2, 4, 128, 4096


def cache_dir() -> Path:
    base = os.environ.get("REGIONGATE_CACHE") or str(Path.home() / ".cache" / "regiongate")
    return Path(base) / f"llama-server-{VERSION}"


def binary() -> Path:
    """The llama-server binary, or skip (fail under CI) with what to run."""
    given = os.environ.get("REGIONGATE_LLAMA_SERVER")
    path = Path(given) if given else cache_dir() / "llama-server"
    missing = [p for p in (path, cache_dir() / VOCAB, cache_dir() / TEMPLATE) if not p.is_file()]
    if missing:
        why = f"llama-server not built ({', '.join(map(str, missing))} missing): run .ci/llama-server"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return path


def write_model(path: Path) -> Path:
    """A llama-architecture GGUF with random weights and the cached vocabulary and chat template."""
    import gguf  # test-only dependency, imported here so collection never needs it

    vocab = gguf.GGUFReader(str(cache_dir() / VOCAB))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(MODEL)
    w.add_block_count(N_LAYER)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    n_vocab = 0
    for name, f in vocab.fields.items():  # the tokenizer as the sdist ships it, field by field
        if not name.startswith("tokenizer."):
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, f.contents(), f.types[0], f.types[-1])
            n_vocab = max(n_vocab, len(f.data)) if name == "tokenizer.ggml.tokens" else n_vocab
        else:
            w.add_key_value(name, f.contents(), f.types[0])
    w.add_vocab_size(n_vocab)
    w.add_chat_template((cache_dir() / TEMPLATE).read_text(encoding="utf-8"))
    rng = np.random.default_rng(1234)  # fixed: the same model every run
    words = [
        bytes(vocab.fields["tokenizer.ggml.tokens"].parts[i]).decode()
        for i in vocab.fields["tokenizer.ggml.tokens"].data
    ]
    emb, out = _bigram(rng, words)
    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    w.add_tensor("output.weight", out)
    zeros = np.zeros((N_EMBD, N_EMBD), dtype=np.float32)
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for part in ("attn_q", "attn_k", "attn_v"):
            w.add_tensor(f"blk.{i}.{part}.weight", _noise(rng, N_EMBD, N_EMBD))
        # The blocks run (attention, the KV cache, the feed-forward) but add nothing to the residual
        # stream: the next token depends on the current one only (see _bigram).
        w.add_tensor(f"blk.{i}.attn_output.weight", zeros)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", _noise(rng, N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_up.weight", _noise(rng, N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_down.weight", np.zeros((N_EMBD, N_FF), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _noise(rng: np.random.Generator, *shape: int, scale: float = 0.02) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# What the model says after a chat template's generation prompt (which ends in a newline): the start of a
# tool call, two newlines, end of text. Random weights alone never reach llama.cpp's tool-call grammar,
# which lets any text come first; with this chain a chat with tools gets a real, grammar-completed call
# (the double newline, not a second "\n" -> "<", ends it after one), and a plain chat gets a short
# deterministic answer ("<tool_call>") that "stop" can cut.
CHAIN = ["\u010a", "<", "tool", "_", "call", ">", "\u010a\u010a", "<|endoftext|>"]  # GPT-2 byte-level \n
SURE = 40.0  # logit of a chain step; the largest of 50k random ones is about half of it


def _bigram(rng: np.random.Generator, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and output projection of a model whose next token depends on the current one only:
    random (gibberish) everywhere, except along CHAIN, where each step is all but certain."""
    ids = [words.index(w) for w in CHAIN]
    emb = rng.standard_normal((len(words), N_EMBD)).astype(np.float32)
    # The chain's tokens get orthonormal directions, so that no step leaks into another.
    q, _ = np.linalg.qr(rng.standard_normal((N_EMBD, len(ids))))
    for k, t in enumerate(ids):
        emb[t] = q[:, k] * np.sqrt(N_EMBD)  # unit RMS, as the final RMS norm leaves it
    out = _noise(rng, len(words), N_EMBD, scale=0.5)
    for a, b in itertools.pairwise(ids):
        out[b] += q[:, ids.index(a)] * (SURE / np.sqrt(N_EMBD))
    return emb, out


def server_args(model: Path, port: int, slots: int = 2) -> list[str]:
    """How the tests run llama-server: ``slots`` parallel sequences sharing the context, the prompt cache
    on (``--cache-reuse``), embeddings and ``/metrics`` on, tool calls parsed (``--jinja``)."""
    return [
        str(binary()),
        "--model", str(model),
        "--alias", MODEL,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--ctx-size", str(N_CTX),
        "--parallel", str(slots),
        "--threads", "1",
        "--cache-reuse", "64",
        "--embeddings",
        "--pooling", "mean",
        "--metrics",
        "--jinja",
        "--no-webui",
    ]  # fmt: skip


def start(model: Path, port: int, log: Path, slots: int = 2) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(server_args(model, port, slots), stdout=out, stderr=subprocess.STDOUT)
