"""The base model: a tiny Llama built locally for CPU work, or a pinned hub model.

What belongs here: training the tiny base's tokenizer (byte-level BPE with a chat
template), building and briefly pretraining a tiny ``LlamaForCausalLM``, saving it
atomically with its fingerprint, and loading any base (local folder or hub repo at a
pinned revision, optionally 4-bit NF4) with every parameter frozen.

A base's **fingerprint** is ``content_hash(config.json, {file: sha256})`` over its
weight files and ``tokenizer.json`` (hub models: repo id + pinned revision). It is
written with the lineage (corpus hash, code version) to ``brainstacks_base.json``.

References: Touvron et al. 2023 (Llama); Dettmers et al. 2023 (QLoRA, NF4).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, TypeVar
from urllib.parse import urlparse

import torch
from tqdm.auto import tqdm

from brainstacks_core.io_utils import atomic_write_json, sha256_file
from brainstacks_core.versioning import code_version, content_hash

if TYPE_CHECKING:  # transformers is slow to import; load it only where needed
    from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

BASE_MANIFEST = "brainstacks_base.json"
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>")
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
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_C = TypeVar("_C")


def _from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; allowed keys: {sorted(names)}")
    missing = sorted(f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                     if f.name not in data and f.default is dataclasses.MISSING)
    if missing:
        raise ValueError(f"missing {cls.__name__} keys {missing}")
    return cls(**data)


@dataclass(frozen=True)
class TinyBaseConfig:
    """Shape and pretraining of the tiny CPU base.

    Attributes:
        vocab_size: Embedding rows; the BPE vocabulary is trained up to this size.
        hidden_size: Model width ``H``.
        intermediate_size: MLP width ``I``.
        num_hidden_layers: Decoder layers ``L``.
        num_attention_heads: Query heads ``nh``; ``H`` must divide by it.
        num_key_value_heads: Key/value heads (grouped-query attention).
        max_position_embeddings: Longest sequence the RoPE tables cover.
        pretrain_steps: Causal-LM optimizer steps on the corpus.
        pretrain_lr: Peak AdamW learning rate (linear warmup, cosine decay).
        pretrain_batch_size: Sequences per step ``B``.
        seq_len: Tokens per packed training sequence ``T``.
        seed: Seed of initialisation and batch sampling.
    """

    vocab_size: int = 2048
    hidden_size: int = 64
    intermediate_size: int = 176
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    pretrain_steps: int = 200
    pretrain_lr: float = 3e-3
    pretrain_batch_size: int = 8
    seq_len: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (byte alphabet + specials)")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        if self.seq_len > self.max_position_embeddings:
            raise ValueError("seq_len must not exceed max_position_embeddings")
        if self.pretrain_steps < 0 or self.pretrain_batch_size < 1:
            raise ValueError("pretrain_steps must be >= 0 and pretrain_batch_size >= 1")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TinyBaseConfig:
        """Build from a profile's ``base`` section; unknown keys raise ``ValueError``."""
        return _from_dict(cls, data)


@dataclass(frozen=True)
class HubBaseConfig:
    """A hub base model pinned to one commit.

    Attributes:
        repo_id: Hub repository, e.g. ``TinyLlama/TinyLlama-1.1B-Chat-v1.0``.
        revision: Full 40-hex commit sha; branches and tags move, so they are refused.
        load_in_4bit: Quantize linear layers to NF4 (QLoRA) on load.
        compute_dtype: ``"auto"`` (float32 on CPU, bfloat16 on CUDA), ``"float32"``,
            ``"bfloat16"`` or ``"float16"``.
        attn_implementation: Passed to ``from_pretrained`` (``None``: library default).
    """

    repo_id: str
    revision: str
    load_in_4bit: bool = True
    compute_dtype: str = "auto"
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        if not self.repo_id:
            raise ValueError("HubBaseConfig.repo_id is empty")
        if not _SHA_RE.fullmatch(self.revision or ""):
            raise ValueError(
                f"HubBaseConfig.revision for {self.repo_id!r} must be a pinned 40-hex commit sha, "
                f"got {self.revision!r}; branches like 'main' move and break reproducibility "
                "(find the sha on the repo's 'Files and versions' page)."
            )
        if self.compute_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"unknown compute_dtype {self.compute_dtype!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HubBaseConfig:
        """Build from a profile's ``base`` section; unknown keys raise ``ValueError``."""
        return _from_dict(cls, data)


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


def parse_base_config(section: Mapping[str, Any]) -> TinyBaseConfig | HubBaseConfig:
    """Parse a profile's ``base`` section: ``HubBaseConfig`` if it names a ``repo_id``, else tiny."""
    return HubBaseConfig.from_dict(section) if "repo_id" in section else TinyBaseConfig.from_dict(section)


