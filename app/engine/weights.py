"""Reading a checkpoint and renaming its tensors to the native module's names.

Two namings are understood: stock transformers (`roberta.encoder.layer.N.attention.self.query`,
...) and jina-reranker-v2's flash-attention naming (`roberta.encoder.layers.N.mixer.Wqkv`, ...).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from app.engine.tokenize import Family

_STOCK_LAYER = {
    "attention.output.dense": "out_proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "output.LayerNorm": "norm2",
}
_JINA_LAYER = {
    "mixer.Wqkv": "Wqkv",
    "mixer.out_proj": "out_proj",
    "norm1": "norm1",
    "mlp.fc1": "fc1",
    "mlp.fc2": "fc2",
    "norm2": "norm2",
}


class CheckpointError(ValueError):
    """The checkpoint cannot be mapped onto the native model; the message names what is off."""


def read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` (or its shards), else `pytorch_model.bin`."""
    from safetensors.torch import load_file

    shards = sorted(model_dir.glob("model*.safetensors"))
    if shards:
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(load_file(shard))
        return tensors
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if bins:
        tensors = {}
        for path in bins:
            tensors.update(torch.load(path, map_location="cpu", weights_only=True))
        return tensors
    raise CheckpointError(f"{model_dir} has neither model.safetensors nor pytorch_model.bin")


def to_native(tensors: dict[str, torch.Tensor], family: Family) -> dict[str, torch.Tensor]:
    """Rename (and fuse q, k, v for stock checkpoints) into the native parameter names."""
    prefix = "bert." if family == "bert" else "roberta."
    out: dict[str, torch.Tensor] = {}
    pending_qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for raw_name, tensor in tensors.items():
        name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", raw_name))
        name = name.removeprefix(prefix)
        if m := re.fullmatch(r"encoder\.layers?\.(\d+)\.(.+)\.(weight|bias)", name):
            index, part, kind = int(m[1]), m[2], m[3]
            if q := re.fullmatch(r"attention\.self\.(query|key|value)", part):
                pending_qkv.setdefault((index, kind), {})[q[1]] = tensor
                continue
            native = _STOCK_LAYER.get(part) or _JINA_LAYER.get(part)
            if native is None:
                continue
            out[f"layers.{index}.{native}.{kind}"] = tensor
        elif name.startswith("embeddings.LayerNorm."):
            out["emb_ln." + name.rsplit(".", 1)[1]] = tensor
        elif name.startswith(("embeddings.", "emb_ln.")):
            out[name] = tensor
        elif name.startswith("classifier.dense."):
            out["head.dense." + name.rsplit(".", 1)[1]] = tensor
        elif name.startswith("classifier.out_proj."):
            out["head.out_proj." + name.rsplit(".", 1)[1]] = tensor
        elif family == "bert" and name.startswith("pooler.dense."):
            out["head.dense." + name.rsplit(".", 1)[1]] = tensor
        elif family == "bert" and name.startswith("classifier."):
            out["head.out_proj." + name.rsplit(".", 1)[1]] = tensor
    for (index, kind), parts in pending_qkv.items():
        missing = {"query", "key", "value"} - parts.keys()
        if missing:
            raise CheckpointError(f"layer {index} lacks attention {', '.join(sorted(missing))}")
        out[f"layers.{index}.Wqkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    return out


def check_complete(native: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> None:
    """Every parameter present with the right shape, or one error naming what is not."""
    missing = sorted(expected.keys() - native.keys())
    if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        shown = ", ".join(missing[:6]) + more
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s): {shown}")
    for name, shape in expected.items():
        if native[name].shape != shape:
            raise CheckpointError(
                f"tensor {name} has shape {tuple(native[name].shape)}, config says {tuple(shape)}"
            )

