"""Exports are untrusted input (DESIGN.md §11): mutate a real export, load + generate it in a
child process, and require a t5rt.T5rtError and a normal exit (no signal, no abort).

One export of a tiny model (weights in external .data files, a small trained sentencepiece
model as its tokenizer) is made per module; every case copies it, mutates one thing (a manifest field,
a file's bytes, a name, a link) and runs `load()` + `generate()` in a fresh interpreter, so a
crash (SIGSEGV, a glibc abort) shows as a failed test instead of killing pytest.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from conftest import export_tiny, make_t5, tiny_spiece  # noqa: E402

CHILD = textwrap.dedent("""
    import sys, t5rt
    d, verify = sys.argv[1], sys.argv[2] == "1"
    try:
        rt = t5rt.load(d, backend="ort", device="cpu", verify=verify)
        out = rt.generate(input_ids=[[5, 6, 7, 1], [9, 1]], max_new_tokens=6)
        out = rt.generate(input_ids=[[5, 6, 7, 1]], num_beams=2, max_new_tokens=6)
        out = rt.generate(["hello world", "the lazy dog"], max_new_tokens=6)
    except t5rt.T5rtError as e:
        print("T5RT_ERROR", type(e).__name__, str(e))
        sys.exit(3)
    print("OK", out.sequences)
""")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    model = make_t5(21, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    spiece = tiny_spiece(tmp_path_factory.mktemp("spiece") / "spiece.model")
    return export_tiny(model, tmp_path_factory, "untrusted", extra_files=[spiece], external_data_threshold=0)


def run_child(d: Path, verify: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", CHILD, str(d), "1" if verify else "0"],
                          capture_output=True, text=True, timeout=120, env=env)


# -- mutation helpers ------------------------------------------------------------------------------

def manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def save(d: Path, doc) -> None:
    (d / "manifest.json").write_text(json.dumps(doc))


def edit(fn):
    """A mutation of the manifest's JSON (fn changes it in place or returns a replacement)."""
    def apply(d: Path) -> None:
        doc = manifest(d)
        out = fn(doc)
        save(d, doc if out is None else out)
    return apply


def rehash(d: Path, doc: dict, name: str) -> None:
    """What a careful attacker does: make the manifest agree with a changed file."""
    data = (d / name).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    doc["files"][name] = {"sha256": digest, "bytes": len(data)}
    for g in doc["graphs"].values():
        if g["file"] == name:
            g["sha256"] = digest


def rewrite_file(name: str, change, consistent: bool):
    """Replace `name`'s bytes by change(bytes); consistent: also update the manifest's sha256/size."""
    def apply(d: Path) -> None:
        p = d / name
        data = change(p.read_bytes())
        p.write_bytes(data)
        if consistent:
            doc = manifest(d)
            rehash(d, doc, name)
            save(d, doc)
    return apply


def garbage(data: bytes) -> bytes:
    return random.Random(0).randbytes(len(data))


def all_act_dtypes(dtype: str, precision: str):
    """precision and every activation tensor's dtype changed together (the graphs still fp32)."""
    def fn(doc: dict) -> None:
        doc["precision"] = precision
        for g in doc["graphs"].values():
            for t in g["inputs"] + g["outputs"]:
                if t["dtype"] == "float32" and t["name"] != "logits":
                    t["dtype"] = dtype
    return fn


def resize_vocab(doc: dict) -> None:
    """vocab_size 384 -> 385 everywhere in the manifest (config and logits shape too)."""
    doc["dims"]["vocab_size"] += 1
    doc["config"]["vocab_size"] += 1
    for t in doc["graphs"]["decoder_step"]["outputs"]:
        if t["name"] == "logits":
            t["shape"][1] += 1


