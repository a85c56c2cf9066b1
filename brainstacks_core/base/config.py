"""Typed ``base:`` profile section: the tiny CPU base, a hub model at a pinned revision or a local checkpoint.

Pure pydantic (no torch/transformers), so ``brainstacks config check`` stays fast.

Example (``configs/demo.yaml``)::

    base:
      kind: tiny
      tiny: {hidden_size: 64, num_hidden_layers: 2, pretrain_steps: 150}

    base:            # configs/smollm2-cpu.yaml: a GGUF file (dequantized once into the store)
      kind: local
      local: {path: models/smollm2, gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>")
SHA_RE = re.compile(r"[0-9a-f]{40}")


class TinyCorpusConfig(BaseModel):
    """The tiny base's own pinned pretraining corpus: deterministic generated text, never the fine-tuning data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    generators: tuple[str, ...] = Field(("chat", "code", "math", "medical", "reasoning"),
                                        description="Demo generators whose text the base is pretrained on.")
    rows_per_generator: int = Field(300, ge=1, description="Rows generated per generator.")
    seed: int = Field(104729, description="Generator seed; differs from the data section's seed, so the corpus "
                                          "and the fine-tuning rows are distinct.")


class TinyBaseConfig(BaseModel):
    """Shape and pretraining of the tiny CPU base (a LlamaForCausalLM with its own BPE)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(2048, description="Embedding rows; the BPE vocabulary is trained up to this size.")
    hidden_size: int = Field(64, ge=8, description="Model width H.")
    intermediate_size: int = Field(176, ge=8, description="MLP width I.")
    num_hidden_layers: int = Field(2, ge=1, description="Decoder layers L.")
    num_attention_heads: int = Field(4, ge=1, description="Query heads; hidden_size must divide by it.")
    num_key_value_heads: int = Field(2, ge=1, description="Key/value heads (grouped-query attention).")
    max_position_embeddings: int = Field(512, ge=16, description="Longest sequence the RoPE tables cover.")
    pretrain_steps: int = Field(200, ge=0, description="Causal-LM optimizer steps on the pretraining corpus.")
    pretrain_lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate (warmup, cosine decay).")
    pretrain_batch_size: int = Field(8, ge=1, description="Sequences per pretraining step.")
    seq_len: int = Field(128, ge=8, description="Tokens per packed pretraining sequence.")
    seed: int = Field(0, description="Seed of initialisation and batch sampling.")
    corpus: TinyCorpusConfig = Field(default_factory=TinyCorpusConfig,
                                     description="Pinned pretraining corpus (and tokenizer corpus), generated "
                                                 "offline; editing a dataset never changes the base.")

    @model_validator(mode="after")
    def _shapes(self) -> "TinyBaseConfig":
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (byte alphabet + specials)")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        if self.seq_len > self.max_position_embeddings:
            raise ValueError("seq_len must not exceed max_position_embeddings")
        return self

    @classmethod
    def from_dict(cls, data: dict) -> "TinyBaseConfig":
        """Parse a dict; unknown keys raise."""
        return cls.model_validate(data)


class HubBaseConfig(BaseModel):
    """A hub base model pinned to one commit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo_id: str = Field(..., min_length=1, description="Hub repository, e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0.")
    revision: str | None = Field(..., description="Full 40-hex commit sha; branches and tags move, so they are "
                                                  "refused. null = not pinned yet: the profile loads (data "
                                                  "preparation works) but loading the base fails until it is set.")
    load_in_4bit: bool = Field(True, description="Quantize linear layers to NF4 on load (QLoRA).")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = float32 on CPU, bfloat16 on CUDA.")
    attn_implementation: str | None = Field(None, description="Passed to from_pretrained (None: library default).")

    @field_validator("revision")
    @classmethod
    def _pinned(cls, v: str | None) -> str | None:
        if v is not None and not SHA_RE.fullmatch(v):
            raise ValueError(f"must be a pinned 40-hex commit sha, got {v!r}; branches like 'main' move and break "
                             "reproducibility (find the sha on the repo's 'Files and versions' page)")
        return v

    def require_revision(self) -> str:
        """The pinned revision, or a clear error naming the key to set."""
        if self.revision is None:
            raise ValueError(f"base.hub.revision is not set for {self.repo_id!r}: pin the 40-hex commit sha you "
                             "downloaded before loading the base")
        return self.revision

    @classmethod
    def from_dict(cls, data: dict) -> "HubBaseConfig":
        """Parse a dict; unknown keys raise."""
        return cls.model_validate(data)


