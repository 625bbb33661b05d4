"""The error table and settings validation."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from app import errors
from app.config import Settings


def test_every_domain_error_has_a_status() -> None:
    for cls in errors.RerankError.__subclasses__():
        assert cls in errors.ERROR_TABLE, cls


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.InvalidRequest("x"), 422),
        (errors.ModelNotServed("x"), 404),
        (errors.RequestTooLarge("x"), 413),
        (errors.Unauthorized("x"), 401),
        (errors.QueueFull("x", retry_after_s=2.4), 429),
        (errors.NotReady("x", retry_after_s=0.2), 503),
        (errors.InferenceFailed(), 500),
    ],
)
def test_error_parts(exc: errors.RerankError, status: int) -> None:
    got_status, headers, body = errors.error_response_parts(exc)
    assert got_status == status
    assert body == {"detail": exc.detail}
    if exc.retry_after_s is not None:
        assert int(headers["retry-after"]) >= max(1, exc.retry_after_s)
        assert int(headers["retry-after-ms"]) == math.ceil(exc.retry_after_s * 1000)
    if status == 401:
        assert headers["www-authenticate"] == "Bearer"


def test_env_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANKER_API_KEYS", "a, b,,c")
    monkeypatch.setenv("RERANKER_MAX_BATCH_TOKENS", "1234")
    monkeypatch.setenv("RERANKER_DEVICE", "cuda:0,cuda:1")
    s = Settings()
    assert s.api_keys == ["a", "b", "c"]
    assert s.max_batch_tokens == 1234
    assert s.device == "cuda:0,cuda:1"
    assert Settings(api_keys=["z"]).api_keys == ["z"]  # explicit values win over env


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:0,cpu", "cuda:x"])
def test_bad_device_is_rejected(device: str) -> None:
    with pytest.raises(ValidationError):
        Settings(device=device)


def test_served_name_and_aliases() -> None:
    s = Settings(model="jinaai/jina-reranker-v2-base-multilingual")
    assert s.served_name == "jinaai/jina-reranker-v2-base-multilingual"
    assert s.model_index("jina-reranker-v2-base-multilingual") == 0
    assert s.model_index(None) == 0 and s.model_index("jina-reranker-v1-base-en") is None
    mine = Settings(served_model_name="mine")
    assert mine.model_index("mine") == 0
    assert mine.model_index("jina-reranker-v2-base-multilingual") is None


def test_several_models_with_names_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(model=["/m/jina", "Qwen/Qwen3-Reranker-0.6B"], served_model_name=["jina"],
                 alias=["jina-reranker-v1-base-en=jina", "qwen=Qwen3-Reranker-0.6B"])
    assert s.served_names == ["jina", "Qwen/Qwen3-Reranker-0.6B"]
    assert [s.model_index(n) for n in ("jina", "jina-reranker-v1-base-en", None)] == [0, 0, 0]
    assert [s.model_index(n) for n in ("Qwen3-Reranker-0.6B", "qwen")] == [1, 1]
    assert s.for_model(1).model == ["Qwen/Qwen3-Reranker-0.6B"]
    per_model = Settings(model=["/a", "/b"], scoring="auto,qwen3-reranker",
                         default_instruction=["x, with a comma"])
    assert per_model.for_model(1).scoring == ["qwen3-reranker"]
    assert per_model.for_model(0).default_instruction == ["x, with a comma"]
    assert per_model.for_model(1).default_instruction == []
    monkeypatch.setenv("RERANKER_DEFAULT_INSTRUCTION", '["one", "two, three"]')
    assert Settings(model=["/a", "/b"]).default_instruction == ["one", "two, three"]
    monkeypatch.setenv("RERANKER_DEFAULT_INSTRUCTION", "Judge, briefly")
    assert Settings().default_instruction == ["Judge, briefly"]
    monkeypatch.delenv("RERANKER_DEFAULT_INSTRUCTION")
    monkeypatch.setenv("RERANKER_MODEL", "/a, /b")
    monkeypatch.setenv("RERANKER_SERVED_MODEL_NAME", "a,b")
    assert Settings().served_names == ["a", "b"]


def test_a_name_reaches_the_model_it_names_exactly() -> None:
    s = Settings(model=["/a", "/b", "/c"], served_model_name=["org/bge", "bge", "x/rr"],
                 alias=["r=bge"])
    assert s.model_index("bge") == 1 and s.model_index("r") == 1  # exact beats a last part
    assert s.model_index("org/bge") == 0 and s.model_index("rr") == 2
    twins = Settings(model=["/a", "/b"], served_model_name=["a/bge", "b/bge"])
    assert twins.model_index("bge") is None  # ambiguous: a 404 listing the names
    assert twins.model_index("b/bge") == 1


@pytest.mark.parametrize(("kwargs", "words"), [
    (dict(model=["/a", "/b"], served_model_name=["x", "x"]), "same name"),
    (dict(model=["/a"], served_model_name=["x", "y"]), "2 values for 1 models"),
    (dict(model=["/a"], alias=["nonsense"]), "ALIAS=NAME"),
    (dict(model=["/a"], alias=["v1=nobody"]), "names no served model"),
    (dict(model=[]), "at least one model"),
    (dict(model=["/a"], scoring=["auto", "classifier"]), "scoring: 2 values for 1 models"),
])
def test_bad_model_lists_are_refused(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        Settings(**kwargs)