def resize_heads(doc: dict) -> None:
    """num_heads 4 -> 2 and d_kv 8 -> 16 everywhere in the manifest: shapes agree, graphs do not."""
    doc["dims"]["num_heads"], doc["dims"]["d_kv"] = 2, 16
    doc["config"]["num_heads"], doc["config"]["d_kv"] = 2, 16
    for g in doc["graphs"].values():
        for t in g["inputs"] + g["outputs"]:
            if len(t["shape"]) == 4:
                t["shape"][1], t["shape"][3] = 2, 16


def swap_graphs(a: str, b: str):
    def fn(doc: dict) -> None:
        ga, gb = doc["graphs"][a], doc["graphs"][b]
        for k in ("file", "sha256", "external_data"):
            ga[k], gb[k] = gb[k], ga[k]
    return fn


def swap_bytes(a: str, b: str, consistent: bool):
    def apply(d: Path) -> None:
        tmp = d / "swap.tmp"
        os.replace(d / a, tmp)
        os.replace(d / b, d / a)
        os.replace(tmp, d / b)
        if consistent:
            doc = manifest(d)
            rehash(d, doc, a)
            rehash(d, doc, b)
            save(d, doc)
    return apply


def file_outside(how: str):
    """The encoder graph read from outside the export: '../', an absolute path, or a symlink."""
    def apply(d: Path) -> None:
        outside = d.parent / "outside.onnx"
        shutil.copy(d / "encoder.onnx", outside)
        doc = manifest(d)
        if how == "symlink":
            (d / "encoder.onnx").unlink()
            (d / "encoder.onnx").symlink_to(outside)
        else:
            name = "../outside.onnx" if how == "dotdot" else str(outside)
            doc["files"][name] = doc["files"]["encoder.onnx"]
            doc["graphs"]["encoder"]["file"] = name
        save(d, doc)
    return apply


def link_to(target: str, name: str = "decoder_step.onnx"):
    def apply(d: Path) -> None:
        (d / name).unlink()
        (d / name).symlink_to(target)
    return apply


def replace_with(kind: str, name: str = "cross_kv.onnx"):
    def apply(d: Path) -> None:
        (d / name).unlink()
        if kind == "fifo":
            os.mkfifo(d / name)
        else:
            (d / name).mkdir()
    return apply


def manifest_symlink(d: Path) -> None:
    outside = d.parent / "manifest-outside.json"
    shutil.copy(d / "manifest.json", outside)
    (d / "manifest.json").unlink()
    (d / "manifest.json").symlink_to(outside)


def raw_manifest(text: str | bytes):
    def apply(d: Path) -> None:
        data = text if isinstance(text, bytes) else text.encode()
        (d / "manifest.json").write_bytes(data)
    return apply


def onnx_location_outside(d: Path) -> None:
    """The graph file itself (re-hashed) points its weights at a file outside the export."""
    import onnx

    m = onnx.load(str(d / "cross_kv.onnx"), load_external_data=False)
    shutil.copy(d / "cross_kv.onnx.data", d.parent / "stolen.data")
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../stolen.data"
    onnx.save(m, str(d / "cross_kv.onnx"))
    doc = manifest(d)
    rehash(d, doc, "cross_kv.onnx")
    save(d, doc)


def onnx_logits_dim(d: Path) -> None:
    """The decoder graph's declared logits width changed inside the ONNX file (re-hashed)."""
    import onnx

    m = onnx.load(str(d / "decoder_step.onnx"), load_external_data=False)
    for o in m.graph.output:
        if o.name == "logits":
            o.type.tensor_type.shape.dim[1].dim_value = 999
    onnx.save(m, str(d / "decoder_step.onnx"))
    doc = manifest(d)
    rehash(d, doc, "decoder_step.onnx")
    save(d, doc)


def role(graph: str, name: str, value):
    def fn(doc: dict) -> None:
        doc["roles"][graph][name] = value
    return fn


def drop(*path: str):
    def fn(doc: dict) -> None:
        o = doc
        for k in path[:-1]:
            o = o[k]
        del o[path[-1]]
    return fn


