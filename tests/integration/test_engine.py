"""The native engine against stock transformers, in-process: both namings, BERT, all lengths."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from app.engine import modeling
from app.engine.loading import LoadedModel, load_model
from app.engine.modeling import Linear
from app.errors import ModelUnavailable
from app.testmodel import write_test_model


def _reference_logits(stock_dir: str, seqs: list[list[int]], splits: list[int]) -> np.ndarray:
    """Each sequence alone through stock transformers, eager attention, float32."""
    model = AutoModelForSequenceClassification.from_pretrained(
        stock_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    is_bert = model.config.model_type not in ("xlm-roberta", "roberta")
    with_types = getattr(model.config, "type_vocab_size", 0) > 0
    out = []
    with torch.inference_mode():
        for ids, split in zip(seqs, splits, strict=True):
            types = [int(is_bert and i >= split) for i in range(len(ids))]
            extra = {"token_type_ids": torch.tensor([types])} if with_types else {}
            logit = model(input_ids=torch.tensor([ids]), **extra)
            out.append(float(logit.logits[0, 0]))
    return np.array(out, dtype=np.float32)


def _mixed_batch(model_dir: str, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Sequences of every length class from 1 token to the model's maximum, shuffled."""
    loaded = load_model(model_dir, device="cpu", dtype="float32")
    enc = loaded.encoder
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    rng = random.Random(seed)
    specials = {0, 1, 2, 3, 4}
    tokens = [t for t in range(vocab) if t not in specials]
    lengths = [1, 2, 3, 7, 16, 31, 64, 100, enc.max_length - 1, enc.max_length]
    seqs, splits = [], []
    for n in lengths:
        body = rng.choices(tokens, k=max(0, n - 2))
        seqs.append([enc.cls_id, *body, enc.sep_id][:n])
        splits.append(rng.randint(1, max(1, n - 1)))
    order = list(range(len(seqs)))
    rng.shuffle(order)
    return [seqs[i] for i in order], [splits[i] for i in order]


@pytest.mark.parametrize(
    ("model_fixture", "stock_fixture", "backend"),
    [
        ("xlmr_dir", "xlmr_dir", "native"),
        ("jina_dir", "xlmr_dir", "native"),  # same weights, jina naming
        ("jina_bin_dir", "xlmr_dir", "native"),  # pytorch_model.bin only
        ("bert_dir", "bert_dir", "native"),
        ("xlmr_dir", "xlmr_dir", "transformers"),
        ("bert_dir", "bert_dir", "transformers"),
        ("electra_dir", "electra_dir", "auto"),  # other families: the transformers backend
        ("distilbert_dir", "distilbert_dir", "auto"),
    ],
)
def test_fp32_parity_on_mixed_lengths(
    model_fixture: str, stock_fixture: str, backend: str, request: pytest.FixtureRequest
) -> None:
    model_dir = request.getfixturevalue(model_fixture)
    stock_dir = request.getfixturevalue(stock_fixture)
    seqs, splits = _mixed_batch(model_dir)
    loaded = load_model(model_dir, device="cpu", dtype="float32", backend=backend)
    assert loaded.backend == (backend if backend != "auto" else "transformers")
    got = loaded.scorers[0].score(seqs, splits)
    want = _reference_logits(stock_dir, seqs, splits)
    sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))  # noqa: E731
    assert np.abs(sig(got) - sig(want)).max() < 1e-5, f"\ngot  {got}\nwant {want}"
    assert np.abs(got - want).max() < 1e-4, f"\ngot  {got}\nwant {want}"


def test_bf16_stays_within_2e2_of_fp32(jina_dir: str) -> None:
    seqs, splits = _mixed_batch(jina_dir, seed=3)
    fp32 = load_model(jina_dir, device="cpu", dtype="float32").scorers[0].score(seqs, splits)
    bf16_model = load_model(jina_dir, device="cpu", dtype="bfloat16")
    assert bf16_model.dtype == "bfloat16"
    bf16 = bf16_model.scorers[0].score(seqs, splits)
    assert bf16.dtype == np.float32
    sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))  # noqa: E731
    assert np.abs(sig(bf16) - sig(fp32)).max() < 2e-2, f"\nbf16 {bf16}\nfp32 {fp32}"


def _linears(loaded: LoadedModel) -> list[Linear]:
    model: torch.nn.Module = loaded.scorers[0].model  # type: ignore[attr-defined]
    return [m for m in model.modules() if isinstance(m, Linear)]


