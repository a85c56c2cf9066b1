"""The tiny base model for CPU work (loading any base lives in ``loading``).

What belongs here: training the tiny base's tokenizer (byte-level BPE with a chat
template), building and briefly pretraining a tiny ``LlamaForCausalLM``, and saving
it atomically with its fingerprint.

A base's **fingerprint** is ``content_hash(config.json, {file: sha256})`` over its
weight files and ``tokenizer.json`` (hub models: repo id + pinned revision). It is
written with the lineage (corpus hash, code version) to ``brainstacks_base.json``.

References: Touvron et al. 2023 (Llama); Dettmers et al. 2023 (QLoRA, NF4).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from brainstacks_core.base.config import SPECIAL_TOKENS, TinyBaseConfig
from brainstacks_core.files import atomic_write_json, replace_dir, sha256_file
from brainstacks_core.lineage.versioning import code_version, content_hash

if TYPE_CHECKING:  # transformers is slow to import; load it only where needed
    from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

BASE_MANIFEST = "brainstacks_base.json"
# Zephyr/TinyLlama-style turns; {% generation %} lets trl build assistant-only masks.
# transformers renders with trim_blocks, so a newline right after a tag is written as {{ '\n' }}.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}{% endif %}"
    "{% if message['role'] == 'assistant' %}<|assistant|>\n"
    "{% generation %}{{ message['content'] }}</s>{% endgeneration %}{{ '\\n' }}"
    "{% else %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class BaseModelInfo:
    """Identity of a base model, recorded in lineage.

    Attributes:
        path: Local folder (tiny or pre-downloaded) or the hub repo id.
        fingerprint: Content hash of the weights and config (see module docstring).
        config: The configuration that produced the base (``TinyBaseConfig`` or
            ``HubBaseConfig`` as a dict; ``config.json`` for a plain local folder).
        source: ``"tiny"``, ``"hub"`` or ``"local"`` (a folder without a manifest).
        revision: Pinned hub commit, ``None`` for local bases.
    """

    path: str
    fingerprint: str
    config: dict[str, Any]
    source: str
    revision: str | None = None


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with a chat template.

    Args:
        texts: Training corpus; the same texts in the same order give the same tokenizer.
        vocab_size: Target vocabulary size, special tokens included.

    Returns:
        A fast tokenizer that prepends ``<s>`` to plain text and whose
        ``chat_template`` renders system/user/assistant turns.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=list(SPECIAL_TOKENS[4:]), model_max_length=1 << 30,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(config: TinyBaseConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """Randomly initialise a tiny Llama, seeded by ``config.seed`` (global RNG untouched)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens > vocab_size {config.vocab_size}")
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(hf_config)
    return model.float().eval()


