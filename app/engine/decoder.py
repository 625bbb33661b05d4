"""A native decoder reranker for the Qwen2 / Qwen3 family that runs packed batches.

Like the cross-encoder (app/engine/modeling.py), a batch is one flat `[tokens, hidden]` tensor:
RMSNorm, the projections and SwiGLU touch real tokens only; rotary positions restart at 0 for
each sequence; attention is causal within each sequence, with grouped-query heads. Only the
last position of each sequence goes through the last layer's query, attention output and MLP,
the final norm and the LM head, and only the rows of the recipe's scoring tokens:
`logit = row(positive) - row(negative)` (or the positive row alone), whose sigmoid is the score
(app/engine/recipes.py).

The arithmetic follows transformers' Qwen2/Qwen3 modules op for op (RMSNorm statistics in
float32, rotary angles in float32 then cast), so float32 scores match them within 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.modeling import AttentionPath, PackedBatch, one_query_attention

DecoderFamily = Literal["qwen2", "qwen3"]
DECODER_FAMILIES: dict[str, DecoderFamily] = {"qwen2": "qwen2", "qwen3": "qwen3"}


@dataclass(frozen=True)
class DecoderConfig:
    family: DecoderFamily
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    max_positions: int

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> DecoderConfig:
        family = DECODER_FAMILIES.get(str(config.get("model_type")))
        if family is None:
            raise ValueError(f"model_type {config.get('model_type')!r} is not qwen2 or qwen3")
        if config.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {config.get('hidden_act')!r} is not supported (silu)")
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"rope type {rope_type!r} is not supported (default)")
        if config.get("use_sliding_window"):
            raise ValueError("sliding-window attention is not supported")
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        if heads % kv_heads:
            raise ValueError(f"{heads} heads are not a multiple of {kv_heads} key/value heads")
        return cls(
            family=family,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=int(config["intermediate_size"]),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_positions=int(config.get("max_position_embeddings", 32768)),
        )


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        out: torch.Tensor = self.weight * x32.to(x.dtype)
        return out


def rotary(positions: torch.Tensor, head_dim: int, theta: float,
           dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin `[tokens, 1, head_dim]` for each token's position in its own sequence."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float,
                                             device=positions.device) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype)[:, None, :], angles.sin().to(dtype)[:, None, :]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos) + (turned * sin)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        bias = cfg.family == "qwen2"
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, d
        self.q_proj = nn.Linear(h, cfg.num_heads * d, bias=bias)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(cfg.num_heads * d, h, bias=False)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.family == "qwen3" else None
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.family == "qwen3" else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                batch: PackedBatch, path: AttentionPath) -> torch.Tensor:
        q, k, v = self._project(x, x, rope, rope)
        out = causal_attention(q, k, v, batch, path)
        projected: torch.Tensor = self.o_proj(out.reshape(x.shape[0], -1))
        return projected

    def forward_rows(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                     batch: PackedBatch, rows: torch.Tensor) -> torch.Tensor:
        """Attention output at each sequence's last token only (`rows`), which sees every
        token of its sequence: keys and values for all, the query for those rows."""
        cos, sin = rope
        q, k, v = self._project(x[rows], x, (cos[rows], sin[rows]), rope)
        out = one_query_attention(q, k, v, batch, scale=self.head_dim ** -0.5)
        projected: torch.Tensor = self.o_proj(out.reshape(len(rows), -1))
        return projected

    def _project(self, x_q: torch.Tensor, x: torch.Tensor,
                 rope_q: tuple[torch.Tensor, torch.Tensor],
                 rope: tuple[torch.Tensor, torch.Tensor],
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = self.q_proj(x_q).view(x_q.shape[0], self.heads, self.head_dim)
        k = self.k_proj(x).view(x.shape[0], self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(x.shape[0], self.kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return _rotate(q, *rope_q), _rotate(k, *rope), v


class Layer(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                batch: PackedBatch, path: AttentionPath) -> torch.Tensor:
        return self._mlp(x + self.self_attn(self.input_layernorm(x), rope, batch, path))

    def forward_rows(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                     batch: PackedBatch, rows: torch.Tensor) -> torch.Tensor:
        """The layer's output at `rows` only (the last layer: one position per sequence)."""
        attended = self.self_attn.forward_rows(self.input_layernorm(x), rope, batch, rows)
        return self._mlp(x[rows] + attended)

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        y = self.post_attention_layernorm(h)
        out: torch.Tensor = h + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))
        return out


