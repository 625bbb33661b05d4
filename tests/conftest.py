"""Session fixtures: tiny random models generated locally, and live servers on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.config import Settings
from app.main import create_app
from app.runtime import Loader, default_loader
from app.server import DrainingServer
from app.testmodel import (
    DECODER_RERANKER_NAMES,
    write_decoder_test_model,
    write_jina_checkpoint,
    write_test_model,
)


@pytest.fixture(scope="session")
def xlmr_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_test_model(tmp_path_factory.mktemp("xlmr"), "xlm-roberta", max_length=128))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_test_model(tmp_path_factory.mktemp("bert"), "bert", max_length=128))


@pytest.fixture(scope="session")
def decoder_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each family's tiny model, in a directory named after the model it stands for (the
    recipe is detected from it, as from a hub id)."""
    root = tmp_path_factory.mktemp("decoders")
    return {family: str(write_decoder_test_model(root / f"{name}-tiny", family))  # type: ignore[arg-type]
            for family, name in DECODER_RERANKER_NAMES.items()}


@pytest.fixture(scope="session")
def jina_dir(xlmr_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The XLM-R test model's weights saved in jina-reranker-v2's naming (no model_type)."""
    return str(write_jina_checkpoint(xlmr_dir, tmp_path_factory.mktemp("jina")))


@pytest.fixture(scope="session")
def jina_bin_dir(xlmr_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_jina_checkpoint(xlmr_dir, tmp_path_factory.mktemp("jina-bin"), as_bin=True))


class LiveServer:
    """A real uvicorn server in a thread, on a free loopback port."""

    def __init__(
        self,
        settings: Settings,
        loader: Loader = default_loader,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.fatal: list[BaseException] = []

        def fatal(exc: BaseException) -> None:
            self.fatal.append(exc)
            if on_fatal is not None:
                on_fatal(exc)

        self.app = create_app(settings, loader=loader, on_fatal=fatal)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=5)
        self.server = DrainingServer(config, self.app.state.runtime)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.runtime.phase != "failed":
            try:
                r = httpx.get(f"{self.url}/ready" if wait_ready else f"{self.url}/health")
                if r.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not become ready: phase={self.runtime.phase}")

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 60)
        return httpx.Client(base_url=self.url, **kwargs)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of one sample from /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in (labels or {}).items()
                ):
                    return float(sample.value)
        return 0.0


ServerFactory = Callable[..., LiveServer]


def _servers() -> Iterator[ServerFactory]:
    """A factory of live servers; every server it made is stopped when the generator ends."""
    started: list[LiveServer] = []

    def make(model: str | list[str], loader: Loader = default_loader, wait_ready: bool = True,
             **overrides: Any) -> LiveServer:
        settings = Settings(**{"model": model, "device": "cpu", "dtype": "float32", **overrides})
        server = LiveServer(settings, loader).start(wait_ready=wait_ready)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture()
def server_factory() -> Iterator[ServerFactory]:
    """Servers with a test's own settings, stopped when the test ends."""
    yield from _servers()


@pytest.fixture(scope="module")
def module_servers() -> Iterator[ServerFactory]:
    """Servers that one test module's tests share, stopped when the module ends."""
    yield from _servers()


@pytest.fixture(scope="session")
def shared_servers() -> Iterator[ServerFactory]:
    """The few servers many tests share (one per test model), stopped at the end."""
    yield from _servers()


@pytest.fixture(scope="session")
def xlmr_server(shared_servers: ServerFactory, xlmr_dir: str) -> LiveServer:
    return shared_servers(xlmr_dir, served_model_name="test-xlmr")


@pytest.fixture(scope="session")
def bert_server(shared_servers: ServerFactory, bert_dir: str) -> LiveServer:
    return shared_servers(bert_dir, served_model_name="test-bert")


@pytest.fixture(scope="session")
def jina_server(shared_servers: ServerFactory, jina_dir: str) -> LiveServer:
    return shared_servers(jina_dir, served_model_name="test-jina")


@pytest.fixture()
def client(xlmr_server: LiveServer) -> Iterator[httpx.Client]:
    with xlmr_server.client() as c:
        yield c



def _other_family(bert_dir: str, out: Path, kind: str) -> str:
    """A stock one-label cross-encoder of a family the native engine does not cover."""
    import shutil

    import torch
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        ElectraConfig,
        ElectraForSequenceClassification,
    )

    shutil.copytree(bert_dir, out, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    torch.manual_seed(1)
    vocab = len(json.loads((Path(bert_dir) / "tokenizer.json").read_text())["model"]["vocab"])
    model: Any
    if kind == "electra":
        model = ElectraForSequenceClassification(ElectraConfig(
            vocab_size=vocab, embedding_size=32, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
            num_labels=1, initializer_range=0.2,
        ))
    else:
        model = DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
            max_position_embeddings=128, num_labels=1, initializer_range=0.2,
        ))
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def electra_dir(bert_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _other_family(bert_dir, tmp_path_factory.mktemp("e") / "electra", "electra")


@pytest.fixture(scope="session")
def distilbert_dir(bert_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _other_family(bert_dir, tmp_path_factory.mktemp("d") / "distilbert", "distilbert")


@pytest.fixture(scope="session")
def electra_server(shared_servers: ServerFactory, electra_dir: str) -> LiveServer:
    return shared_servers(electra_dir, served_model_name="test-electra")
