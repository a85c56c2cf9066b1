"""Loading a base model: a local folder (the tiny base, a pre-downloaded snapshot) or a
hub repo at a pinned revision, optionally quantized to 4-bit NF4, every parameter frozen.

One GPU per process: on CUDA a base is placed whole on the process's current device
(:func:`default_device_map`), never split over GPUs; run one worker per GPU.
Local checkpoints (``base.kind: local``, GGUF included) are fingerprinted in ``local``.

References: Dettmers et al. 2023 (QLoRA, NF4).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch

from brainstacks_core.base.config import HubBaseConfig
from brainstacks_core.base.tiny_base import BaseModelInfo, _read_manifest, fingerprint_model_dir
from brainstacks_core.lineage.versioning import content_hash

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)


class BaseModelUnavailableError(RuntimeError):
    """A hub base cannot be fetched (offline, unknown repo or revision)."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compute_dtype(name: str, device_map: Any) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    on_cpu = device_map in ("cpu", {"": "cpu"}) or not torch.cuda.is_available()
    return torch.float32 if on_cpu else torch.bfloat16


def default_device_map() -> Any:
    """Where a base is loaded: the whole model on this process's current CUDA device, else the CPU.

    ``{"": k}`` rather than ``"auto"``: "auto" would split a model that does not fit
    over every visible GPU (and offload to the CPU), so two workers on one machine
    would share GPUs; one GPU per process (``CUDA_VISIBLE_DEVICES``) is the rule.
    """
    return {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"


def _from_pretrained_kwargs(quantize: bool, compute_dtype: str, device_map: Any) -> dict[str, Any]:
    """dtype, device map and (for NF4) the bitsandbytes config passed to ``from_pretrained``."""
    dtype = _compute_dtype(compute_dtype, device_map)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": device_map}
    if quantize:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    return kwargs


def _frozen(model, quantize: bool):
    if quantize:
        keep_4bit_weights_packed_for_training(model)
    model.requires_grad_(False)
    model.eval()
    return model


def load_checkpoint(folder: Path, load_in_4bit: bool, compute_dtype: str = "auto", device_map: Any = "cpu"
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load a safetensors model folder and its tokenizer, every parameter frozen (no fingerprint check).

    Args:
        folder: config.json, ``*.safetensors`` and tokenizer files.
        load_in_4bit: Quantize linear layers to NF4 on load.
        compute_dtype: ``auto`` (float32 on CPU, bfloat16 on CUDA) or a torch dtype name.
        device_map: Passed to ``from_pretrained``.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = _from_pretrained_kwargs(load_in_4bit, compute_dtype, device_map)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, **kwargs)
    logger.info("loaded local base %s (4-bit=%s, dtype %s)", folder, load_in_4bit, kwargs["dtype"])
    return _frozen(model, load_in_4bit), tokenizer


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

    hub.require_revision()

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
            "or set HF_HOME to it), or load a local copy instead: `base.kind: local` with `base.local.path` "
            "set to the model folder (or `base.local.gguf_file` to a GGUF file in it)."
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


def keep_4bit_weights_packed_for_training(model) -> int:
    """Switch off bitsandbytes' AVX512-bf16 CPU inference path on every ``Linear4bit``.

    On CPUs with AVX512-bf16, bitsandbytes >= 0.48 repacks a 4-bit weight *in place*
    the first time the layer runs in eval mode without grad (``_convert_weight_packed_for_cpu``).
    The repacked layout needs ``in_features`` divisible by the quant block size (it
    crashes on small models), and a model that evaluates between training steps
    (BestStackCallback, null-space collection) would flip layouts on every round.
    The standard NF4 path is used on every CPU instead; CUDA is unaffected.

    Returns:
        How many layers were switched.
    """
    import bitsandbytes as bnb

    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub = path_or_hub_config if isinstance(path_or_hub_config, HubBaseConfig) else None
    quantize = (hub.load_in_4bit if hub else False) if load_in_4bit is None else load_in_4bit
    kwargs = _from_pretrained_kwargs(quantize, hub.compute_dtype if hub else "auto", device_map)
    if hub is not None:
        if hub.attn_implementation:
            kwargs["attn_implementation"] = hub.attn_implementation
        model, tokenizer = _load_from_hub(hub, kwargs)
        info = BaseModelInfo(
            hub.repo_id, content_hash({"repo_id": hub.repo_id, "revision": hub.revision}),
            hub.model_dump(mode="json"), "hub", hub.revision,
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
    _frozen(model, quantize)
    logger.info("loaded base %s (%s, 4-bit=%s, fingerprint %s)", info.path, info.source, quantize, info.fingerprint)
    return model, tokenizer, info