class LocalBaseConfig(BaseModel):
    """A checkpoint on this machine: a folder of safetensors + tokenizer, or a GGUF file in a folder.

    Identified by content (sha256 of its files), never by its path: moving the
    folder keeps the fingerprint, changing one byte changes it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(..., description="The model folder (config.json, *.safetensors, tokenizer files) or the "
                                        "folder holding `gguf_file`; a relative path resolves against the "
                                        "repository root (the parent of configs/).")
    gguf_file: str | None = Field(None, description="A GGUF file name inside `path` (e.g. "
                                                    "SmolLM2-135M-Instruct.Q4_1.gguf): dequantized once into "
                                                    "<store>/base/<fingerprint>/ as safetensors; null = `path` "
                                                    "is a safetensors folder.")
    load_in_4bit: bool = Field(False, description="Quantize linear layers to NF4 on load (bitsandbytes; slow on "
                                                  "CPU).")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = float32 on CPU, bfloat16 on CUDA.")

    @field_validator("gguf_file")
    @classmethod
    def _file_name(cls, v: str | None) -> str | None:
        if v is not None and (not v.endswith(".gguf") or Path(v).name != v):
            raise ValueError(f"must be a .gguf file name inside `path` (no folders), got {v!r}")
        return v

    def resolve(self, repo_root: Path) -> Path:
        """``path`` made absolute against the repository root."""
        return self.path if self.path.is_absolute() else (Path(repo_root) / self.path).resolve()


class BaseConfig(BaseModel):
    """The ``base:`` section: which base model every stack of the profile is trained on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["tiny", "hub", "local"] = Field(
        "tiny", description="tiny: built and pretrained here on its own corpus; hub: a pinned hub model (GPU "
                            "workers); local: a checkpoint folder or GGUF file on this machine (`local:`).")
    load_in_4bit: bool = Field(False, description="Quantize the tiny base to NF4 (bitsandbytes; slow on CPU). "
                                                  "Hub and local bases set this in `hub` / `local`.")
    tiny: TinyBaseConfig = Field(default_factory=TinyBaseConfig, description="Shape of the tiny base.")
    hub: HubBaseConfig | None = Field(None, description="The hub model (kind: hub).")
    local: LocalBaseConfig | None = Field(None, description="The local checkpoint (kind: local).")

    @model_validator(mode="after")
    def _hub_given(self) -> "BaseConfig":
        if self.kind == "hub" and self.hub is None:
            raise ValueError("kind 'hub' needs a `hub:` section with repo_id and revision")
        if self.kind == "local" and self.local is None:
            raise ValueError("kind 'local' needs a `local:` section with path (and gguf_file for a GGUF file)")
        return self

    @property
    def four_bit(self) -> bool:
        """Whether the base is loaded in 4-bit NF4."""
        if self.kind == "hub" and self.hub:
            return self.hub.load_in_4bit
        if self.kind == "local" and self.local:
            return self.local.load_in_4bit
        return self.load_in_4bit

    @property
    def compute_dtype(self) -> str:
        """The compute dtype the base is loaded in (``auto`` for the tiny base)."""
        section = self.hub if self.kind == "hub" else self.local if self.kind == "local" else None
        return section.compute_dtype if section is not None else "auto"
