"""ExportOptions: every knob of `t5rt export` in one dataclass, plus its CLI flags.

Torch-free on purpose: the CLI imports this module to build its parser before it knows
whether the 'export' extra (torch, transformers, onnx) is installed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from t5rt.errors import InvalidOptionError
from t5rt.manifest import CACHE_UPDATES, PRECISIONS

# Opset the in-place cache form needs (ONNX TensorScatter).
INPLACE_MIN_OPSET = 24
# protobuf cannot serialise a message over 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 64 * 2**20


@dataclass
class ExportOptions:
    precision: str = "fp32"            # fp32 | fp16 | bf16: dtype of activations between graphs
    max_input_len: int = 512           # longest source the encoder bias table covers exactly
    max_output_len: int = 256          # longest decoder cache (cache_len <= this)
    cache_update: str = "write"        # write: graph outputs new rows | inplace: TensorScatter
    opset: int = 17                    # inplace raises it to >= 24
    validate: bool = True              # run each graph in ORT CPU against the torch module
    validate_rtol: float = 1e-4        # max |ort - torch| / max |torch| allowed per output
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD  # bytes of weights per graph
    seed: int = 0                      # seed of the random validation inputs
    native_weights: bool = True        # also write decoder_weights.safetensors (backend="native")

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise InvalidOptionError naming the first bad option and what is allowed."""
        if self.precision not in PRECISIONS:
            raise InvalidOptionError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.cache_update not in CACHE_UPDATES:
            raise InvalidOptionError(
                f"cache_update {self.cache_update!r} is not one of {', '.join(CACHE_UPDATES)}")
        for name in ("max_input_len", "max_output_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InvalidOptionError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.opset, int) or not 14 <= self.opset <= 25:
            raise InvalidOptionError(f"opset must be an integer in [14, 25], got {self.opset!r}")
        if self.validate_rtol <= 0:
            raise InvalidOptionError(f"validate_rtol must be > 0, got {self.validate_rtol!r}")
        if self.external_data_threshold < 0:
            raise InvalidOptionError(
                f"external_data_threshold must be >= 0 bytes, got {self.external_data_threshold!r}")

    @property
    def graph_opset(self) -> int:
        """Opset of the written graphs: the in-place form needs TensorScatter (opset 24)."""
        if self.cache_update == "inplace":
            return max(self.opset, INPLACE_MIN_OPSET)
        return self.opset


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `t5rt export` (the positional MODEL and --out are the CLI's own)."""
    d = ExportOptions()
    parser.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                        help="dtype of hidden states and K/V between graphs (default %(default)s)")
    parser.add_argument("--max-input-len", type=int, default=d.max_input_len, metavar="N",
                        help="longest source sequence (default %(default)s)")
    parser.add_argument("--max-output-len", type=int, default=d.max_output_len, metavar="N",
                        help="longest decoder self-attention cache (default %(default)s)")
    parser.add_argument("--cache-update", choices=CACHE_UPDATES, default=d.cache_update,
                        help="write: the graph outputs new K/V rows and the runtime writes them; "
                             "inplace: the graph updates the caches (TensorScatter, opset 24)")
    parser.add_argument("--opset", type=int, default=d.opset, metavar="N",
                        help="ONNX opset (default %(default)s; inplace uses >= 24)")
    parser.add_argument("--no-validate", dest="validate", action="store_false",
                        help="skip running each graph in ONNX Runtime against PyTorch")
    parser.add_argument("--no-native-weights", dest="native_weights", action="store_false",
                        help="skip decoder_weights.safetensors (the native CUDA backend needs it)")


_CLI_FIELDS = ("precision", "max_input_len", "max_output_len", "cache_update", "opset", "validate", "native_weights")


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    """ExportOptions from the parsed flags of add_cli_arguments (other attributes ignored)."""
    return ExportOptions(**{k: getattr(args, k) for k in _CLI_FIELDS if hasattr(args, k)})
