"""`t5rt export`: the fixed pipeline load -> trace -> patch -> validate -> save (DESIGN.md §3, §8).

    from t5rt.exporters.pipeline import export
    manifest = export("google-t5/t5-small", "out/t5-small", ExportOptions(precision="bf16"))

Graphs are written to a staging folder inside `out_dir` and moved into place, with
manifest.json last, only once every stage passed: a failed export leaves no manifest.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import onnx
import onnx_graphsurgeon as gs

from t5rt import __version__
from t5rt.manifest import GRAPH_NAMES, Dims, FileEntry, GraphSpec, Manifest, SpecialTokens, TensorSpec, sha256_file

from . import fusion, io_spec, patches
from .errors import ExportError
from .load import LoadedModel, load_model
from .options import ExportOptions
from .trace import TRACE_MAX_OPSET, trace_cross_kv, trace_decoder_step, trace_encoder
from .validate import validate_graph, validation_inputs

Log = Callable[[str], Any]


@dataclass
class GraphArtifact:
    """One graph through the pipeline: its torch module, and file(s) once written."""
    name: str
    module: Any                                # the exporters/wrap.py module it was traced from
    graph: gs.Graph                            # fp32, patched
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]                  # in the export's precision
    fp32_path: Path | None = None              # written fp32 graph (validation reads it)
    path: Path | None = None                   # written graph in the export's precision
    external_data: str | None = None


def export(model: Any, out_dir: str | Path, options: ExportOptions | None = None, log: Log = print,
           fusion_options: fusion.FusionOptions | None = None) -> Manifest:
    """Export `model` (hub id, save_pretrained directory, or a loaded HF T5 model) to `out_dir`.

    fusion_options: the speed passes of exporters/fusion.py; None reads T5RT_FUSION (default: all).
    """
    options = options or ExportOptions()
    options.check()
    fusion_options = fusion_options or fusion.FusionOptions.from_env()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".t5rt-export-", dir=out))
    t0 = time.perf_counter()

    def stage(i: int, what: str) -> None:
        log(f"[{i}/5] {what} ({time.perf_counter() - t0:.1f}s)")

    try:
        stage(1, f"load {model if isinstance(model, (str, Path)) else type(model).__name__}")
        loaded = load_model(model, log)
        cfg = loaded.config
        log(f"  {cfg.model_type}: d_model {cfg.d_model}, {cfg.num_layers}+{cfg.num_decoder_layers} layers, "
            f"{cfg.num_heads} heads x {cfg.d_kv}, ffn {cfg.feed_forward_proj}, logit scale {loaded.logit_scale:.4g}")

        stage(2, f"trace (opset {min(options.opset, TRACE_MAX_OPSET)})")
        artifacts = trace_all(loaded, options, staging)

        stage(3, f"patch ({options.cache_update} cache, {options.precision}, opset {options.graph_opset}, "
                 f"fusion: {', '.join(fusion_options.enabled) or 'none'})")
        for a in artifacts.values():
            patch_fp32(a, cfg, options, fusion_options)
            write_artifact(a, staging, options, log)

        if options.validate:
            stage(4, "validate (ONNX Runtime CPU vs PyTorch, fp32)")
            for a in artifacts.values():
                inputs = validation_inputs(a.name, cfg, options.max_input_len, options.max_output_len, options.seed)
                validate_graph(a.name, a.fp32_path, a.module, inputs, [s.name for s in a.inputs],
                               options.cache_update, options.validate_rtol, log)
        else:
            stage(4, "validate: skipped (--no-validate)")

        stage(5, f"save to {out}")
        manifest = save_export(loaded, artifacts, options, staging, out, log)
        log(f"done in {time.perf_counter() - t0:.1f}s: {', '.join(a.path.name for a in artifacts.values())}, manifest.json")
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def trace_all(loaded: LoadedModel, options: ExportOptions, workdir: Path) -> dict[str, GraphArtifact]:
    m, cfg, opset = loaded.model, loaded.config, options.opset
    traced = {
        "encoder": trace_encoder(m, options.max_input_len, opset, workdir),
        "cross_kv": trace_cross_kv(m, opset, workdir),
        "decoder_step": trace_decoder_step(m, options.max_output_len, loaded.logit_scale, opset, workdir),
    }
    out = {}
    for name, (module, proto) in traced.items():
        ins, outs = io_spec.graph_io(name, cfg, options.precision, options.cache_update)
        out[name] = GraphArtifact(name, module, gs.import_onnx(proto), ins, outs)
    return out


def patch_fp32(a: GraphArtifact, cfg: Any, options: ExportOptions,
               fusion_options: fusion.FusionOptions | None = None) -> None:
    """The fp32 passes, in order; a.graph ends as the validated parity reference."""
    g = patches.fold_constants(a.graph)
    g = patches.fuse_bias_lookup(g)
    g = fusion.apply_fusion(g, fusion_options)
    g = patches.upgrade_opset(g, options.graph_opset)
    roles = io_spec.roles(cfg, options.cache_update)
    if a.name == "decoder_step":
        step = roles["decoder_step"]
        ins, outs = io_spec.decoder_step_io(cfg, "fp32", "write")
        g = patches.name_io(g, ins, outs, a.name)
        if options.cache_update == "inplace":
            g = patches.cache_update_inplace(g, step["self_k"], step["self_v"], step["position"])
    fp32_in, fp32_out = io_spec.graph_io(a.name, cfg, "fp32", options.cache_update)
    a.graph = patches.name_io(g, fp32_in, fp32_out, a.name)


def lower_precision(graph: gs.Graph, precision: str) -> gs.Graph:
    """The fp32 graph in fp16/bf16: exporters/precision.py's passes (fp32 RMSNorm and logits, fp16 clamps)."""
    from . import precision as prec

    return prec.apply_precision(graph, precision)