class BaseModelUnavailableError(RuntimeError):
    """A hub base cannot be fetched (offline, unknown repo or revision)."""


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
            "config": dataclasses.asdict(config), "build_key": build_key, "corpus_hash": corpus,
            "num_texts": len(texts), "code_version": code_version(),
            "pretrain_loss_first": losses[0] if losses else None,
            "pretrain_loss_last": losses[-1] if losses else None,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        })
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built tiny base in %s (fingerprint %s)", out, fingerprint)
    return BaseModelInfo(str(out), fingerprint, dataclasses.asdict(config), "tiny", None)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compute_dtype(name: str, device_map: Any) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    on_cpu = device_map in ("cpu", {"": "cpu"}) or not torch.cuda.is_available()
    return torch.float32 if on_cpu else torch.bfloat16


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection (assumed yes behind a proxy)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s).close()
    except OSError:
        return False
    return True


def _load_from_hub(hub: HubBaseConfig, kwargs: dict[str, Any]) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load from the local HF cache if the pinned snapshot is there, else download it.

    A pinned commit never changes, so a cached snapshot is used without asking the
    hub. Offline (``HF_HUB_OFFLINE``) or with the hub unreachable, a cache miss fails
    at once instead of after the hub client's retries.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(local_only: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
        # The tokenizer first: small, so a missing repo fails before any weights download.
        tokenizer = AutoTokenizer.from_pretrained(hub.repo_id, revision=hub.revision, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            hub.repo_id, revision=hub.revision, local_files_only=local_only, **kwargs
        )
        return model, tokenizer

    def unavailable(reason: str, err: BaseException | None = None) -> BaseModelUnavailableError:
        return BaseModelUnavailableError(
            f"cannot load base model {hub.repo_id!r} at revision {hub.revision}: {reason}"
            f"{f' ({err})' if err else ''}. Pre-download it on a machine with network access "
            f"(`hf download {hub.repo_id} --revision {hub.revision}`, then copy the HF cache "
            "or set HF_HOME to it), or point the profile's base section at a local model folder."
        )

    try:
        return load(local_only=True)
    except OSError as err:
        if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
            raise unavailable("not in the local cache and HF_HUB_OFFLINE is set", err) from err
    if not _hub_reachable():
        raise unavailable(f"not in the local cache and {os.environ.get('HF_ENDPOINT', 'https://huggingface.co')} "
                          "is unreachable")
    try:
        return load(local_only=False)
    except OSError as err:  # hub errors (not found, revision, connection) are all OSError
        raise unavailable("download failed", err) from err


def load_base(
    path_or_hub_config: str | os.PathLike[str] | HubBaseConfig,
    load_in_4bit: bool | None = None,
    device_map: Any = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, BaseModelInfo]:
    """Load a base model and tokenizer with every parameter frozen.

    Args:
        path_or_hub_config: A local model folder (tiny base or pre-downloaded
            snapshot) or a ``HubBaseConfig`` with a pinned revision.
        load_in_4bit: Quantize linear layers to NF4 (``bnb.nn.Linear4bit``);
            ``None`` uses the hub config's flag, or ``False`` for a folder.
        device_map: Passed to ``from_pretrained``.

    Returns:
        ``(model, tokenizer, info)``; the model is in eval mode.

    Raises:
        BaseModelUnavailableError: The hub model cannot be fetched.
        ValueError: A local base no longer matches its recorded fingerprint.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    hub = path_or_hub_config if isinstance(path_or_hub_config, HubBaseConfig) else None
    quantize = (hub.load_in_4bit if hub else False) if load_in_4bit is None else load_in_4bit
    dtype = _compute_dtype(hub.compute_dtype if hub else "auto", device_map)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": device_map}
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    if hub is not None:
        if hub.attn_implementation:
            kwargs["attn_implementation"] = hub.attn_implementation
        model, tokenizer = _load_from_hub(hub, kwargs)
        info = BaseModelInfo(
            hub.repo_id, content_hash({"repo_id": hub.repo_id, "revision": hub.revision}),
            dataclasses.asdict(hub), "hub", hub.revision,
        )
    else:
        root = Path(path_or_hub_config)
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"{root} is not a model folder (no config.json)")
        if not any((root / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            raise FileNotFoundError(f"{root} has no tokenizer (tokenizer.json); save one beside the model")
        fingerprint = fingerprint_model_dir(root)
        manifest = _read_manifest(root)
        if manifest and manifest.get("fingerprint") != fingerprint:
            raise ValueError(
                f"base in {root} was modified after it was built: fingerprint {fingerprint} "
                f"!= recorded {manifest.get('fingerprint')}; rebuild it"
            )
        tokenizer = AutoTokenizer.from_pretrained(root)
        model = AutoModelForCausalLM.from_pretrained(root, **kwargs)
        if manifest:
            info = BaseModelInfo(str(root), fingerprint, manifest["config"], manifest["source"], manifest["revision"])
        else:
            config = json.loads((root / "config.json").read_text(encoding="utf-8"))
            info = BaseModelInfo(str(root), fingerprint, config, "local", None)
    model.requires_grad_(False)
    model.eval()
    logger.info("loaded base %s (%s, 4-bit=%s, fingerprint %s)", info.path, info.source, quantize, info.fingerprint)
    return model, tokenizer, info
