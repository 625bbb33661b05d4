"""`reranker serve` and `reranker make-test-model`. Every serve flag has a RERANKER_* env twin."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.allocator import AllocatorUnavailable
from app.allocator import ensure as ensure_allocator
from app.config import Settings
from app.errors import ModelUnavailable

_SERVE_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--model", "model", {"action": "append"}),
    ("--served-model-name", "served_model_name", {"action": "append"}),
    ("--alias", "alias", {"action": "append"}),
    ("--host", "host", {}),
    ("--port", "port", {"type": int}),
    ("--metrics-port", "metrics_port", {"type": int}),
    ("--device", "device", {}),
    ("--dtype", "dtype", {"choices": ["auto", "float32", "bfloat16", "float16"]}),
    ("--backend", "backend", {"choices": ["auto", "native", "transformers"]}),
    ("--scoring", "scoring", {"action": "append", "choices": [
        "auto", "classifier", "qwen3-reranker", "mxbai-rerank-v2", "bge-reranker-gemma"]}),
    ("--default-instruction", "default_instruction", {"action": "append"}),
    ("--max-batch-tokens", "max_batch_tokens", {"type": int}),
    ("--max-wait-ms", "max_wait_ms", {"type": float}),
    ("--max-queue", "max_queue", {"type": int}),
    ("--max-queue-time", "max_queue_time_s", {"type": float}),
    ("--max-documents", "max_documents", {"type": int}),
    ("--max-body-bytes", "max_body_bytes", {"type": int}),
    ("--max-document-chars", "max_document_chars", {"type": int}),
    ("--max-query-chars", "max_query_chars", {"type": int}),
    ("--max-request-tokens", "max_request_tokens", {"type": int}),
    ("--request-timeout", "request_timeout_s", {"type": float}),
    ("--shutdown-grace", "shutdown_grace_s", {"type": float}),
    ("--api-key", "api_keys", {"action": "append"}),
    ("--docs", "docs", {"choices": ["on", "off"]}),
    ("--hf-cache-dir", "hf_cache_dir", {}),
    ("--log-level", "log_level", {}),
    ("--log-format", "log_format", {"choices": ["text", "json"]}),
    ("--allocator", "allocator", {"choices": ["auto", "tcmalloc", "system"]}),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reranker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the reranking service. Flags override their RERANKER_* env twins.",
    )
    for flag, field, extra in _SERVE_FLAGS:
        info = Settings.model_fields[field]
        env = "RERANKER_" + field.upper()
        help_text = f"{info.description} [env {env}; default {info.default}]"
        if info.default_factory is not None:  # list settings: repeatable flags
            help_text = f"{info.description} [env {env}]"
        serve.add_argument(flag, dest=field, default=None, help=help_text, **extra)

    make = sub.add_parser(
        "make-test-model",
        help="write a small random reranker (offline), to try the service without downloads",
    )
    make.add_argument("out_dir", help="directory to write")
    make.add_argument(
        "--family", choices=["xlm-roberta", "bert", "qwen3", "qwen2", "gemma"],
        default="xlm-roberta",
        help="a cross-encoder (xlm-roberta, bert) or a decoder reranker: qwen3 (as"
        " Qwen3-Reranker), qwen2 (as mxbai-rerank-v2), gemma (as bge-reranker-v2-gemma); serve"
        " a decoder with --scoring, or write it into a directory named after its model",
    )
    make.add_argument("--max-length", type=int, default=512)
    make.add_argument(
        "--naming", choices=["stock", "jina"], default="stock",
        help="jina: save like jina-reranker-v2 (no model_type, flash-attention tensor names);"
        " xlm-roberta only",
    )
    make.add_argument(
        "--full-size", action="store_true",
        help="jina-reranker-v2's shapes (12 layers, hidden 768, vocab 250002), for benchmarks",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "make-test-model":
        return make_test_model(args)
    overrides = {f: getattr(args, f) for _, f, _ in _SERVE_FLAGS if getattr(args, f) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(map(str, err["loc"]))
            print(f"reranker: invalid {where}: {err['msg']}", file=sys.stderr)
        return 2
    if argv is None:  # a real process (not a test calling main): the allocator can be swapped
        try:
            allocator = ensure_allocator(settings.allocator, ["-m", "app.cli", *sys.argv[1:]])
        except AllocatorUnavailable as exc:
            print(f"reranker: {exc}", file=sys.stderr)
            return 2
    else:
        allocator = "unchanged (in-process call)"
    return serve(settings, allocator)


def make_test_model(args: argparse.Namespace) -> int:
    import tempfile

    from app.testmodel import (
        DECODER_RERANKER_NAMES,
        JINA_V2_SHAPE,
        write_decoder_test_model,
        write_jina_checkpoint,
        write_test_model,
    )

    if args.family in DECODER_RERANKER_NAMES:
        if args.naming == "jina" or args.full_size:
            print("reranker: --naming jina and --full-size are for cross-encoders",
                  file=sys.stderr)
            return 2
        out = write_decoder_test_model(args.out_dir, args.family, max_length=args.max_length)
        print(f"wrote a random {args.family} decoder reranker (scores like"
              f" {DECODER_RERANKER_NAMES[args.family]}) to {out}")
        return 0
    if args.naming == "jina" and args.family != "xlm-roberta":
        print("reranker: --naming jina is for --family xlm-roberta", file=sys.stderr)
        return 2
    size: dict[str, int] = JINA_V2_SHAPE if args.full_size else dict(hidden=32, layers=2, heads=4)

    def write(out_dir: str) -> Path:
        return write_test_model(out_dir, args.family, max_length=args.max_length, **size)

    if args.naming == "jina":
        with tempfile.TemporaryDirectory() as stock:
            out = write_jina_checkpoint(write(stock), args.out_dir)
    else:
        out = write(args.out_dir)
    print(f"wrote a random {args.family} cross-encoder ({args.naming} naming) to {out}")
    return 0


def serve(settings: Settings, allocator: str) -> int:
    import logging
    import signal

    import uvicorn

    from app.engine.loading import local_model_dir
    from app.logs import configure_logging
    from app.main import create_app
    from app.server import DrainingServer

    configure_logging(settings.log_level, settings.log_format)
    logging.getLogger("app.cli").info("memory allocator: %s", allocator)
    if settings.log_format == "json":  # progress bars would break the one-object-per-line log
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:  # a mistyped path fails at once; a hub download happens after the listener is up
        for model in settings.model:
            local_model_dir(model)
    except ModelUnavailable as exc:
        print(f"reranker: {exc}", file=sys.stderr)
        return 2

    failure: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_fatal(exc: BaseException) -> None:
        failure.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        access_log=False,  # app.access logs each request, with its request id
        log_config=None,  # uvicorn's loggers go through configure_logging's handler
    )
    server = DrainingServer(config, app.state.runtime)
    # uvicorn re-raises the signal that stopped it once it has drained; with these handlers a
    # SIGTERM/SIGINT shutdown that drained cleanly ends the process with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if failure:
        print(f"reranker: {failure[0]}", file=sys.stderr)
        return 2 if isinstance(failure[0], ModelUnavailable) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
