"""The external-data files an ONNX graph refers to, read from its protobuf without ``onnx``.

ONNX Runtime loads a tensor stored outside the graph (``data_location = EXTERNAL``) from the
file its ``external_data`` entry ``location`` names, relative to the graph's folder. A hostile
or stale graph could name a file the manifest does not list (loaded without any checksum), or
one outside the bundle. :func:`external_data_locations` lists every such location in the
graph -- initializers, sparse initializers, tensors and subgraphs in node attributes (``If``,
``Loop``, ``Scan`` bodies, ``Constant`` values), functions and training graphs -- so the
runtime can refuse the graph before ONNX Runtime opens anything.

The walk reads only the message structure (tags and lengths) through ``mmap``: weight bytes
are skipped, not read, so a 350 MB graph costs a few milliseconds.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from typing import Union

# Field numbers from onnx.proto3. Only the paths that can lead to a TensorProto are followed.
_MODEL_GRAPH, _MODEL_TRAINING, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_GRAPHS = (1, 2)  # initialization, algorithm
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_FUNCTION_NODE = 7
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL, _TENSOR_LOCATION = 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
MAX_DEPTH = 64  # nested subgraphs; real models use a handful


class GraphFormatError(ValueError):
    """The file is not a well-formed ONNX protobuf."""


Buffer = Union[bytes, memoryview, mmap.mmap]


def _varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise GraphFormatError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: Buffer, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) for each field."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise GraphFormatError(f"field {number}: length {length} runs past the end of its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise GraphFormatError(f"field {number}: unsupported wire type {wire}")
        if pos > end:
            raise GraphFormatError(f"field {number} runs past the end of its message")


def _tensor(buf: Buffer, start: int, end: int, out: list[str]) -> None:
    external = False
    locations: list[str] = []
    for number, wire, a, b in _fields(buf, start, end):
        if number == _TENSOR_LOCATION and wire == 0:
            external = a == _EXTERNAL
        elif number == _TENSOR_EXTERNAL and wire == 2:
            key = value = None
            for n, w, c, d in _fields(buf, a, b):
                if w == 2 and n == _ENTRY_KEY:
                    key = bytes(buf[c:d])
                elif w == 2 and n == _ENTRY_VALUE:
                    value = bytes(buf[c:d])
            if key == b"location" and value is not None:
                locations.append(value.decode("utf-8", "backslashreplace"))
    if locations or external:
        # An EXTERNAL tensor without a location is refused by ONNX Runtime; report it anyway.
        out.extend(locations or ["<no location>"])


def _sparse(buf: Buffer, start: int, end: int, out: list[str]) -> None:
    for number, wire, a, b in _fields(buf, start, end):
        if wire == 2 and number in (_SPARSE_VALUES, _SPARSE_INDICES):
            _tensor(buf, a, b, out)


def _node(buf: Buffer, start: int, end: int, out: list[str], depth: int) -> None:
    for number, wire, a, b in _fields(buf, start, end):
        if number != _NODE_ATTRIBUTE or wire != 2:
            continue
        for n, w, c, d in _fields(buf, a, b):
            if w != 2:
                continue
            if n in (_ATTR_TENSOR, _ATTR_TENSORS):
                _tensor(buf, c, d, out)
            elif n in (_ATTR_GRAPH, _ATTR_GRAPHS):
                _graph(buf, c, d, out, depth + 1)
            elif n in (_ATTR_SPARSE, _ATTR_SPARSES):
                _sparse(buf, c, d, out)


def _graph(buf: Buffer, start: int, end: int, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise GraphFormatError(f"subgraphs nested more than {MAX_DEPTH} deep")
    for number, wire, a, b in _fields(buf, start, end):
        if wire != 2:
            continue
        if number == _GRAPH_INITIALIZER:
            _tensor(buf, a, b, out)
        elif number == _GRAPH_SPARSE:
            _sparse(buf, a, b, out)
        elif number == _GRAPH_NODE:
            _node(buf, a, b, out, depth)


def scan(buf: Buffer) -> list[str]:
    """External-data locations in the serialised ModelProto *buf*, in file order (repeats kept)."""
    out: list[str] = []
    end = len(buf)
    for number, wire, a, b in _fields(buf, 0, end):
        if wire != 2:
            continue
        if number == _MODEL_GRAPH:
            _graph(buf, a, b, out, 0)
        elif number == _MODEL_FUNCTIONS:
            for n, w, c, d in _fields(buf, a, b):
                if n == _FUNCTION_NODE and w == 2:
                    _node(buf, c, d, out, 1)
        elif number == _MODEL_TRAINING:
            for n, w, c, d in _fields(buf, a, b):
                if n in _TRAINING_GRAPHS and w == 2:
                    _graph(buf, c, d, out, 1)
    return out


def external_data_locations(path: str | os.PathLike[str]) -> list[str]:
    """The distinct ``location`` strings of the graph file at *path* (GraphFormatError if its
    protobuf structure is broken, OSError if it cannot be read)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return list(dict.fromkeys(scan(buf)))
