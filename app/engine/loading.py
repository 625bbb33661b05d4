"""Finding a model (local directory or hub cache/download) and loading it onto devices."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.engine.backends import Scorer, TransformersScorer
from app.engine.tokenize import Family, PairEncoder
from app.errors import ModelUnavailable

log = logging.getLogger(__name__)

_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]
_HUB_IGNORE = ["onnx/*", "*/onnx/*", "*.onnx", "*.msgpack", "*.h5", "flax_*", "tf_*"]
_FAMILIES: dict[str, Family] = {
    "xlm-roberta": "xlm-roberta", "roberta": "xlm-roberta", "bert": "bert"
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadedModel:
    encoder: PairEncoder
    scorers: list[Scorer]
    model_dir: Path
    dtype: str
    devices: list[str]
    backend: str
    attention: str


def resolve_model_dir(model: str, cache_dir: str | None = None) -> Path:
    """A local directory as is; otherwise the hub snapshot, from the cache or downloaded.

    Raises ModelUnavailable with a one-line, actionable message when neither works.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        raise ModelUnavailable(f"model directory {model!r} does not exist")
    from huggingface_hub import snapshot_download

    def fetch(local_only: bool, patterns: list[str]) -> Path:
        return Path(
            snapshot_download(
                repo_id=model, allow_patterns=patterns, ignore_patterns=_HUB_IGNORE,
                cache_dir=cache_dir, local_files_only=local_only,
            )
        )

    try:
        try:
            snapshot = fetch(True, _HUB_FILES)
            if not (snapshot / "config.json").exists():
                raise FileNotFoundError("incomplete cache")
        except Exception:
            log.info("downloading %s from the Hugging Face hub", model)
            snapshot = fetch(False, _HUB_FILES)
        if not any(snapshot.glob("*.safetensors")):
            snapshot = fetch(False, [*_HUB_FILES, "pytorch_model.bin"])
    except Exception as exc:
        raise ModelUnavailable(
            f"model {model!r} is not a local directory, not in the Hugging Face cache, and could"
            f" not be downloaded ({type(exc).__name__}); download it where the hub is reachable"
            " and pass its directory with --model /path/to/dir (or RERANKER_MODEL)"
        ) from exc
    return snapshot


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_devices(device: str) -> list[str]:
    if device == "auto":
        if torch.cuda.is_available():
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu"]
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(f"--device {device} asked for CUDA but no CUDA device is visible")
    if device == "cuda":
        return ["cuda:0"]
    return device.split(",")


def resolve_dtype(dtype: str, devices: list[str]) -> str:
    if dtype != "auto":
        if dtype == "float16" and devices == ["cpu"]:
            raise ModelUnavailable("--dtype float16 is for CUDA; on CPU use bfloat16 or float32")
        return dtype
    on_cuda = devices[0].startswith("cuda")
    return "bfloat16" if on_cuda or cpu_has_native_bf16() else "float32"


def read_config(model_dir: Path) -> dict[str, Any]:
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise ModelUnavailable(f"{model_dir} has no config.json; is it a model directory?")
    config: dict[str, Any] = json.loads(config_path.read_text())
    return config


def model_family(config: dict[str, Any], model_dir: Path) -> Family:
    model_type = config.get("model_type")
    if model_type not in _FAMILIES:
        raise ModelUnavailable(
            f"{model_dir}: model_type {model_type!r} is not supported; this service serves"
            " XLM-RoBERTa and BERT cross-encoders"
        )
    return _FAMILIES[model_type]


def max_input_length(config: dict[str, Any], family: Family, tokenizer: Any) -> int:
    """The smaller of the position table's limit and the tokenizer's model_max_length."""
    positions = int(config["max_position_embeddings"])
    if family == "xlm-roberta":
        positions -= int(config.get("pad_token_id", 1)) + 1
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < positions:
        return tok_limit
    return positions


def load_model(
    model: str, *, device: str = "auto", dtype: str = "auto", cache_dir: str | None = None
) -> LoadedModel:
    """Tokenizer plus one scorer per device, ready to serve."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = resolve_model_dir(model, cache_dir)
    config = read_config(model_dir)
    family = model_family(config, model_dir)
    labels = config.get("num_labels", len(config.get("id2label", {})) or 2)
    if labels != 1:
        raise ModelUnavailable(
            f"{model_dir}: the model has {labels} labels; a reranker needs a one-label"
            " cross-encoder (num_labels = 1)"
        )
    devices = resolve_devices(device)
    dtype_name = resolve_dtype(dtype, devices)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    except Exception as exc:
        raise ModelUnavailable(f"{model_dir}: cannot load the tokenizer ({exc})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelUnavailable(f"{model_dir}: a fast (tokenizers) tokenizer is required")
    encoder = PairEncoder(tokenizer, family, max_input_length(config, family, tokenizer))

    scorers: list[Scorer] = []
    for dev in devices:
        try:
            net = AutoModelForSequenceClassification.from_pretrained(
                model_dir, dtype=_DTYPES[dtype_name], attn_implementation="sdpa"
            )
        except Exception as exc:
            raise ModelUnavailable(f"{model_dir}: cannot load the weights ({exc})") from exc
        net.to(dev).eval()
        scorers.append(TransformersScorer(net, family, dev, tokenizer.pad_token_id))
    log.info(
        "loaded %s (%s, max input %d tokens) on %s in %s, backend transformers, attention sdpa",
        model_dir, family, encoder.max_length, ",".join(devices), dtype_name,
    )
    return LoadedModel(
        encoder=encoder, scorers=scorers, model_dir=model_dir, dtype=dtype_name,
        devices=devices, backend="transformers", attention="sdpa",
    )