def put(value, *path):
    def fn(doc: dict) -> None:
        o = doc
        for k in path[:-1]:
            o = o[k]
        o[path[-1]] = value
    return fn


def first_input(graph: str, key: str, value):
    def fn(doc: dict) -> None:
        doc["graphs"][graph]["inputs"][0][key] = value
    return fn


# (id, mutation, words the error must contain (lower case), verify)
CASES = [
    # precision and dtypes (the segfault: fp32 graphs bound as fp16/bf16 buffers)
    ("precision-fp16", edit(put("fp16", "precision")), "dtype", True),
    ("precision-bf16", edit(put("bf16", "precision")), "dtype", True),
    ("precision-unknown", edit(put("fp8", "precision")), "precision", True),
    ("dtypes-all-fp16", edit(all_act_dtypes("float16", "fp16")), "precision edited", True),
    ("dtypes-all-bf16-noverify", edit(all_act_dtypes("bfloat16", "bf16")), "precision edited", False),
    # sha256 and sizes
    ("graph-sha256-wrong", edit(put("0" * 64, "graphs", "cross_kv", "sha256")), "sha256", True),
    ("files-sha256-wrong", edit(put("1" * 64, "files", "decoder_step.onnx", "sha256")), "sha256", True),
    ("files-sha256-uppercase", edit(lambda d: d["files"]["spiece.model"].update(
        sha256=d["files"]["spiece.model"]["sha256"].upper())), "sha256", True),
    ("tokenizer-bytes-flipped", rewrite_file("spiece.model", lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:],
                                             False), "sha256", True),
    ("data-bytes-flipped", rewrite_file("decoder_step.onnx.data", lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]),
                                        False), "sha256", True),
    ("graph-truncated", rewrite_file("encoder.onnx", lambda b: b[: len(b) // 2], False), "bytes", True),
    ("graph-truncated-noverify", rewrite_file("encoder.onnx", lambda b: b[: len(b) // 2], False), "bytes", False),
    ("graph-truncated-rehashed", rewrite_file("encoder.onnx", lambda b: b[: len(b) // 2], True), "onnx", True),
    ("graph-garbage-rehashed", rewrite_file("decoder_step.onnx", garbage, True), "onnx", True),
    ("graph-empty-rehashed", rewrite_file("cross_kv.onnx", lambda b: b"", True), "onnx", True),
    # a second ModelProto.graph: protobuf (and ONNX Runtime) merge the two, the verifier read the last
    ("graph-field-repeated-rehashed", rewrite_file("encoder.onnx", lambda b: b + b, True), "more than one graph", True),
    ("data-truncated-rehashed", rewrite_file("encoder.onnx.data", lambda b: b[: len(b) // 3], True), "", True),
    ("data-garbage-rehashed-short", rewrite_file("decoder_step.onnx.data", lambda b: garbage(b)[:64], True), "",
     True),
    ("tokenizer-garbage-rehashed", rewrite_file("spiece.model", garbage, True), "tokenizer", True),
    ("files-bytes-wrong", edit(put(12, "files", "encoder.onnx", "bytes")), "bytes", True),
    ("files-entry-missing", edit(drop("files", "decoder_step.onnx.data")), "files", True),
    ("tokenizer-file-deleted", lambda d: (d / "spiece.model").unlink(), "spiece.model", True),
    ("graph-file-deleted", lambda d: (d / "cross_kv.onnx").unlink(), "cross_kv.onnx", True),
    ("data-file-deleted-noverify", lambda d: (d / "encoder.onnx.data").unlink(), "encoder.onnx.data", False),
    # names, paths, links
    ("file-dotdot", file_outside("dotdot"), "..", True),
    ("file-absolute", file_outside("absolute"), "absolute", True),
    ("file-symlink-outside", file_outside("symlink"), "outside", True),
    ("file-symlink-outside-noverify", file_outside("symlink"), "outside", False),
    ("file-symlink-dev-zero", link_to("/dev/zero"), "outside", False),
    ("file-symlink-loop", link_to("decoder_step.onnx"), "cannot be opened", True),
    ("file-fifo", replace_with("fifo"), "regular file", False),
    ("file-directory", replace_with("dir"), "regular file", True),
    ("manifest-symlink-outside", manifest_symlink, "outside", True),
    ("external-data-dotdot", edit(lambda d: d["graphs"]["encoder"].update(external_data="../x.data")), "..", True),
    ("external-data-null", edit(put(None, "graphs", "encoder", "external_data")), "external", True),
    ("external-data-other-graph", edit(put("cross_kv.onnx.data", "graphs", "encoder", "external_data")),
     "encoder.onnx.data", True),
    ("onnx-location-outside", onnx_location_outside, "stolen.data", True),
    ("tokenizer-name-dotdot", edit(lambda d: d["tokenizer_files"].append("../../etc/passwd")), "..", True),
    ("file-name-nul", edit(put("encoder\x00.onnx", "graphs", "encoder", "file")), "nul", True),
    ("file-name-empty", edit(put("", "graphs", "encoder", "file")), "file", True),
    ("file-name-number", edit(put(7, "graphs", "encoder", "file")), "file", True),
    ("same-file-twice", edit(lambda d: d["graphs"]["cross_kv"].update(
        file="encoder.onnx", sha256=d["graphs"]["encoder"]["sha256"], external_data="encoder.onnx.data")),
     "same file twice", True),
    # graph files swapped (the issue: RuntimeError at the first generate)
    ("graphs-swapped-in-manifest", edit(swap_graphs("encoder", "decoder_step")), "", True),
    ("graphs-swapped-on-disk", swap_bytes("encoder.onnx", "cross_kv.onnx", False), "encoder.onnx", True),
    ("graphs-swapped-on-disk-noverify", swap_bytes("encoder.onnx", "cross_kv.onnx", False), "", False),
    ("graphs-swapped-on-disk-rehashed", swap_bytes("encoder.onnx", "cross_kv.onnx", True), "do not match", True),
    # roles (the issue: KeyError at the first generate)
    ("role-missing-tensor", edit(role("decoder_step", "logits", "nope")), "nope", True),
    ("role-per-layer-missing-tensor", edit(role("decoder_step", "self_k", ["self_k.0", "nope"])), "nope", True),
    ("roles-layers-swapped", edit(role("decoder_step", "self_k", ["self_k.1", "self_k.0"])), "silently", True),
    ("roles-k-v-swapped", edit(lambda d: d["roles"]["cross_kv"].update(cross_k=d["roles"]["cross_kv"]["cross_v"],
                                                                       cross_v=d["roles"]["cross_kv"]["cross_k"])),
     "silently", True),
    ("role-bound-twice", edit(role("decoder_step", "self_k", ["self_k.0", "self_k.0"])), "already bound", True),
    ("role-wrong-layer-count", edit(role("cross_kv", "cross_k", ["cross_k.0"])), "per decoder layer", True),
    ("role-absent", edit(drop("roles", "encoder", "attention_mask")), "missing", True),
    ("role-input-as-output", edit(role("encoder", "hidden", "input_ids")), "not an output", True),
    ("role-unknown", edit(role("encoder", "extra", "hidden")), "not a known field", True),
    ("role-number", edit(role("encoder", "hidden", 5)), "tensor name", True),
    ("roles-null", edit(put(None, "roles")), "roles", True),
    ("cache-update-inplace", edit(put("inplace", "cache_update")), "present_self_k", True),
    # the manifest's JSON shape and types (the issue: AttributeError / TypeError)
    ("manifest-list", raw_manifest("[1, 2, 3]"), "json object", True),
    ("manifest-null", raw_manifest("null"), "json object", True),
    ("manifest-string", raw_manifest('"t5rt-export"'), "json object", True),
    ("manifest-empty", raw_manifest(""), "json", True),
    ("manifest-not-utf8", raw_manifest(b"\xff\xfe{\x00"), "json", True),
    ("manifest-nan-literal", raw_manifest('{"format": "t5rt-export", "format_version": NaN}'), "nan", True),
    ("manifest-deeply-nested", raw_manifest("[" * 100000 + "]" * 100000), "nested", True),
    ("vocab-size-string", edit(put("384", "dims", "vocab_size")), "dims.vocab_size", True),
    ("vocab-size-float", edit(put(384.0, "dims", "vocab_size")), "dims.vocab_size", True),
    ("vocab-size-huge", edit(put(10 ** 30, "dims", "vocab_size")), "dims.vocab_size", True),
    ("vocab-size-bool", edit(put(True, "dims", "vocab_size")), "dims.vocab_size", True),
    ("dims-null", edit(put(None, "dims")), "dims", True),
    ("dims-list", edit(put([32, 8], "dims")), "dims", True),
    ("d-ff-disagrees", edit(put(65, "dims", "d_ff")), "d_ff", True),
    ("layers-disagree", edit(put(3, "dims", "num_decoder_layers")), "num_decoder_layers", True),
    ("vocab-disagrees-with-graph", edit(resize_vocab), "dims edited", True),
    ("heads-disagree-with-graph", edit(resize_heads), "dims edited", False),
    ("logits-dim-in-onnx", onnx_logits_dim, "logits", True),
    ("max-output-len-zero", edit(put(0, "max_output_len")), "max_output_len", True),
    ("max-input-len-negative", edit(put(-5, "max_input_len")), "max_input_len", True),
    ("max-output-len-huge", edit(put(10 ** 9, "max_output_len")), "max_output_len", True),
    ("eos-outside-vocab", edit(put(384, "special_tokens", "eos_token_id")), "eos_token_id", True),
    ("pad-negative", edit(put(-1, "special_tokens", "pad_token_id")), "pad_token_id", True),
    ("special-tokens-list", edit(put([0, 1, 0], "special_tokens")), "special_tokens", True),
    ("format-version-1", edit(put(1, "format_version")), "format_version", True),
    ("format-version-string", edit(put("2", "format_version")), "format_version", True),
    ("format-version-future", edit(put(99, "format_version")), "format_version", True),
    ("format-wrong", edit(put("onnx", "format")), "format", True),
    ("graphs-list", edit(put([], "graphs")), "graphs", True),
    ("graph-missing", edit(drop("graphs", "cross_kv")), "cross_kv", True),
    ("graph-extra", edit(put({}, "graphs", "extra")), "extra", True),
    ("tensor-dtype-unknown", edit(first_input("encoder", "dtype", "int8")), "dtype", True),
    ("tensor-shape-symbol", edit(first_input("encoder", "shape", ["batch", "seq"])), "symbolic", True),
    ("tensor-shape-float", edit(first_input("decoder_step", "shape", ["batch", 1.0])), "integer", True),
    ("tensor-shape-string", edit(first_input("encoder", "shape", "batch")), "list", True),
    ("tensor-name-dup", edit(lambda d: d["graphs"]["encoder"]["inputs"][1].update(name="input_ids")), "twice", True),
    ("inputs-empty", edit(put([], "graphs", "cross_kv", "inputs")), "empty", True),
    ("tokenizer-files-string", edit(put("spiece.model", "tokenizer_files")), "tokenizer_files", True),
    ("config-list", edit(put([], "config")), "config", True),
    ("opset-string", edit(put("17", "opset")), "opset", True),
    ("source-number", edit(put(5, "source")), "source", True),
]


@pytest.fixture(scope="module")
def outcomes(pristine, tmp_path_factory):
    """Every case mutated in its own copy, then all children run, a few at a time -> {id: process}."""
    dirs = {}
    for name, mutate, _, verify in CASES:
        d = tmp_path_factory.mktemp(name) / "export"
        shutil.copytree(pristine, d, symlinks=True)
        mutate(d)
        dirs[name] = (d, verify)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(run_child, d, verify) for name, (d, verify) in dirs.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name, words", [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_mutated_export_is_a_t5rt_error_in_a_child(outcomes, name, words):
    p = outcomes[name]
    assert p.returncode >= 0, f"child killed by signal {-p.returncode}: {p.stderr[-2000:]}"
    assert p.returncode == 3, f"child exited {p.returncode} without a T5rtError:\n{p.stdout}\n{p.stderr[-3000:]}"
    line = p.stdout.strip().splitlines()[-1]
    assert line.startswith("T5RT_ERROR"), line
    assert words.lower() in line.lower(), f"the error does not say {words!r}: {line}"


def test_pristine_copy_loads_and_generates_in_a_child(pristine, tmp_path):
    """The harness can pass: the unmutated copy runs (with and without hashing)."""
    d = tmp_path / "export"
    shutil.copytree(pristine, d, symlinks=True)
    for verify in (True, False):
        p = run_child(d, verify)
        assert p.returncode == 0, p.stdout + p.stderr[-3000:]
        assert p.stdout.startswith("OK [[")


def test_verify_false_skips_only_the_hashing(pristine, tmp_path):
    """Same-size different bytes in a weights file: verify=True refuses, verify=False loads
    (the user said the disk is trusted); the report says which ran and what hashing cost."""
    import t5rt

    d = tmp_path / "export"
    shutil.copytree(pristine, d, symlinks=True)
    p = d / "cross_kv.onnx.data"
    data = bytearray(p.read_bytes())
    data[0] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(t5rt.InvalidExportError, match="cross_kv.onnx.data has sha256"):
        t5rt.load(d, backend="ort", device="cpu")
    rt = t5rt.load(d, backend="ort", device="cpu", verify=False)
    assert rt.verification.hashed is False and rt.verification.bytes == 0
    good = t5rt.load(pristine, backend="ort", device="cpu")
    rep = good.verification
    assert rep.hashed and rep.files == len(good.manifest.files) >= 8  # 3 graphs, 3 .data, tokenizer files
    assert rep.bytes == sum(e.bytes for e in good.manifest.files.values())
    assert 0 < rep.hash_s <= rep.total_s


def test_manifest_lists_every_file_the_runtime_reads(pristine):
    """The exporter writes what the verifier needs: format_version 2, sha256 + size of every
    graph, external-data, tokenizer and native weights file."""
    from t5rt.manifest import FORMAT_VERSION, load_manifest, sha256_file

    m = load_manifest(pristine)
    assert m.format_version == FORMAT_VERSION == 2
    named = {g.file for g in m.graphs.values()} | {g.external_data for g in m.graphs.values()}
    named |= set(m.tokenizer_files)
    if m.weights is not None:
        named.add(m.weights.file)  # the native engine's decoder weights (t5rt.weights)
    assert None not in named and "spiece.model" in named
    assert set(m.files) == named
    for name, e in m.files.items():
        assert e.sha256 == sha256_file(pristine / name) and e.bytes == (pristine / name).stat().st_size


def test_onnx_io_reads_what_onnx_reads(pristine):
    """t5rt.onnx_io (no onnx, no weights loaded) against the onnx package on the real graphs."""
    import onnx

    from t5rt.onnx_io import read_graph_io

    def ref(values):
        out = {}
        for v in values:
            dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
                         for d in v.type.tensor_type.shape.dim)
            out[v.name] = (v.type.tensor_type.elem_type, dims)
        return out

    for f in ("encoder.onnx", "cross_kv.onnx", "decoder_step.onnx"):
        io = read_graph_io(pristine / f)
        m = onnx.load(str(pristine / f), load_external_data=False)
        assert io.inputs == ref(m.graph.input) and io.outputs == ref(m.graph.output)
        locations = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
        assert io.external_files == locations == {f + ".data"}
