"""Writes a small random cross-encoder with a locally trained tokenizer, for offline use and tests.

The weights are random, so scores mean nothing; the architecture, tokenizer layout and files are
those of a real XLM-RoBERTa (jina-reranker-v2's family) or BERT cross-encoder.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal

from app.engine.tokenize import Family

_CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Venus is often called Earth's twin because of its similar size and proximity.",
    "Jupiter, the largest planet in our solar system, has a prominent red spot.",
    "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
    "Retrieval augmented generation ranks passages before an answer is written.",
    "A cross-encoder reads the query and the document together and returns one score.",
    "Der schnelle braune Fuchs springt über den faulen Hund am Flussufer.",
    "Die Bibliothek öffnet um neun Uhr und schließt am Abend um acht.",
    "Le renard brun rapide saute par-dessus le chien paresseux près de la rivière.",
    "La bibliothèque municipale propose des livres en plusieurs langues étrangères.",
    "El rápido zorro marrón salta sobre el perro perezoso junto al río.",
    "¿Cuál es el planeta conocido como el planeta rojo del sistema solar?",
    "Быстрая коричневая лиса прыгает через ленивую собаку у реки.",
    "Марс часто называют красной планетой из-за его цвета.",
    "敏捷的棕色狐狸跳过了河边那只懒惰的狗。",
    "火星因其红色外观而被称为红色星球。",
    "素早い茶色の狐が川辺で怠け者の犬を飛び越える。",
    "火星は赤い惑星として知られています。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول بجانب النهر.",
    "तेज़ भूरी लोमड़ी नदी के किनारे आलसी कुत्ते के ऊपर कूदती है।",
    "빠른 갈색 여우가 강가에서 게으른 개를 뛰어넘는다.",
    "def rerank(query: str, documents: list[str]) -> list[float]: return scores",
    "SELECT name, price FROM products WHERE price > 10 ORDER BY price DESC;",
    '{"name": "get_weather", "parameters": {"city": {"type": "string"}}}',
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and symbols ! ? , . ; : ' \" ( ) [ ] { }",
]



def _corpus() -> list[str]:
    words = sorted({w for line in _CORPUS for w in line.split()})
    shuffled = [" ".join(words[i::7]) for i in range(7)]
    return list(itertools.chain(_CORPUS * 4, shuffled))


def _xlmr_tokenizer(max_length: int) -> Any:
    """A SentencePiece-style unigram tokenizer whose piece scores are the corpus's unigram
    log-frequencies: known words become one piece, anything else falls back to characters."""
    import math
    import re
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    for line in _corpus():
        for piece in re.findall(r"\w+|[^\w\s]", line):
            words["▁" + piece] += 1
            chars.update(piece)
    total = sum(words.values()) + sum(chars.values())
    vocab: dict[str, float] = {"<s>": 0.0, "<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0}
    for piece, count in words.most_common():
        vocab[piece] = math.log(count / total)
    vocab.setdefault("▁", math.log(1 / total))
    for char, count in chars.most_common():
        vocab.setdefault(char, math.log(count / total) - 8.0)  # fallback pieces cost more
    raw = Tokenizer(models.Unigram(list(vocab.items()), unk_id=3, byte_fallback=False))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, model_max_length=max_length,
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
    )


def _bert_tokenizer(vocab_size: int, max_length: int) -> Any:
    from tokenizers import processors
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    raw = BertWordPieceTokenizer(lowercase=True)
    raw.train_from_iterator(
        iter(_corpus()), vocab_size=vocab_size, show_progress=False,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    )
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", raw.token_to_id("[CLS]")), ("[SEP]", raw.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw._tokenizer, model_max_length=max_length,
        cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]", pad_token="[PAD]",
        mask_token="[MASK]",
    )


JINA_V2_SHAPE: dict[str, int] = dict(hidden=768, layers=12, heads=12, model_vocab_size=250002)
"""write_test_model's size arguments for jina-reranker-v2's shapes (benchmarks)."""


def write_test_model(
    out_dir: str | Path,
    family: Family = "xlm-roberta",
    *,
    max_length: int = 128,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    vocab_size: int = 1500,
    model_vocab_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Write tokenizer, config and random weights (model.safetensors) to `out_dir`.

    `vocab_size` is the BERT WordPiece target (the XLM-R tokenizer holds the corpus's words);
    `model_vocab_size` makes the embedding table larger than the tokenizer's vocabulary (250002
    gives jina-reranker-v2's full shapes for benchmarks).
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, XLMRobertaConfig
    from transformers import XLMRobertaForSequenceClassification as XLMRModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    common: dict[str, Any] = dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, num_labels=1, initializer_range=0.2,
        hidden_act="gelu", layer_norm_eps=1e-5,
    )
    if family == "xlm-roberta":
        tokenizer = _xlmr_tokenizer(max_length)
        config: Any = XLMRobertaConfig(
            vocab_size=model_vocab_size or len(tokenizer), max_position_embeddings=max_length + 2,
            type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, **common,
        )
        model: torch.nn.Module = XLMRModel(config)
    else:
        tokenizer = _bert_tokenizer(vocab_size, max_length)
        config = BertConfig(
            vocab_size=model_vocab_size or len(tokenizer), max_position_embeddings=max_length,
            type_vocab_size=2, pad_token_id=0, **common,
        )
        model = BertForSequenceClassification(config)
    tokenizer.save_pretrained(out)
    # Name the family's own tokenizer class, as published checkpoints do, so transformers
    # loads it with that family's normalisation and pre-tokenisation rules.
    tok_config_path = out / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text())
    tok_config["tokenizer_class"] = (
        "XLMRobertaTokenizer" if family == "xlm-roberta" else "BertTokenizer"
    )
    tok_config_path.write_text(json.dumps(tok_config, indent=2))
    model.save_pretrained(out)  # type: ignore[operator]
    return out


# Written out rather than derived from app/engine/weights.py's tables: the loader's mapping is
# what the jina-naming tests check, so the writer must not share it.
_JINA_FROM_STOCK_LAYER = {
    "attention.output.dense": "mixer.out_proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "norm2",
}


def write_jina_checkpoint(
    stock_dir: str | Path, out_dir: str | Path, *, as_bin: bool = False
) -> Path:
    """Re-save a stock XLM-R cross-encoder the way jina-reranker-v2 is published: flash-attention
    parameter names, q/k/v stacked into `Wqkv`, and a config.json with no `model_type` whose
    `auto_map` points at remote code (which is not shipped, and never run by this service)."""
    import re
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    stock, out = Path(stock_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(stock / "model.safetensors")
    renamed: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        name = name.replace("roberta.embeddings.LayerNorm.", "roberta.emb_ln.")
        if m := re.fullmatch(r"roberta\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", name):
            index, part, kind = m[1], m[2], m[3]
            if q := re.fullmatch(r"attention\.self\.(query|key|value)", part):
                qkv.setdefault((index, kind), {})[q[1]] = tensor
                continue
            name = f"roberta.encoder.layers.{index}.{_JINA_FROM_STOCK_LAYER[part]}.{kind}"
        renamed[name] = tensor.contiguous()
    for (index, kind), parts in qkv.items():
        renamed[f"roberta.encoder.layers.{index}.mixer.Wqkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]]
        )
    if as_bin:
        torch.save(renamed, out / "pytorch_model.bin")
    else:
        save_file(renamed, out / "model.safetensors", metadata={"format": "pt"})

    config = json.loads((stock / "config.json").read_text())
    for key in ("model_type", "transformers_version", "dtype", "torch_dtype"):
        config.pop(key, None)
    config.update(
        architectures=["XLMRobertaForSequenceClassification"],
        auto_map={
            "AutoConfig": "configuration_xlm_roberta.XLMRobertaFlashConfig",
            "AutoModelForSequenceClassification":
                "modeling_xlm_roberta.XLMRobertaForSequenceClassification",
        },
        num_labels=1, use_flash_attn=True, position_embedding_type="absolute",
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "special_tokens_map.json"):
        if (stock / name).exists():
            shutil.copy(stock / name, out / name)
    shutil.copy(stock / "tokenizer_config.json", out / "tokenizer_config.json")
    return out


DecoderFamily = Literal["qwen3", "qwen2", "gemma"]
QWEN3_06B_SHAPE: dict[str, int] = dict(
    hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=3072,
    model_vocab_size=151669,
)
"""write_decoder_test_model's size arguments for Qwen3-Reranker-0.6B's shapes (benchmarks)."""
DECODER_RERANKER_NAMES: dict[str, str] = {
    "qwen3": "Qwen3-Reranker", "qwen2": "mxbai-rerank-v2", "gemma": "bge-reranker-v2-gemma",
}
"""The model name each family's test model is served under (the recipe auto-detection reads
it from the directory name, as it would from a hub id)."""


def _decoder_tokenizer(family: DecoderFamily, max_length: int) -> Any:
    """A byte-level BPE tokenizer trained on the corpus plus the recipes' own text, with the
    chat tokens the templates use, so every template piece and scoring token tokenizes as it
    would with the real one: `yes`, `no` and `Yes` as single tokens, digits as bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from app.engine import recipes

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    specials = (["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if family != "gemma"
                else ["<pad>", "<eos>", "<bos>"])
    template_text = [recipes.QWEN3_SYSTEM, recipes.QWEN3_SUFFIX, recipes.QWEN3_INSTRUCTION,
                     recipes.MXBAI_PREFIX, recipes.MXBAI_TASK, recipes.BGE_GEMMA_PROMPT]
    answers = ["yes", "no", "Yes", "No"] * 50
    trainer = trainers.BpeTrainer(
        vocab_size=3000, show_progress=False, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(iter([*_corpus(), *template_text * 5, *answers]), trainer=trainer)
    if family == "qwen3":
        raw.add_tokens(["<think>", "</think>"])  # added tokens, not special: as Qwen3's
    if family == "gemma":
        return PreTrainedTokenizerFast(
            tokenizer_object=raw, model_max_length=max_length, bos_token="<bos>",
            eos_token="<eos>", pad_token="<pad>",
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, model_max_length=max_length, eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


def write_decoder_test_model(
    out_dir: str | Path,
    family: DecoderFamily = "qwen3",
    *,
    max_length: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate: int | None = None,
    model_vocab_size: int | None = None,
    seed: int = 0,
) -> Path:
    """A tiny random decoder reranker with a locally trained tokenizer: Qwen3 (tied LM head,
    q/k norms), Qwen2 (q/k/v biases, its own LM head) or Gemma, in transformers' own format.
    The size arguments give other shapes (QWEN3_06B_SHAPE: Qwen3-Reranker-0.6B's)."""
    import torch
    from transformers import (
        GemmaConfig,
        GemmaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _decoder_tokenizer(family, max_length)
    common: dict[str, Any] = dict(
        vocab_size=model_vocab_size or len(tokenizer), hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim or hidden // heads, max_position_embeddings=max_length,
        initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model: torch.nn.Module
    if family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, **common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, **common))
    else:
        model = GemmaForCausalLM(GemmaConfig(bos_token_id=tokenizer.bos_token_id, **common))
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)  # type: ignore[operator]
    return out
