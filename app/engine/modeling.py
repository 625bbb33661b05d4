"""A native cross-encoder for the XLM-RoBERTa and BERT families that runs packed batches.

A batch is one flat `[total_tokens, hidden]` tensor plus `cu_seqlens`: embeddings, linears,
LayerNorm and GELU touch real tokens only. Attention is the one op that needs sequences apart:
- `flash-attn-varlen` (CUDA, flash-attn installed) and `torch-varlen` (CUDA, PyTorch's own
  varlen flash kernel) take the packed layout as is;
- `avx512-bf16` (CPU, bf16, head size 64) is this project's own kernel
  (app/engine/cpu_kernel.py), over twice as fast as PyTorch's on a Zen 4;
- `sdpa-per-sequence` (CPU) runs SDPA once per sequence on views of the packed tensor: no
  padding at all, and 2-3x faster on CPU than one masked call over a padded batch;
- `sdpa-padded` (CUDA fallback) builds a padded copy inside the attention call only.
The head reads one token per sequence, so the last layer computes keys and values for every
token but its query, attention output and MLP for that token alone. On CPU in bf16 the linears
add their bias inside oneDNN's product (`Linear`): the same bits as `F.linear`, less memory
traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from app.engine import cpu_kernel
from app.engine.tokenize import Family

AttentionPath = Literal["flash-attn-varlen", "torch-varlen", "avx512-bf16", "sdpa-padded",
                        "sdpa-per-sequence"]

_GELU_APPROX = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


@dataclass(frozen=True)
class EncoderConfig:
    family: Family
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    pad_token_id: int
    layer_norm_eps: float
    gelu_approximate: str

    @classmethod
    def from_hf(cls, config: dict[str, Any], family: Family) -> EncoderConfig:
        """Sizes straight from config.json (stock or jina's, which has no model_type)."""
        act = config.get("hidden_act", "gelu")
        if act not in _GELU_APPROX:
            raise ValueError(f"hidden_act {act!r} is not supported (gelu, gelu_new)")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} is not divisible by {heads} heads")
        return cls(
            family=family,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            intermediate_size=int(config["intermediate_size"]),
            max_positions=int(config["max_position_embeddings"]),
            type_vocab_size=int(config.get("type_vocab_size", 2 if family == "bert" else 1)),
            pad_token_id=int(config.get("pad_token_id", 1 if family == "xlm-roberta" else 0)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            gelu_approximate=_GELU_APPROX[act],
        )

    @property
    def position_offset(self) -> int:
        """XLM-R numbers positions from padding_idx + 1; BERT from 0."""
        return self.pad_token_id + 1 if self.family == "xlm-roberta" else 0


@dataclass(frozen=True)
class PackedBatch:
    """Flat token tensors of a batch plus the index maps attention needs."""

    input_ids: torch.Tensor  # [T] int64
    position_ids: torch.Tensor  # [T] int64
    token_type_ids: torch.Tensor | None  # [T] int64
    cu_seqlens: torch.Tensor  # [B + 1] int32
    max_seqlen: int
    spans: list[tuple[int, int]]  # host-side [start, end) of each sequence
    batch_index: torch.Tensor  # [T] int64: which sequence each token belongs to
    seq_index: torch.Tensor  # [T] int64: its position inside that sequence
    key_mask: torch.Tensor | None  # [B, 1, 1, L] bool, None when all lengths are equal


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x: torch.Tensor = self.word_embeddings(batch.input_ids)
        x = x + self.position_embeddings(batch.position_ids)
        if batch.token_type_ids is None:
            return x + self.token_type_embeddings.weight[0]
        types: torch.Tensor = self.token_type_embeddings(batch.token_type_ids)
        return x + types


class Linear(nn.Linear):
    """`nn.Linear`, or on CPU (`fused`, set by app/engine/native.py once its self-check passed)
    one oneDNN inner product with the bias added inside it. ATen's CPU `addmm` first copies the
    bias into every output row and then accumulates the product onto that copy: a write and a
    read of the whole output that the fused form does not do (bf16: the same bits, ~4% more
    throughput for the whole model on a Zen 4, `python -m bench.engine --linear-ablation`)."""

    fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.part(x, 0, self.out_features)

    def part(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Output features `start:stop` only (the fused QKV projection split by use)."""
        whole = (start, stop) == (0, self.out_features)
        weight = self.weight if whole else self.weight[start:stop]
        bias = self.bias if whole or self.bias is None else self.bias[start:stop]
        if self.fused:
            return onednn_linear(x, weight, bias)
        return F.linear(x, weight, bias)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                  ) -> torch.Tensor:
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return out


class Layer(nn.Module):
    """Post-LayerNorm transformer block with a fused QKV projection."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.gelu_approximate = cfg.gelu_approximate
        self.Wqkv = Linear(h, 3 * h)
        self.out_proj = Linear(h, h)
        self.norm1 = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.fc1 = Linear(h, cfg.intermediate_size)
        self.fc2 = Linear(cfg.intermediate_size, h)
        self.norm2 = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, batch: PackedBatch, path: AttentionPath) -> torch.Tensor:
        qkv = self.Wqkv(x).view(x.shape[0], 3, self.num_heads, -1)
        attn = attention(qkv, batch, path).reshape(x.shape)
        return self._mix(attn, x)

    def forward_first_tokens(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """The layer's output at each sequence's first token only, which is all the head reads
        of the last layer: keys and values for every token, the query and everything after
        attention for one row per sequence (about a twelfth of the model's work saved)."""
        hidden, rows = x.shape[1], batch.cu_seqlens[:-1].long()
        q = self.Wqkv.part(x[rows], 0, hidden).view(len(rows), self.num_heads, -1)
        k, v = self.Wqkv.part(x, hidden, 3 * hidden).view(
            x.shape[0], 2, self.num_heads, -1).unbind(1)
        attn = one_query_attention(q, k, v, batch).reshape(len(rows), hidden)
        return self._mix(attn, x[rows])

    def _mix(self, attn: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # In-place ops on the fresh outputs of each linear: the same arithmetic (a + b is
        # b + a exactly), but no new [tokens, 3072] buffer per op, which on a CPU costs page
        # faults each time (GELU in place ran ~40% faster).
        h = self.out_proj(attn)
        h += x
        x = self.norm1(h)
        mlp = self.fc1(x)
        torch.ops.aten.gelu_(mlp, approximate=self.gelu_approximate)
        h = self.fc2(mlp)
        h += x
        out: torch.Tensor = self.norm2(h)
        return out


class Head(nn.Module):
    """logit = out_proj(tanh(dense(h[CLS]))): XLM-R's classifier and BERT's pooler+classifier."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = Linear(cfg.hidden_size, 1)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out_proj(torch.tanh(self.dense(cls)))
        return out


class CrossEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.emb_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)

    def forward(self, batch: PackedBatch, path: AttentionPath) -> torch.Tensor:
        """Raw logits, one per sequence, float32."""
        x: torch.Tensor = self.emb_ln(self.embeddings(batch))
        for layer in self.layers[:-1]:
            x = layer(x, batch, path)
        last = cast(Layer, self.layers[-1])
        logits: torch.Tensor = self.head(last.forward_first_tokens(x, batch))
        return logits[:, 0].float()


def attention(qkv: torch.Tensor, batch: PackedBatch, path: AttentionPath) -> torch.Tensor:
    """Bidirectional attention over packed `qkv` [T, 3, heads, head_dim] -> [T, heads, head_dim]."""
    if path == "flash-attn-varlen":
        from flash_attn import flash_attn_varlen_qkvpacked_func

        out: torch.Tensor = flash_attn_varlen_qkvpacked_func(
            qkv, batch.cu_seqlens, batch.max_seqlen, dropout_p=0.0, causal=False
        )
        return out
    if path == "torch-varlen":
        from torch.nn.attention.varlen import varlen_attn

        q, k, v = qkv.unbind(1)
        cu, n = batch.cu_seqlens, batch.max_seqlen
        varlen = varlen_attn(q, k, v, cu, cu, n, n)
        assert isinstance(varlen, torch.Tensor)
        return varlen
    if path == "avx512-bf16":
        return cpu_kernel.attention(qkv, batch.cu_seqlens)
    n_seqs = len(batch.spans)
    if batch.key_mask is None:  # equal lengths: a plain reshape, no padding at all
        q, k, v = qkv.view(n_seqs, batch.max_seqlen, *qkv.shape[1:]).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return out.reshape(qkv.shape[0], *qkv.shape[2:])
    if path == "sdpa-per-sequence":
        out = qkv.new_empty(qkv.shape[0], *qkv.shape[2:])
        for start, end in batch.spans:
            # head-major and contiguous: the CPU flash kernel runs ~12% faster on it
            q, k, v = qkv[start:end].permute(1, 2, 0, 3).contiguous().unsqueeze(1)
            out[start:end] = F.scaled_dot_product_attention(q, k, v)[0].transpose(0, 1)
        return out
    padded = qkv.new_zeros(n_seqs, batch.max_seqlen, *qkv.shape[1:])
    padded[batch.batch_index, batch.seq_index] = qkv
    q, k, v = padded.permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=batch.key_mask)
    return out.transpose(1, 2)[batch.batch_index, batch.seq_index]


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch,
                        scale: float | None = None) -> torch.Tensor:
    """One query per sequence (`q` [B, heads, d]) over all the keys and values of its own
    sequence (`k`, `v` packed [T, kv_heads, d]) -> [B, heads, d]. The last layer's attention
    when one position per sequence is read (the first for a cross-encoder; the last for a
    decoder, which sees every earlier token anyway). Keys and values padded, one SDPA call on
    every device: the scores are [B, heads, 1, L], small next to the layer's linears."""
    n, length = len(batch.spans), batch.max_seqlen
    if batch.key_mask is None:
        kd, vd = (t.view(n, length, *t.shape[1:]).transpose(1, 2) for t in (k, v))
    else:
        padded = []
        for t in (k, v):
            dense = t.new_zeros(n, length, *t.shape[1:])
            dense[batch.batch_index, batch.seq_index] = t
            padded.append(dense.transpose(1, 2))
        kd, vd = padded
    out = F.scaled_dot_product_attention(q[:, :, None, :], kd, vd, attn_mask=batch.key_mask,
                                         scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return out[:, :, 0]
