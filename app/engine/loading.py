"""Finding a model (local directory or hub cache/download) and loading it onto devices."""

from __future__ import annotations

import functools
import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.engine.backends import CausalLMScorer, Scorer, TransformersScorer
from app.engine.decoder import (
    DECODER_FAMILIES,
    DecoderConfig,
    DecoderReranker,
    causal_self_check,
    to_decoder_native,
)
from app.engine.modeling import CrossEncoder, EncoderConfig
from app.engine.native import NativeScorer, checked_attention, fused_linears
from app.engine.prompts import PromptEncoder
from app.engine.recipes import DECODER_MAX_LENGTH, RECIPES, UnknownScoring, detect_scoring
from app.engine.tokenize import Encoder, Family, PairEncoder
from app.engine.weights import check_complete, read_state_dict, to_native
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
    encoder: Encoder
    scorers: list[Scorer]
    model_dir: Path
    dtype: str
    devices: list[str]
    backend: str
    attention: str
    dtype_probe: dict[str, float] | None = None
    """GFLOP/s of a matmul at the model's shapes per candidate dtype, when `auto` timed them."""
    scoring: str = "classifier"
    """`classifier` (a cross-encoder's head) or the decoder recipe (app/engine/recipes.py)."""


def local_model_dir(model: str) -> Path | None:
    """The directory `model` names, None for a hub id; raises ModelUnavailable at once (no
    network) for a path that does not exist."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        raise ModelUnavailable(f"model directory {model!r} does not exist")
    return None


def resolve_model_dir(model: str, cache_dir: str | None = None) -> Path:
    """A local directory as is; otherwise the hub snapshot, from the cache or downloaded.

    Raises ModelUnavailable with a one-line, actionable message when neither works.
    """
    local = local_model_dir(model)
    if local is not None:
        return local
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
        log.info("model %s is in %s", model, snapshot)
    except Exception as exc:
        raise ModelUnavailable(
            f"model {model!r} is not a local directory, not in the Hugging Face cache, and could"
            f" not be downloaded ({type(exc).__name__}); download it where the hub is reachable"
            " and pass its directory with --model /path/to/dir (or RERANKER_MODEL)"
        ) from exc
    return snapshot


PROBE_TOKENS = 2048
PROBE_SECONDS = 0.6
"""Time spent timing the candidate dtypes, all together (under a second)."""


def matmul_gflops(device: str, dtypes: list[torch.dtype], hidden: int,
                  intermediate: int) -> list[float]:
    """GFLOP/s of a [PROBE_TOKENS, hidden] x [hidden, intermediate] matmul (the shape of the
    model's feed-forward layer over a full batch) in each dtype: the best of runs that take
    turns, dtype after dtype, so a slowdown from other work on the machine lands on every
    candidate alike instead of on whichever happened to be timed then."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(PROBE_TOKENS, hidden, generator=generator)
    b = torch.randn(hidden, intermediate, generator=generator)
    operands = [(a.to(device, dt), b.to(device, dt)) for dt in dtypes]
    flops = 2.0 * PROBE_TOKENS * hidden * intermediate
    best = [float("inf")] * len(dtypes)
    with torch.inference_mode():
        for x, y in operands:
            torch.matmul(x, y)  # warm-up: kernel selection, first-touch allocation
        stop = time.perf_counter() + PROBE_SECONDS
        rounds = 0
        while rounds < 3 or (time.perf_counter() < stop and rounds < 50):
            for i, (x, y) in enumerate(operands):
                t0 = time.perf_counter()
                torch.matmul(x, y)
                best[i] = min(best[i], time.perf_counter() - t0)
            rounds += 1
    return [flops / t / 1e9 for t in best]


def probe_cpu_dtype(config: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """The faster of float32 and bfloat16 on this CPU, measured: CPU flags do not tell (with
    avx512_bf16 but no AMX, bfloat16 matmuls ran at half float32's speed on one Xeon; 4.5x
    its speed on a Zen 4)."""
    hidden = int(config.get("hidden_size", 768))
    intermediate = int(config.get("intermediate_size", 4 * hidden))
    names = ["float32", "bfloat16"]
    rates = matmul_gflops("cpu", [_DTYPES[n] for n in names], hidden, intermediate)
    figures = {name: round(rate, 1) for name, rate in zip(names, rates, strict=True)}
    return max(figures, key=figures.__getitem__), figures


def resolve_devices(device: str) -> list[str]:
    """`auto`: every visible GPU, else the CPU. An explicit CUDA device must exist: asked for
    and missing (an old driver, a wrong index) is one line at start-up, never a silent CPU."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if device == "auto":
        if available:
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu"]
    if not device.startswith("cuda"):
        return device.split(",")
    if not available:
        why = "; ".join(str(w.message).strip().splitlines()[0] for w in caught) or (
            "no NVIDIA driver or device found")
        raise ModelUnavailable(
            f"--device {device} asked for CUDA, but this torch build (CUDA {torch.version.cuda})"
            f" sees no device: {why}. Check the driver with nvidia-smi (docs/deployment.md lists"
            " the minimum driver per CUDA version), or pass --device auto to fall back to CPU"
        )
    wanted = ["cuda:0"] if device == "cuda" else device.split(",")
    count = torch.cuda.device_count()
    missing = [d for d in wanted if int(d.split(":")[1]) >= count]
    if missing:
        visible = ", ".join(f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(count))
        raise ModelUnavailable(f"--device {device}: {', '.join(missing)} does not exist; the"
                               f" visible devices are {visible}")
    return wanted


BF16_CAPABILITY = (8, 0)
"""Native bfloat16 from Ampere on; T4 and V100 emulate it slowly, so `auto` takes float16."""
FP16_UNSAFE = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text"})
"""Model types whose activations overflow float16 (trained in bfloat16 with large residual
values): where bfloat16 is not native, `auto` takes float32 for them."""


def resolve_dtype(
    dtype: str, devices: list[str], config: dict[str, Any]
) -> tuple[str, dict[str, float] | None]:
    """The dtype to load in, and the probe's figures when `auto` measured them (CPU only:
    on CUDA, bfloat16 where every device has it natively, float16 otherwise; LayerNorm and
    softmax keep float32 statistics either way)."""
    if dtype != "auto":
        if dtype == "float16" and devices == ["cpu"]:
            raise ModelUnavailable("--dtype float16 is for CUDA; on CPU use bfloat16 or float32")
        return dtype, None
    if devices[0].startswith("cuda"):
        native_bf16 = all(torch.cuda.get_device_capability(d) >= BF16_CAPABILITY for d in devices)
        if native_bf16:
            return "bfloat16", None
        return ("float32" if config.get("model_type") in FP16_UNSAFE else "float16"), None
    return probe_cpu_dtype(config)


def read_config(model_dir: Path) -> dict[str, Any]:
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise ModelUnavailable(f"{model_dir} has no config.json; is it a model directory?")
    config: dict[str, Any] = json.loads(config_path.read_text())
    return config


def model_family(config: dict[str, Any]) -> Family | None:
    """The native family from `model_type`, or for checkpoints without one (jina's) from
    `architectures`; None for any other model (served by the transformers backend)."""
    model_type = config.get("model_type")
    if model_type in _FAMILIES:
        return _FAMILIES[model_type]
    if model_type is None:
        for arch in config.get("architectures") or []:
            if "Roberta" in arch:
                return "xlm-roberta"
            if "Bert" in arch:
                return "bert"
    return None


def pair_layout(tokenizer: Any, model_dir: Path) -> Family:
    """Which pair template the tokenizer itself uses: XLM-R's `<s> A </s></s> B </s>` or
    BERT's `[CLS] A [SEP] B [SEP]`; windows are built the same way."""
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    b = tokenizer("b", add_special_tokens=False)["input_ids"]
    both = tokenizer("a", "b")["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if both == [cls, *a, sep, sep, *b, sep]:
        return "xlm-roberta"
    if both == [cls, *a, sep, *b, sep]:
        return "bert"
    raise ModelUnavailable(
        f"{model_dir}: the tokenizer's pair template {both} is neither BERT's nor XLM-R's;"
        " this service cannot window documents for it"
    )


def max_input_length(config: dict[str, Any], family: Family, tokenizer: Any) -> int:
    """The smaller of the position table's limit and the tokenizer's model_max_length.
    RoBERTa-style models (XLM-R pair layout) number positions from padding_idx + 1."""
    positions = int(config["max_position_embeddings"])
    if family == "xlm-roberta":
        positions -= int(config.get("pad_token_id", 1)) + 1
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < positions:
        return tok_limit
    return positions


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        # trust_remote_code=False, said explicitly: a config with `auto_map` would otherwise
        # make transformers ask on stdin whether to run the repository's code.
        tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelUnavailable(f"{model_dir}: cannot load the tokenizer ({exc})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelUnavailable(f"{model_dir}: a fast (tokenizers) tokenizer is required")
    return tokenizer


def native_replicas(
    model_dir: Path, build: Callable[[], nn.Module],
    tensors: Callable[[], dict[str, torch.Tensor]], devices: list[str], dtype: str,
    *, extra_ok: bool = True,
) -> list[nn.Module]:
    """One replica of a native model per device: the checkpoint read once, renamed by
    `tensors`, checked complete against `build()`'s parameters (and, without `extra_ok`,
    checked to hold nothing the module would drop: a bias the config does not announce),
    then assigned without a random initialisation (built on the meta device)."""
    try:
        native = tensors()
        with torch.device("meta"):
            expected = {k: v.shape for k, v in build().state_dict().items()}
        check_complete(native, expected)
        unexpected = sorted(native.keys() - expected.keys())
        if unexpected and not extra_ok:
            raise ValueError(f"checkpoint has {len(unexpected)} tensor(s) the config does not"
                             f" describe: {', '.join(unexpected[:6])}")
    except (ValueError, KeyError, OSError) as exc:
        raise ModelUnavailable(f"{model_dir}: cannot load the checkpoint: {exc}") from exc
    replicas: list[nn.Module] = []
    for dev in devices:
        with torch.device("meta"):
            net = build()
        net.load_state_dict({k: native[k] for k in expected}, strict=True, assign=True)
        replicas.append(net.to(device=dev, dtype=_DTYPES[dtype]).eval())
    return replicas


def load_native(
    model_dir: Path, config: dict[str, Any], family: Family, devices: list[str], dtype: str
) -> list[NativeScorer]:
    """Native encoders (either checkpoint naming), one per device, weights read once."""
    try:
        cfg = EncoderConfig.from_hf(config, family)
    except (ValueError, KeyError) as exc:
        raise ModelUnavailable(f"{model_dir}: cannot load the checkpoint: {exc}") from exc
    nets = native_replicas(model_dir, lambda: CrossEncoder(cfg),
                           lambda: to_native(read_state_dict(model_dir), family), devices, dtype)
    head_dim = cfg.hidden_size // cfg.num_heads
    scorers: list[NativeScorer] = []
    for net, dev in zip(nets, devices, strict=True):
        assert isinstance(net, CrossEncoder)
        path = checked_attention(dev, _DTYPES[dtype], cfg.num_heads, head_dim)
        fused_linears(net, dev, _DTYPES[dtype])
        scorers.append(NativeScorer.for_encoder(net, dev, path))
    return scorers


def load_transformers(
    model_dir: Path, config: dict[str, Any], family: Family, devices: list[str], dtype: str,
    pad_id: int,
) -> list[TransformersScorer]:
    """Stock AutoModelForSequenceClassification: the fallback for any one-label model."""
    from transformers import AutoModelForSequenceClassification

    if "model_type" not in config:
        raise ModelUnavailable(
            f"{model_dir}: config.json has no model_type (a custom-code checkpoint such as"
            " jina-reranker-v2); the transformers backend would need trust_remote_code, which"
            " this service never uses: use --backend native"
        )
    scorers: list[TransformersScorer] = []
    for dev in devices:
        try:
            try:
                net = AutoModelForSequenceClassification.from_pretrained(
                    model_dir, dtype=_DTYPES[dtype], attn_implementation="sdpa",
                    trust_remote_code=False,
                )
            except ValueError:  # an architecture without SDPA support: its default attention
                net = AutoModelForSequenceClassification.from_pretrained(
                    model_dir, dtype=_DTYPES[dtype], trust_remote_code=False
                )
        except Exception as exc:
            raise ModelUnavailable(f"{model_dir}: cannot load the weights ({exc})") from exc
        net.to(dev).eval()
        scorers.append(TransformersScorer(net, family, dev, pad_id))
    return scorers


def load_model(
    model: str, *, device: str = "auto", dtype: str = "auto", backend: str = "auto",
    cache_dir: str | None = None, scoring: str = "auto", default_instruction: str | None = None,
) -> LoadedModel:
    """Tokenizer plus one scorer per device, ready to serve. Runs no code from the model."""
    model_dir = resolve_model_dir(model, cache_dir)
    config = read_config(model_dir)
    try:
        recipe = detect_scoring(config, [model, str(model_dir)], scoring)
    except UnknownScoring as exc:
        raise ModelUnavailable(f"{model_dir}: {exc}") from exc
    devices = resolve_devices(device)
    if recipe != "classifier":
        return load_decoder(model_dir, config, recipe, devices, dtype, backend,
                            default_instruction)
    family = model_family(config)
    chosen = ("native" if family else "transformers") if backend == "auto" else backend
    if chosen == "native" and family is None:
        raise ModelUnavailable(
            f"{model_dir}: model_type {config.get('model_type')!r} has no native engine (it"
            " serves XLM-RoBERTa and BERT); use --backend transformers or auto"
        )
    labels = config.get("num_labels", len(config.get("id2label", {})) or 2)
    if labels != 1:
        raise ModelUnavailable(
            f"{model_dir}: the model has {labels} labels; a reranker needs a one-label"
            " cross-encoder (num_labels = 1)"
        )
    dtype_name, probe = _dtype(dtype, devices, config)
    tokenizer = load_tokenizer(model_dir)
    layout = family or pair_layout(tokenizer, model_dir)
    encoder = PairEncoder(tokenizer, layout, max_input_length(config, layout, tokenizer))
    scorers: list[Scorer]
    attention: str
    if family is not None and chosen == "native":
        native = load_native(model_dir, config, family, devices, dtype_name)
        scorers, attention = list(native), native[0].attention
    else:
        stock = load_transformers(
            model_dir, config, layout, devices, dtype_name, tokenizer.pad_token_id
        )
        scorers, attention = list(stock), f"{stock[0].model.config._attn_implementation}-padded"
    log.info(
        "loaded %s (%s, max input %d tokens) on %s in %s: backend %s, attention %s",
        model_dir, config.get("model_type") or family, encoder.max_length, ",".join(devices),
        dtype_name, chosen, attention,
    )
    return LoadedModel(
        encoder=encoder, scorers=scorers, model_dir=model_dir, dtype=dtype_name,
        devices=devices, backend=chosen, attention=attention, dtype_probe=probe,
    )


def _dtype(dtype: str, devices: list[str], config: dict[str, Any]
           ) -> tuple[str, dict[str, float] | None]:
    dtype_name, probe = resolve_dtype(dtype, devices, config)
    if probe is not None:
        log.info(
            "dtype auto: %s (matmul at the model's shapes: %s)", dtype_name,
            ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in probe.items()),
        )
    return dtype_name, probe


def decoder_max_length(config: dict[str, Any], tokenizer: Any) -> int:
    """8192, or less where the position table or the tokenizer says so."""
    limit = min(DECODER_MAX_LENGTH, int(config.get("max_position_embeddings", DECODER_MAX_LENGTH)))
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        return tok_limit
    return limit


def load_decoder(
    model_dir: Path, config: dict[str, Any], scoring: str, devices: list[str], dtype: str,
    backend: str, default_instruction: str | None,
) -> LoadedModel:
    """A decoder reranker: its recipe's prompts, and the native packed engine for the Qwen2
    and Qwen3 families (transformers' AutoModelForCausalLM for others, such as Gemma)."""
    recipe = RECIPES[scoring]  # type: ignore[index]
    native = DECODER_FAMILIES.get(str(config.get("model_type"))) is not None
    chosen = ("native" if native else "transformers") if backend == "auto" else backend
    if chosen == "native" and not native:
        raise ModelUnavailable(
            f"{model_dir}: model_type {config.get('model_type')!r} has no native decoder engine"
            " (it serves Qwen2 and Qwen3); use --backend transformers or auto"
        )
    dtype_name, probe = _dtype(dtype, devices, config)
    tokenizer = load_tokenizer(model_dir)
    encoder = PromptEncoder(tokenizer, recipe, decoder_max_length(config, tokenizer),
                            default_instruction)
    rows = [encoder.positive_id] if encoder.negative_id is None else [
        encoder.positive_id, encoder.negative_id]
    scorers: list[Scorer]
    if chosen == "native":
        scorers = list(load_native_decoder(model_dir, config, rows, devices, dtype_name))
        attention = scorers[0].attention  # type: ignore[attr-defined]
    else:
        scorers = list(load_causal_lm(model_dir, rows, devices, dtype_name,
                                      tokenizer.pad_token_id or 0))
        attention = "sdpa-padded"
    log.info(
        "loaded %s (%s, scoring %s, max input %d tokens) on %s in %s: backend %s, attention %s",
        model_dir, config.get("model_type"), scoring, encoder.max_length, ",".join(devices),
        dtype_name, chosen, attention,
    )
    return LoadedModel(
        encoder=encoder, scorers=scorers, model_dir=model_dir, dtype=dtype_name,
        devices=devices, backend=chosen, attention=attention, dtype_probe=probe,
        scoring=scoring,
    )


def load_native_decoder(
    model_dir: Path, config: dict[str, Any], rows: list[int], devices: list[str], dtype: str
) -> list[NativeScorer]:
    """Native Qwen2/Qwen3 decoders, one per device, with the LM-head rows `rows` only."""
    try:
        cfg = DecoderConfig.from_hf(config)
    except (ValueError, KeyError) as exc:
        raise ModelUnavailable(f"{model_dir}: cannot load the checkpoint: {exc}") from exc
    nets = native_replicas(model_dir, lambda: DecoderReranker(cfg, len(rows)),
                           lambda: to_decoder_native(read_state_dict(model_dir), cfg, rows),
                           devices, dtype, extra_ok=False)
    scorers: list[NativeScorer] = []
    for net, dev in zip(nets, devices, strict=True):
        check = functools.partial(causal_self_check, dev, _DTYPES[dtype], cfg.num_heads,
                                  cfg.num_kv_heads, cfg.head_dim)
        path = checked_attention(dev, _DTYPES[dtype], cfg.num_heads, cfg.head_dim, check,
                                 causal=True)
        scorers.append(NativeScorer(net, dev, path))
    return scorers


def load_causal_lm(
    model_dir: Path, rows: list[int], devices: list[str], dtype: str, pad_id: int
) -> list[CausalLMScorer]:
    from transformers import AutoModelForCausalLM

    scorers: list[CausalLMScorer] = []
    for dev in devices:
        try:
            net = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=_DTYPES[dtype], attn_implementation="sdpa",
                trust_remote_code=False,
            )
        except Exception as exc:
            raise ModelUnavailable(f"{model_dir}: cannot load the weights ({exc})") from exc
        net.to(dev).eval()
        scorers.append(CausalLMScorer(net, rows, dev, pad_id))
    return scorers
