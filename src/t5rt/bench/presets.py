"""Model shapes the bench can build with random weights (no hub needed), and where models come from.

Shapes are those of the released checkpoints' config.json (DESIGN.md §7). A preset is built
as a `transformers.T5Config` with these values and HF's own random initialisation, so every
system in a run reads exactly the same weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError

# Shared by every T5-family config below (t5-small's config.json).
_COMMON: dict[str, Any] = dict(
    vocab_size=32128, relative_attention_num_buckets=32, relative_attention_max_distance=128,
    dropout_rate=0.0, layer_norm_epsilon=1e-6, decoder_start_token_id=0, pad_token_id=0,
    eos_token_id=1, is_encoder_decoder=True,
)
_V1_0 = dict(feed_forward_proj="relu", tie_word_embeddings=True)
_V1_1 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)

PRESETS: dict[str, dict[str, Any]] = {
    "t5-small": dict(_COMMON, **_V1_0, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                     num_decoder_layers=6, num_heads=8),
    "t5-base": dict(_COMMON, **_V1_0, d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                    num_decoder_layers=12, num_heads=12),
    "t5-large": dict(_COMMON, **_V1_0, d_model=1024, d_kv=64, d_ff=4096, num_layers=24,
                     num_decoder_layers=24, num_heads=16),
    "t5-3b": dict(_COMMON, **_V1_0, d_model=1024, d_kv=128, d_ff=16384, num_layers=24,
                  num_decoder_layers=24, num_heads=32),
    "flan-t5-base": dict(_COMMON, **_V1_1, d_model=768, d_kv=64, d_ff=2048, num_layers=12,
                         num_decoder_layers=12, num_heads=12),
    "flan-t5-large": dict(_COMMON, **_V1_1, d_model=1024, d_kv=64, d_ff=2816, num_layers=24,
                          num_decoder_layers=24, num_heads=16),
}
DEFAULT_PRESET = "t5-small"
PRESET_SEED = 0  # every preset is built from this torch seed, so caches are reproducible


@dataclass(frozen=True)
class ModelSource:
    """What --model named: a preset shape, a local save_pretrained directory, or a hub id."""

    kind: str  # "preset" | "dir" | "hub"
    name: str  # preset name, absolute directory, or hub id

    @property
    def label(self) -> str:
        return Path(self.name).name if self.kind == "dir" else self.name

    def fingerprint(self) -> str:
        """Identity of the weights, for cache keys: the preset's config, or the dir's file stats."""
        if self.kind == "preset":
            blob = json.dumps({"preset": PRESETS[self.name], "seed": PRESET_SEED}, sort_keys=True)
        elif self.kind == "dir":
            d = Path(self.name)
            stats = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime))
                           for p in d.iterdir() if p.is_file())
            blob = json.dumps({"dir": str(d), "files": stats})
        else:
            blob = json.dumps({"hub": self.name})
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolve_model(spec: str | None) -> ModelSource:
    """--model value -> ModelSource. A name that is neither a preset nor a directory is a hub id."""
    if not spec:
        return ModelSource("preset", DEFAULT_PRESET)
    if spec in PRESETS:
        return ModelSource("preset", spec)
    p = Path(spec).expanduser()
    if p.is_dir():
        return ModelSource("dir", str(p.resolve()))
    return ModelSource("hub", spec)


def materialize(source: ModelSource, hf_dir: Path, log=print) -> Path:
    """A save_pretrained directory holding the weights every system loads (created once).

    Presets are built with random weights (torch seed PRESET_SEED); hub ids are downloaded
    through transformers and saved locally so Optimum and CTranslate2 convert the same files.
    A local directory is used as it is.
    """
    if source.kind == "dir":
        return Path(source.name)
    if (hf_dir / "config.json").is_file():
        return hf_dir
    import torch  # lazily: `import t5rt.bench` stays torch-free
    from transformers import T5Config, T5ForConditionalGeneration

    tmp = hf_dir.with_name(hf_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
    if source.kind == "preset":
        log(f"[bench] building random-weight {source.name} (seed {PRESET_SEED}) -> {hf_dir}")
        torch.manual_seed(PRESET_SEED)
        model = T5ForConditionalGeneration(T5Config(**PRESETS[source.name])).eval()
    else:
        log(f"[bench] loading {source.name} from the hub -> {hf_dir}")
        from transformers import AutoModelForSeq2SeqLM

        try:
            model = AutoModelForSeq2SeqLM.from_pretrained(source.name).eval()
        except Exception as e:  # noqa: BLE001 - offline, unknown id, not a seq2seq model...
            msg = (str(e).strip().splitlines() or [""])[0][:200]
            raise InvalidOptionError(
                f"--model {source.name!r} is not a preset ({', '.join(PRESETS)}), not a local "
                f"directory, and could not be loaded from the hub ({type(e).__name__}: {msg})") from None
    model.save_pretrained(tmp)
    if source.kind == "hub":
        try:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(source.name).save_pretrained(tmp)
        except Exception as e:  # noqa: BLE001 - a model without a tokenizer still benchmarks
            log(f"[bench] no tokenizer saved ({type(e).__name__}); token ids are used directly")
    tmp.rename(hf_dir)
    return hf_dir