def _pack(tokenizer: PreTrainedTokenizerFast, texts: list[str], seq_len: int) -> torch.Tensor:
    """Concatenate ``<s> text </s>`` documents and cut them into ``(N, T)`` blocks."""
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    stream = [tok for doc in ids for tok in (*doc, tokenizer.eos_token_id)]
    n_blocks = len(stream) // seq_len
    if n_blocks == 0:
        raise ValueError(f"corpus has {len(stream)} tokens, fewer than one seq_len={seq_len} block")
    return torch.tensor(stream[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run torch ops on one CPU thread, then restore the previous setting.

    A tiny model gains nothing from intra-op threads, one thread makes the float
    reductions (hence the weights and the fingerprint) identical on any core count,
    and it avoids OpenMP stalls on a busy machine (30x slower seen on 2 cores).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pretrain(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, texts: Iterable[str], config: TinyBaseConfig
) -> list[float]:
    """Briefly pretrain ``model`` as a causal LM on packed ``texts`` (in place).

    Args:
        model: A causal LM in float32.
        tokenizer: The tokenizer the texts are encoded with.
        texts: The corpus; documents are packed into ``(B, T)`` batches.
        config: Steps, learning rate, batch size, sequence length and seed.

    Returns:
        The training loss of every step (``config.pretrain_steps`` floats).
    """
    with _single_threaded():
        return _pretrain(model, tokenizer, list(texts), config)


def _pretrain(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, texts: list[str], config: TinyBaseConfig
) -> list[float]:
    blocks = _pack(tokenizer, texts, config.seq_len)  # (N, T)
    gen = torch.Generator().manual_seed(config.seed)
    optim = torch.optim.AdamW(model.parameters(), lr=config.pretrain_lr, weight_decay=0.01)
    warmup = max(1, config.pretrain_steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, config.pretrain_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_factor)
    losses: list[float] = []
    model.train()
    for _ in tqdm(range(config.pretrain_steps), desc="pretrain tiny base", leave=False):
        idx = torch.randint(len(blocks), (config.pretrain_batch_size,), generator=gen)
        batch = blocks[idx]  # (B, T)
        loss = model(input_ids=batch, labels=batch).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    if losses:
        logger.info("pretrained tiny base: loss %.3f -> %.3f over %d steps", losses[0], losses[-1], len(losses))
    return losses


def corpus_hash(texts: Iterable[str]) -> str:
    """Order-sensitive sha256 of a text corpus (length-prefixed, so joins are unambiguous)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def fingerprint_model_dir(path: str | os.PathLike[str]) -> str:
    """Fingerprint of a saved model folder: ``config.json`` content + weight and tokenizer sha256s."""
    root = Path(path)
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    files = sorted(p for p in root.iterdir() if p.suffix in _WEIGHT_SUFFIXES or p.name == "tokenizer.json")
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin) in {root}")
    return content_hash(config, {p.name: sha256_file(p) for p in files})


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / BASE_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build_tiny_base(texts: Iterable[str], config: TinyBaseConfig, out_dir: str | os.PathLike[str]) -> BaseModelInfo:
    """Train tokenizer, build, pretrain and save the tiny base into ``out_dir``.

    Skipped when ``out_dir`` already holds a base built from the same config and
    texts whose files still match its recorded fingerprint. Otherwise everything is
    written to a temporary folder beside ``out_dir`` and renamed into place.

    Args:
        texts: Pretraining corpus (also the tokenizer's training corpus).
        config: The tiny base configuration.
        out_dir: Destination folder.

    Returns:
        The base's identity, as recorded in ``out_dir/brainstacks_base.json``.
    """
    texts = list(texts)
    out = Path(out_dir)
    corpus = corpus_hash(texts)
    build_key = content_hash(config, corpus)
    manifest = _read_manifest(out)
    if manifest and manifest.get("build_key") == build_key:
        if fingerprint_model_dir(out) == manifest["fingerprint"]:
            logger.info("tiny base in %s is up to date (fingerprint %s)", out, manifest["fingerprint"])
            return BaseModelInfo(str(out), manifest["fingerprint"], manifest["config"], "tiny", None)
        logger.warning("tiny base in %s does not match its recorded fingerprint; rebuilding", out)

    tokenizer = train_tokenizer(texts, config.vocab_size)
    model = build_tiny_llama(config, tokenizer)
    losses = pretrain(model, tokenizer, texts, config)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        fingerprint = fingerprint_model_dir(tmp)
        atomic_write_json(tmp / BASE_MANIFEST, {
            "fingerprint": fingerprint, "source": "tiny", "revision": None,
            "config": config.model_dump(mode="json"), "build_key": build_key, "corpus_hash": corpus,
            "num_texts": len(texts), "code_version": code_version(),
            "pretrain_loss_first": losses[0] if losses else None,
            "pretrain_loss_last": losses[-1] if losses else None,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        })
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built tiny base in %s (fingerprint %s)", out, fingerprint)
    return BaseModelInfo(str(out), fingerprint, config.model_dump(mode="json"), "tiny", None)