def write_artifact(a: GraphArtifact, staging: Path, options: ExportOptions, log: Log) -> None:
    """fp32 graph -> staging (and, for fp16/bf16, the converted graph next to it); onnx.checker on each."""
    file = f"{a.name}.onnx"
    if options.precision == "fp32":
        a.path = a.fp32_path = staging / file
        a.external_data = save_graph(a.graph, a.path, options.external_data_threshold)
    else:
        (staging / "fp32").mkdir(exist_ok=True)
        a.fp32_path = staging / "fp32" / file
        save_graph(a.graph.copy(), a.fp32_path, options.external_data_threshold)
        g = lower_precision(a.graph.copy(), options.precision)
        g = patches.name_io(g, a.inputs, a.outputs, a.name)
        a.path = staging / file
        a.external_data = save_graph(g, a.path, options.external_data_threshold)
    onnx.checker.check_model(str(a.path), full_check=True)
    size = a.path.stat().st_size + ((staging / a.external_data).stat().st_size if a.external_data else 0)
    log(f"  {file}: {len(a.graph.nodes)} nodes, {size / 2**20:.1f} MiB"
        + (f" (weights in {a.external_data})" if a.external_data else ""))


def save_graph(graph: gs.Graph, path: Path, external_data_threshold: int) -> str | None:
    """Write `graph` to `path`; weights go to `<file>.data` when they exceed the threshold. Returns that name."""
    model = gs.export_onnx(graph)
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import), True)
    model.producer_name, model.producer_version = "t5rt", __version__
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights <= external_data_threshold:
        onnx.save_model(model, str(path))
        return None
    data = f"{path.name}.data"
    if (path.parent / data).exists():
        (path.parent / data).unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    return data


def special_tokens(model: Any) -> tuple[int, int, int]:
    """(pad, eos, decoder_start) as HF generate() resolves them: generation_config first, then config."""
    gen, cfg = getattr(model, "generation_config", None), model.config

    def pick(name: str) -> Any:
        for source in (gen, cfg):
            v = getattr(source, name, None) if source is not None else None
            if v is not None:
                return v[0] if isinstance(v, (list, tuple)) else v
        return None

    pad, eos = pick("pad_token_id"), pick("eos_token_id")
    start = pick("decoder_start_token_id")
    start = pad if start is None else start
    if pad is None or eos is None or start is None:
        raise ExportError(f"the model config lacks special tokens (pad {pad}, eos {eos}, decoder_start {start}); "
                          f"set them in config.json or generation_config.json")
    return int(pad), int(eos), int(start)


def save_export(loaded: LoadedModel, artifacts: dict[str, GraphArtifact], options: ExportOptions,
                staging: Path, out: Path, log: Log) -> Manifest:
    cfg = loaded.config
    files: dict[str, FileEntry] = {}

    def keep(name: str) -> None:
        """Every file the runtime reads is in manifest "files" with its sha256 and size (load() checks them)."""
        files[name] = FileEntry(sha256=sha256_file(out / name), bytes=(out / name).stat().st_size)

    graphs = {}
    for name in GRAPH_NAMES:
        a = artifacts[name]
        for f in (a.path.name, a.external_data):
            if f:
                shutil.move(str(staging / f), str(out / f))
                keep(f)
        graphs[name] = GraphSpec(file=a.path.name, sha256=files[a.path.name].sha256, inputs=tuple(a.inputs),
                                 outputs=tuple(a.outputs), external_data=a.external_data)
    copied = []
    for f in loaded.tokenizer_files():
        shutil.copyfile(f, out / f.name)
        copied.append(f.name)
        keep(f.name)
    gen = getattr(loaded.model, "generation_config", None)
    if "generation_config.json" not in copied and gen is not None:
        # the defaults HF generate() uses for this model (max_length, num_beams, ...), which the
        # runtime's generate() also uses; an in-memory model has no file to copy
        gen.to_json_file(out / "generation_config.json")
        copied.append("generation_config.json")
        keep("generation_config.json")
    if copied:
        log(f"  copied {', '.join(copied)}")
    pad, eos, start = special_tokens(loaded.model)
    native = None
    if options.native_weights:
        from .native_weights import write_decoder_weights

        native = write_decoder_weights(loaded.model, out, options.precision, options.max_output_len, loaded.logit_scale)
        keep(native.file)
        log(f"  wrote {native.file} (native decoder weights)")
    manifest = Manifest(
        exporter_version=__version__, source=loaded.source, source_checksum=loaded.checksum,
        model_type=cfg.model_type, config=json.loads(cfg.to_json_string(use_diff=False)),
        dims=Dims(d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff, num_heads=cfg.num_heads,
                  num_encoder_layers=cfg.num_layers, num_decoder_layers=cfg.num_decoder_layers,
                  vocab_size=cfg.vocab_size),
        precision=options.precision, max_input_len=options.max_input_len, max_output_len=options.max_output_len,
        cache_update=options.cache_update, opset=options.graph_opset,
        special_tokens=SpecialTokens(pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=start),
        graphs=graphs, roles=io_spec.roles(cfg, options.cache_update), tokenizer_files=tuple(copied),
        weights=native, files=files, directory=out)
    manifest.validate()
    manifest.save(out)
    return manifest
