"""Load and save causal LMs and tokenizers: local HF folders, hub ids, and GGUF files.

One code path for the synthetic world's tiny model and real models. A local folder is always read
offline; a hub id is fetched only if the user has a network (``HF_HUB_OFFLINE=1`` forbids it).
``trust_remote_code`` stays off unless asked for.

Example::

    model, tok = load_model_and_tokenizer("runs/world/model")
    model, tok = load_model_and_tokenizer("/models/gemma", gguf_file="gemma-3-270m-Q4_K_M.gguf")
    model, tok = load_model_and_tokenizer("smollm2-135m")   # installed with `make models`
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from factkeep.config import help_field
from factkeep.errors import FactkeepError
from factkeep.models.catalog import resolve_model

log = logging.getLogger(__name__)


@dataclass
class ModelOptions:
    """The model options every command that loads a model shares (its config inherits them)."""

    model: str = help_field(
        "",
        "Model: a Hugging Face model folder, a hub id, or an installed catalog model "
        "(smollm2-135m, gemma3-270m; see 'make models') (required).",
    )
    gguf_file: str | None = help_field(None, "A GGUF file inside the model folder (needs gguf).")
    dtype: str = help_field("auto", "auto, float32, bfloat16 or float16.")
    device: str = help_field("auto", "auto (CUDA if present), cpu, cuda, cuda:1, ...")


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(name: str) -> torch.dtype | str:
    """Map a dtype name (``auto``, ``float32``, ``bf16``, ...) to what ``from_pretrained`` takes."""
    if name == "auto":
        return "auto"
    try:
        return _DTYPES[name]
    except KeyError:
        raise FactkeepError(
            f"unknown dtype '{name}'; choose auto or one of {sorted(_DTYPES)}"
        ) from None


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _dense(model: Any, name: str) -> Any:
    """A model loaded from GGUF as the ordinary dense model it now is (trainable, savable).

    transformers marks a model read from a GGUF file as quantized even when every weight was
    dequantised to a float tensor, and then ``Trainer`` refuses to fine-tune it and
    ``save_pretrained`` writes a ``quantization_config`` no loader needs. factkeep loads GGUF
    files dequantised (``GgufConfig(dequantize=True)``), so the marks are removed here.
    """
    packed = [n for n, p in model.named_parameters() if not p.is_floating_point()]
    if packed:
        raise FactkeepError(
            f"model '{name}' kept {len(packed)} weights packed (e.g. {packed[0]}); "
            "factkeep needs float weights: load it without quantization"
        )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model


def load_model(
    name_or_path: str,
    dtype: str = "auto",
    device: str | torch.device = "cpu",
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Load a causal LM (no tokenizer): a folder, a hub id, a GGUF file or a catalog name.

    A GGUF file's weights are dequantised to float (float32 unless ``dtype`` says otherwise), so
    the model trains, saves and evaluates like any other (:func:`_dense`).

    Args:
        name_or_path: a local HF model folder, a hub id, or a name of
            :data:`~factkeep.models.catalog.CATALOG` (e.g. ``smollm2-135m``).
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        device: where the model goes.
        gguf_file: a GGUF file name inside ``name_or_path`` (needs the ``gguf`` package).
        trust_remote_code: allow model code from the hub (off by default).

    Returns:
        The model, in eval mode, on ``device``.
    """
    # Lazily: slow to import, and config classes import this module (for 'COMMAND --help').
    from transformers import AutoModelForCausalLM, GgufConfig

    folder, gguf_file = resolve_model(name_or_path, gguf_file)
    kwargs = _hub_kwargs(folder, gguf_file, trust_remote_code)
    if gguf_file:
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=resolve_dtype(dtype), **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise FactkeepError(f"cannot load model '{name_or_path}': {exc}") from exc
    model = _dense(model, name_or_path)
    model = model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model


def _hub_kwargs(folder: str, gguf_file: str | None, trust_remote_code: bool) -> dict[str, Any]:
    """``from_pretrained`` options: local folders offline, the GGUF file, remote code."""
    if folder.startswith(("/", ".", "~")) and not Path(folder).expanduser().exists():
        raise FactkeepError(f"cannot load model '{folder}': no such folder")
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if Path(folder).exists():
        kwargs["local_files_only"] = True
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    return kwargs


def load_model_and_tokenizer(
    name_or_path: str,
    dtype: str = "auto",
    device: str = "auto",
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, ready for generation and training.

    Args:
        name_or_path: a local HF model folder, a hub id, or a catalog name (``smollm2-135m``;
            see :mod:`factkeep.models.catalog`).
        dtype: ``auto`` (the checkpoint's dtype; float32 for GGUF, which is dequantised),
            ``float32``, ``bfloat16`` or ``float16``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...
        gguf_file: a GGUF file name inside ``name_or_path`` (needs the ``gguf`` package).
        trust_remote_code: allow model code from the hub (off by default).

    Returns:
        ``(model, tokenizer)``; the tokenizer has a pad token (EOS if it had none).
    """
    # Lazily: slow to import, and config classes import this module (for 'COMMAND --help').
    from transformers import AutoTokenizer

    folder, gguf = resolve_model(name_or_path, gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, **_hub_kwargs(folder, gguf, trust_remote_code)
        )
    except (OSError, ValueError, ImportError) as exc:
        raise FactkeepError(f"cannot load model '{name_or_path}' (tokenizer): {exc}") from exc
    model = load_model(name_or_path, dtype, resolve_device(device), gguf_file, trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    log.info(
        "loaded %s (%s, %.1fM parameters, %s, %s)",
        name_or_path,
        model.config.model_type,
        sum(p.numel() for p in model.parameters()) / 1e6,
        next(model.parameters()).dtype,
        next(model.parameters()).device,
    )
    return model, tokenizer