def test_bf16_linears_fused_give_the_same_bits(jina_dir: str) -> None:
    seqs, splits = _mixed_batch(jina_dir, seed=4)
    loaded = load_model(jina_dir, device="cpu", dtype="bfloat16")
    linears = _linears(loaded)
    assert linears and all(m.fused for m in linears)  # this CPU build has oneDNN
    fused = loaded.scorers[0].score(seqs, splits)
    for m in linears:
        m.fused = False
    assert np.array_equal(fused, loaded.scorers[0].score(seqs, splits))


def test_fp32_linears_stay_aten(jina_dir: str) -> None:
    assert not any(m.fused for m in _linears(load_model(jina_dir, device="cpu",
                                                        dtype="float32")))


def test_fused_linears_not_used_when_their_result_differs(
    jina_dir: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = modeling.onednn_linear
    monkeypatch.setattr(modeling, "onednn_linear", lambda x, w, b: real(x, w, b) * 1.01)
    with caplog.at_level(logging.WARNING, logger="app.engine.native"):
        loaded = load_model(jina_dir, device="cpu", dtype="bfloat16")
    assert not any(m.fused for m in _linears(loaded))
    assert "fused oneDNN form is not usable here (differs from F.linear by up to" in caplog.text


def test_jina_checkpoint_has_no_code_and_no_model_type(jina_dir: str) -> None:
    assert not list(Path(jina_dir).glob("*.py"))
    config = json.loads((Path(jina_dir) / "config.json").read_text())
    assert "model_type" not in config and "auto_map" in config
    loaded = load_model(jina_dir, device="cpu", dtype="float32")
    assert loaded.backend == "native" and loaded.attention == "sdpa-per-sequence"
    assert loaded.encoder.max_length == 128


def test_transformers_backend_refuses_custom_code_checkpoints(jina_dir: str) -> None:
    with pytest.raises(ModelUnavailable, match="--backend native"):
        load_model(jina_dir, device="cpu", dtype="float32", backend="transformers")


def _corrupt_copy(src: str, dst: Path, edit: str) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    if edit == "drop":
        del tensors["roberta.encoder.layers.1.mlp.fc2.weight"]
    else:
        tensors["classifier.dense.weight"] = tensors["classifier.dense.weight"][:, :-1].clone()
    save_file(tensors, dst / "model.safetensors")
    return dst


def test_a_missing_tensor_fails_at_load_naming_it(jina_dir: str, tmp_path: Path) -> None:
    broken = _corrupt_copy(jina_dir, tmp_path / "broken", "drop")
    with pytest.raises(ModelUnavailable, match=r"missing 1 tensor\(s\): layers\.1\.fc2\.weight"):
        load_model(str(broken), device="cpu", dtype="float32")


def test_a_wrong_shape_fails_at_load_naming_it(jina_dir: str, tmp_path: Path) -> None:
    broken = _corrupt_copy(jina_dir, tmp_path / "bad-shape", "shape")
    with pytest.raises(ModelUnavailable, match=r"head\.dense\.weight has shape"):
        load_model(str(broken), device="cpu", dtype="float32")


def test_a_directory_without_weights_fails_clearly(tmp_path: Path, jina_dir: str) -> None:
    shutil.copytree(jina_dir, tmp_path / "empty")
    (tmp_path / "empty" / "model.safetensors").unlink()
    with pytest.raises(ModelUnavailable, match=r"neither model\.safetensors nor pytorch"):
        load_model(str(tmp_path / "empty"), device="cpu", dtype="float32")


def test_the_cpu_kernel_scores_like_sdpa_in_bf16(tmp_path: Path) -> None:
    """A model of head size 64 in bf16: the own CPU kernel and PyTorch's SDPA give the same
    scores within bf16 rounding, both near the float32 reference."""
    from app.engine import cpu_kernel

    try:
        cpu_kernel.load()
    except cpu_kernel.KernelUnavailable as exc:
        pytest.skip(f"the kernel cannot run on this host: {exc}")
    model_dir = str(write_test_model(tmp_path / "head64", hidden=128, heads=2, layers=2))
    seqs, splits = _mixed_batch(model_dir, seed=5)
    want = _reference_logits(model_dir, seqs, splits)
    scorer = load_model(model_dir, device="cpu", dtype="bfloat16").scorers[0]
    scores = {}
    for path in ("avx512-bf16", "sdpa-per-sequence"):
        scorer.attention = path  # type: ignore[attr-defined]
        scores[path] = scorer.score(seqs, splits)
    sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))  # noqa: E731
    ours, theirs = sig(scores["avx512-bf16"]), sig(scores["sdpa-per-sequence"])
    assert np.abs(ours - theirs).max() < 1e-2, f"\nkernel {ours}\nsdpa   {theirs}"
    assert np.abs(ours - sig(want)).max() <= np.abs(theirs - sig(want)).max() * 1.5 + 2e-3
