"""A graph's declared inputs/outputs and external-data file names, read from an ONNX file
without loading its weights (and without `onnx`): the protobuf wire format, streamed, seeking
over everything else (DESIGN.md §11: the manifest is checked against the graphs' real I/O).

    io = read_graph_io(path)     # GraphIO(inputs={name: (elem_type, dims)}, outputs=..., external_files=set)

dims: per axis an int (a fixed size), a str (a symbolic name) or None (unknown). Anything that
is not a well-formed ONNX ModelProto raises OnnxFormatError (a ValueError) saying where.
Messages read (onnx.proto): ModelProto.graph = 7; GraphProto.node = 1, .initializer = 5,
.input = 11, .output = 12; NodeProto.attribute = 5; AttributeProto.t = 5, .tensors = 10;
ValueInfoProto.name = 1, .type = 2; TypeProto.tensor_type = 1; Tensor.elem_type = 1, .shape = 2;
TensorShapeProto.dim = 1; Dimension.dim_value = 1, .dim_param = 2; TensorProto.external_data = 13;
StringStringEntryProto.key = 1, .value = 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MAX_SMALL = 1 << 20  # a ValueInfo / external-data entry is far smaller; larger = garbage
_MAX_DEPTH = 8

Dim = int | str | None


class OnnxFormatError(ValueError):
    """Not a well-formed ONNX ModelProto (truncated, garbage, or missing its graph)."""


@dataclass
class GraphIO:
    inputs: dict[str, tuple[int, tuple[Dim, ...]]] = field(default_factory=dict)
    outputs: dict[str, tuple[int, tuple[Dim, ...]]] = field(default_factory=dict)
    external_files: set[str] = field(default_factory=set)  # `location` of every external tensor


class _Stream:
    """Field-by-field reads of a protobuf message within [pos, end) of a file."""

    def __init__(self, f: BinaryIO, end: int):
        self.f, self.end = f, end

    def _byte(self) -> int:
        b = self.f.read(1)
        if not b:
            raise OnnxFormatError("truncated (the file ends inside a field)")
        return b[0]

    def varint(self) -> int:
        result = shift = 0
        while True:
            b = self._byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise OnnxFormatError("a varint longer than 10 bytes")

    def fields(self) -> Iterator[tuple[int, int, Any]]:
        """-> (field number, wire type, value): varint -> int, LEN -> (offset, length) unread."""
        while self.f.tell() < self.end:
            key = self.varint()
            num, wt = key >> 3, key & 7
            if num == 0:
                raise OnnxFormatError("field number 0")
            if wt == _VARINT:
                yield num, wt, self.varint()
            elif wt == _LEN:
                n = self.varint()
                start = self.f.tell()
                if start + n > self.end:
                    raise OnnxFormatError(f"a field of {n} bytes runs past its message's end")
                yield num, wt, (start, n)
                self.f.seek(start + n)
            elif wt in (_I64, _I32):
                n = 8 if wt == _I64 else 4
                if self.f.tell() + n > self.end:
                    raise OnnxFormatError("truncated fixed-size field")
                self.f.seek(n, 1)
                yield num, wt, None
            else:
                raise OnnxFormatError(f"wire type {wt} (not in ONNX's protobuf)")
        if self.f.tell() != self.end:
            raise OnnxFormatError("a message overruns its length")

    def sub(self, span: tuple[int, int]) -> "_Stream":
        self.f.seek(span[0])
        return _Stream(self.f, span[0] + span[1])

    def text(self, span: tuple[int, int]) -> str:
        if span[1] > _MAX_SMALL:
            raise OnnxFormatError(f"a {span[1]}-byte name")
        self.f.seek(span[0])
        data = self.f.read(span[1])
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise OnnxFormatError("a name that is not UTF-8") from None


def read_graph_io(path: str | Path) -> GraphIO:
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        top = _Stream(f, size)
        graph = None
        for num, wt, v in top.fields():
            if num == 7 and wt == _LEN:
                if graph is not None:  # protobuf would merge the two; what ORT reads is not what we read
                    raise OnnxFormatError("more than one graph (ModelProto field 7 repeated)")
                graph = v
        if graph is None:
            raise OnnxFormatError("no graph (ModelProto field 7)")
        out = GraphIO()
        g = top.sub(graph)
        for num, wt, v in list(g.fields()):
            if wt != _LEN:
                continue
            if num in (11, 12):
                name, info = _value_info(g.sub(v))
                (out.inputs if num == 11 else out.outputs)[name] = info
            elif num == 5:
                _tensor_locations(g.sub(v), out.external_files)
            elif num == 15:
                _sparse_locations(g.sub(v), out.external_files)
            elif num == 1:
                _node_locations(g.sub(v), out.external_files)
        return out


def _value_info(s: _Stream) -> tuple[str, tuple[int, tuple[Dim, ...]]]:
    name, elem, dims = None, 0, ()
    for num, wt, v in list(s.fields()):
        if num == 1 and wt == _LEN:
            name = s.text(v)
        elif num == 2 and wt == _LEN:
            elem, dims = _type(s.sub(v))
    if name is None:
        raise OnnxFormatError("a graph input/output without a name")
    return name, (elem, dims)


def _type(s: _Stream) -> tuple[int, tuple[Dim, ...]]:
    elem, dims = 0, ()
    for num, wt, v in list(s.fields()):
        if num == 1 and wt == _LEN:  # tensor_type
            t = s.sub(v)
            for n2, w2, v2 in list(t.fields()):
                if n2 == 1 and w2 == _VARINT:
                    elem = v2
                elif n2 == 2 and w2 == _LEN:
                    dims = _shape(t.sub(v2))
    return elem, dims


def _shape(s: _Stream) -> tuple[Dim, ...]:
    dims: list[Dim] = []
    for num, wt, v in list(s.fields()):
        if num == 1 and wt == _LEN:
            d = s.sub(v)
            dim: Dim = None
            for n2, w2, v2 in list(d.fields()):
                if n2 == 1 and w2 == _VARINT:
                    dim = v2 if v2 < 1 << 63 else v2 - (1 << 64)
                elif n2 == 2 and w2 == _LEN:
                    dim = d.text(v2)
            dims.append(dim)
    return tuple(dims)


def _tensor_locations(s: _Stream, into: set[str]) -> None:
    """TensorProto: the `location` of its external data, if any (raw_data etc. are skipped)."""
    for num, wt, v in list(s.fields()):
        if num == 13 and wt == _LEN:
            entry = s.sub(v)
            key = value = None
            for n2, w2, v2 in list(entry.fields()):
                if n2 == 1 and w2 == _LEN:
                    key = entry.text(v2)
                elif n2 == 2 and w2 == _LEN:
                    value = entry.text(v2)
            if key == "location" and value is not None:
                into.add(value)


def _sparse_locations(s: _Stream, into: set[str]) -> None:
    """SparseTensorProto: its values (field 1) and indices (field 2) are TensorProtos, which may
    keep their data outside the file too."""
    for num, wt, v in list(s.fields()):
        if num in (1, 2) and wt == _LEN:
            _tensor_locations(s.sub(v), into)


def _node_locations(s: _Stream, into: set[str], depth: int = 0) -> None:
    """NodeProto: external tensors held in its attributes (a Constant's value, say), and in
    its subgraphs' initializers and nodes."""
    if depth > _MAX_DEPTH:
        raise OnnxFormatError("subgraphs nested too deeply")
    for num, wt, v in list(s.fields()):
        if num != 5 or wt != _LEN:
            continue
        attr = s.sub(v)
        for n2, w2, v2 in list(attr.fields()):
            if w2 != _LEN:
                continue
            if n2 in (5, 10):  # t, tensors
                _tensor_locations(attr.sub(v2), into)
            elif n2 in (22, 23):  # sparse_tensor, sparse_tensors
                _sparse_locations(attr.sub(v2), into)
            elif n2 in (6, 11):  # g, graphs
                sub = attr.sub(v2)
                for n3, w3, v3 in list(sub.fields()):
                    if w3 == _LEN and n3 == 5:
                        _tensor_locations(sub.sub(v3), into)
                    elif w3 == _LEN and n3 == 15:
                        _sparse_locations(sub.sub(v3), into)
                    elif w3 == _LEN and n3 == 1:
                        _node_locations(sub.sub(v3), into, depth + 1)
