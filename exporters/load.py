"""Pipeline stage "load": a Hugging Face T5-family model from a hub id, a local directory or memory.

Loads in fp32 (the parity reference; precision passes lower it later), eval mode, checks the
config is one t5rt's graphs cover, computes a checksum of the weights and finds how HF scales
the decoder output before lm_head (T5 v1.0: d_model**-0.5; the rule moved between
transformers versions, so it is measured on the model itself).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ExportError

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
# Files copied next to the graphs when the source has them (tokenizer + generation defaults).
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "generation_config.json")


@dataclass
class LoadedModel:
    model: Any                    # transformers T5ForConditionalGeneration / MT5ForConditionalGeneration, fp32, eval
    source: str                   # what the user passed (hub id or path)
    directory: Path | None        # local save_pretrained directory (None for an in-memory model)
    checksum: str                 # "sha256:<hex>" of the weights
    logit_scale: float            # multiplier of the final decoder hidden state before lm_head

    @property
    def config(self) -> Any:
        return self.model.config

    def tokenizer_files(self) -> list[Path]:
        if self.directory is None:
            return []
        return [self.directory / f for f in TOKENIZER_FILES if (self.directory / f).is_file()]


def load_model(source: Any, log=print) -> LoadedModel:
    """`source`: a local directory (save_pretrained layout), a hub id, or a loaded HF model."""
    if isinstance(source, torch.nn.Module):
        model = source.float().eval()
        check_config(model.config)
        return LoadedModel(model, str(getattr(model.config, "_name_or_path", "") or "<in-memory model>"), None,
                           state_dict_checksum(model), detect_logit_scale(model))
    directory = resolve_directory(str(source), log)
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(directory)
    check_config(config)
    model = AutoModelForSeq2SeqLM.from_pretrained(directory, dtype=torch.float32).eval()
    return LoadedModel(model, str(source), directory, weights_checksum(directory), detect_logit_scale(model))


def resolve_directory(source: str, log=print) -> Path:
    """A local directory as is; otherwise download the hub repo's config, weights and tokenizer files."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ExportError(f"{path} has no config.json: pass a directory written by save_pretrained() or a hub id")
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ExportError(f"{source} is not a model directory (save_pretrained layout) or a hub id like 'google-t5/t5-small'")
    try:
        from huggingface_hub import snapshot_download

        log(f"  downloading {source} from the Hugging Face hub")
        path = Path(snapshot_download(source, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json",
                                                              *TOKENIZER_FILES]))
        if not any(p.name.endswith(".safetensors") for p in path.iterdir()):  # older repos: torch .bin only
            path = Path(snapshot_download(source, allow_patterns=["pytorch_model*.bin", "pytorch_model.bin.index.json"]))
        return path
    except Exception as e:  # noqa: BLE001 - network, auth, missing repo: all mean "cannot get it"
        raise ExportError(f"cannot download {source!r} from the hub ({type(e).__name__}: {e}); "
                          f"check the id and network, or pass a local save_pretrained directory") from None


def check_config(config: Any) -> None:
    """Raise ExportError if the graphs of exporters/wrap.py do not cover this config."""
    mt = getattr(config, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ExportError(f"model_type {mt!r} is not supported (t5rt exports {', '.join(SUPPORTED_MODEL_TYPES)})")
    if not getattr(config, "is_encoder_decoder", True):
        raise ExportError("the model is encoder-only; t5rt needs an encoder-decoder T5 (T5ForConditionalGeneration)")
    act = getattr(config, "dense_act_fn", None)
    from transformers.activations import ACT2FN

    if act not in ACT2FN:
        raise ExportError(f"feed_forward_proj {config.feed_forward_proj!r} (activation {act!r}) is unknown to transformers")
    for name in ("d_model", "d_kv", "num_heads", "num_layers", "num_decoder_layers", "vocab_size",
                 "relative_attention_num_buckets", "relative_attention_max_distance"):
        v = getattr(config, name, None)
        if not isinstance(v, int) or v < 1:
            raise ExportError(f"config.{name} = {v!r} must be a positive integer")


def weights_checksum(directory: Path) -> str:
    """sha256 over the weight files of a save_pretrained directory (names and bytes, sorted by name)."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise ExportError(f"{directory} has no weight files (*.safetensors or *.bin)")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def state_dict_checksum(model: torch.nn.Module) -> str:
    """sha256 over an in-memory model's parameters (names and fp32 bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + b"\0")
        h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def detect_logit_scale(model: Any) -> float:
    """1.0 or d_model**-0.5: which one HF multiplies the decoder output by before lm_head."""
    cfg = model.config
    seen: dict[str, torch.Tensor] = {}
    hook = model.decoder.final_layer_norm.register_forward_hook(lambda m, i, o: seen.setdefault("h", o))
    try:
        ids = torch.arange(min(4, cfg.vocab_size))[None, :]
        with torch.no_grad():
            logits = model(input_ids=ids, decoder_input_ids=ids[:, :2]).logits
            for scale in (1.0, cfg.d_model ** -0.5):
                if torch.allclose(model.lm_head(seen["h"] * scale), logits, rtol=1e-4, atol=1e-5):
                    return scale
    finally:
        hook.remove()
    raise ExportError("cannot reproduce the model's logits from its decoder output and lm_head; "
                      "this T5 variant is not supported")