class DecoderReranker(nn.Module):
    """Parameter names follow transformers' `Qwen*ForCausalLM` with the `model.` prefix and
    the `mlp.` level dropped; `score_rows` holds the LM-head rows of the scoring tokens only."""

    def __init__(self, cfg: DecoderConfig, rows: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.score_rows = nn.Parameter(torch.zeros(rows, cfg.hidden_size))

    def forward(self, batch: PackedBatch, path: AttentionPath) -> torch.Tensor:
        """One logit per sequence, float32: row 0 minus row 1 (or row 0 alone)."""
        x: torch.Tensor = self.embed_tokens(batch.input_ids)
        rope = rotary(batch.position_ids, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for layer in self.layers[:-1]:
            x = layer(x, rope, batch, path)
        final = cast(Layer, self.layers[-1])
        rows = batch.cu_seqlens[1:].long() - 1
        last: torch.Tensor = self.norm(final.forward_rows(x, rope, batch, rows))
        logits = (last @ self.score_rows.T).float()
        return logits[:, 0] - logits[:, 1] if logits.shape[1] == 2 else logits[:, 0]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch,
                     path: AttentionPath) -> torch.Tensor:
    """Causal attention within each packed sequence: q `[T, heads, d]`, k and v
    `[T, kv_heads, d]` -> `[T, heads, d]`."""
    scale = q.shape[-1] ** -0.5
    cu, n = batch.cu_seqlens, batch.max_seqlen
    if path == "flash-attn-varlen":
        from flash_attn import flash_attn_varlen_func

        out: torch.Tensor = flash_attn_varlen_func(q, k, v, cu, cu, n, n, dropout_p=0.0,
                                                   softmax_scale=scale, causal=True)
        return out
    if path == "torch-varlen":
        from torch.nn.attention.varlen import varlen_attn

        varlen = varlen_attn(q, k, v, cu, cu, n, n, scale=scale, window_size=(-1, 0),
                             enable_gqa=True)
        assert isinstance(varlen, torch.Tensor)
        return varlen
    if path == "sdpa-per-sequence":
        out = q.new_empty(q.shape)
        for start, end in batch.spans:
            qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            out[start:end] = F.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True
            )[0].transpose(0, 1)
        return out
    n_seqs = len(batch.spans)
    padded = [t.new_zeros(n_seqs, n, *t.shape[1:]) for t in (q, k, v)]
    for dense, flat in zip(padded, (q, k, v), strict=True):
        dense[batch.batch_index, batch.seq_index] = flat
    qd, kd, vd = (t.transpose(1, 2) for t in padded)
    mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()[None, None]
    if batch.key_mask is not None:
        mask = mask & batch.key_mask
    out = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=scale,
                                         enable_gqa=True)
    return out.transpose(1, 2)[batch.batch_index, batch.seq_index]


def to_decoder_native(tensors: dict[str, torch.Tensor], cfg: DecoderConfig,
                      rows: list[int]) -> dict[str, torch.Tensor]:
    """A transformers checkpoint's tensors under the native names, with only the LM-head rows
    the recipe reads (the embedding's rows when the head is tied to it)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name == "lm_head.weight":
            continue
        native = name.removeprefix("model.").replace(".mlp.", ".")
        out[native] = tensor
    head = tensors.get("lm_head.weight")
    if head is None or cfg.tie_word_embeddings:
        head = tensors["model.embed_tokens.weight"]
    out["score_rows"] = head[rows].clone()
    return out


def causal_self_check(device: str, dtype: torch.dtype, heads: int, kv_heads: int,
                      head_dim: int, path: AttentionPath) -> None:
    """A fused path against padded SDPA, causal, on random input of the model's head counts."""
    from app.engine.native import SELF_CHECK_LENGTHS, close_enough, self_check_batch

    generator = torch.Generator().manual_seed(0)
    for lengths in SELF_CHECK_LENGTHS:
        batch = self_check_batch(device, lengths)
        q, k, v = (torch.randn(sum(lengths), n, head_dim, generator=generator).to(device, dtype)
                   for n in (heads, kv_heads, kv_heads))
        want = causal_attention(q.float(), k.float(), v.float(), batch, "sdpa-padded")
        close_enough(causal_attention(q, k, v, batch, path), want)
