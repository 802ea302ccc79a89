"""How an ONNX graph stores its word-embedding table, the largest tensor of a small model.

- :func:`compact_embedding_rows`: vocabulary clustering (`slimformer prune --method vocab --vocab-unseen
  cluster`) gives every token the training data never uses the row of its k-means cluster, so most of the
  table's rows repeat. This pass keeps one copy of each distinct row plus an index (token id -> row; uint16
  where the rows fit, cast to int32 at load) and
  inserts `Gather(index, input_ids)` in front of the embedding lookup (a plain `Gather` or ORT's fused
  `EmbedLayerNormalization` / `QEmbedLayerNormalization`). The logits do not change, the tokenizer does not
  change, and the file shrinks by the repeated rows.
- :func:`pack_word_embeddings_4bit` (`slimformer quantize --word-embeddings-4bit`): the table is stored as 4-bit
  codes with one scale and offset per row (blocks of 32-128 values scored no better on CLINC150), and a
  subgraph of standard ops unpacks it. Every input of that subgraph is a constant, so ONNX Runtime's constant
  folding (any optimization level but "disable") computes the float table once when the session loads, and the
  lookup then runs as fast as before: the file holds half the table's bytes, the session a float table (more
  resident memory, in BENCHMARKS.md). Rows that hold two values only (vocabulary pruning's `--vocab-unseen sign`)
  go 1 bit a value with an fp16 low value and step per row, behind a token -> row index, when at least
  `MIN_SAVING` of the rows are such.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EMBED_OPS = {"EmbedLayerNormalization": (0, 2), "QEmbedLayerNormalization": (0, 2)}  # op: (ids input, table input)
MIN_SAVING = 0.1  # compact only when at least this share of the rows repeats
ROW_INDEX_SUFFIX = "_row_of_token"  # the token id -> row index compact_embedding_rows (and 1-bit packing) adds


def compact_embedding_rows(source: str | Path, destination: str | Path) -> dict[str, Any] | None:
    """Write `source` to `destination` with the word-embedding table's repeated rows stored once.

    Returns {"rows_before", "rows_after", "table"} when the table was compacted, None when the graph was copied
    unchanged (no word-embedding lookup found, or fewer than 10% of its rows repeat).
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    found = _word_embedding_lookup(graph)
    if found is None:
        _copy_unchanged(source, destination)
        return None
    node, ids_input, table_input = found
    table_name = node.input[table_input]
    table_proto = next(init for init in graph.initializer if init.name == table_name)
    table = numpy_helper.to_array(table_proto)
    distinct, row_of_token = np.unique(table.reshape(table.shape[0], -1), axis=0, return_inverse=True)
    if len(distinct) > (1 - MIN_SAVING) * table.shape[0]:
        _copy_unchanged(source, destination)
        return None

    table_proto.CopyFrom(numpy_helper.from_array(distinct.reshape((-1, *table.shape[1:])), table_name))
    _insert_row_index(graph, node, ids_input, table_name, row_of_token.reshape(-1))
    onnx.save(model, str(destination))
    return {"table": table_name, "rows_before": int(table.shape[0]), "rows_after": len(distinct)}


def _insert_row_index(graph: Any, node: Any, ids_input: int, table_name: str, row_of_token: Any) -> str:
    """Make `node` look its rows up through `row_of_token` (token id -> row): a `Gather` of that index by the token
    ids, inserted in front of `node` (the index stored uint16 where the rows fit, cast to int32 once). Returns the
    index's name."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    index_name = f"{table_name}{ROW_INDEX_SUFFIX}"
    rows = np.asarray(row_of_token)
    if rows.max(initial=0) <= np.iinfo(np.uint16).max:  # stored in half the bytes, widened once at session load
        graph.initializer.append(numpy_helper.from_array(rows.astype(np.uint16), f"{index_name}_uint16"))
        widen = helper.make_node("Cast", [f"{index_name}_uint16"], [index_name], to=TensorProto.INT32)
        graph.node.insert(0, widen)  # first: every reader of the table may look up through the index
    else:
        graph.initializer.append(numpy_helper.from_array(rows.astype(np.int32), index_name))
    row_ids = f"{node.input[ids_input]}_embedding_row"
    _look_up_through(graph, node, ids_input, index_name, row_ids, name=f"{table_name}_row_lookup")
    return index_name


def _look_up_through(graph: Any, reader: Any, ids_input: int, index_name: str, row_ids: str, name: str = "") -> None:
    """Make `reader` read the rows `index_name` gives its token ids: a `Gather(index, ids)` inserted before it."""
    from onnx import helper

    lookup = helper.make_node("Gather", [index_name, reader.input[ids_input]], [row_ids], name=name)
    reader.input[ids_input] = row_ids
    graph.node.insert(list(graph.node).index(reader), lookup)


def _reorder_rows(graph: Any, node: Any, ids_input: int, table_name: str, new_row: Any) -> str:
    """The table's row r moved to `new_row[r]`: rewrite the row index in front of `node`, or insert one. Returns
    the index's name."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}

    def producer(name: str) -> Any:
        return next((other for other in graph.node if name in other.output), None)

    lookup = producer(node.input[ids_input])
    index = None
    if lookup is not None and lookup.op_type == "Gather" and lookup.input[0].endswith(ROW_INDEX_SUFFIX):
        widen = producer(lookup.input[0])  # the uint16 index's Cast, or none
        index = initializers.get(widen.input[0] if widen is not None else lookup.input[0])
    if index is None:
        return _insert_row_index(graph, node, ids_input, table_name, new_row)
    rows = numpy_helper.to_array(index)
    index.CopyFrom(numpy_helper.from_array(new_row[rows].astype(rows.dtype), index.name))
    return lookup.input[0]


def _copy_unchanged(source: str | Path, destination: str | Path) -> None:
    """The graph as it is: the file copied (not re-serialized), nothing done when it is already in place."""
    import shutil

    if Path(source).resolve() != Path(destination).resolve():
        shutil.copyfile(source, destination)


def _word_embedding_lookup(graph: Any, through_row_index: bool = False) -> tuple[Any, int, int] | None:
    """(node, ids input index, table input index) of the lookup reading the graph's `input_ids`, when its table
    is an initializer nothing else reads (`through_row_index`: other `Gather`s may read it too, and the ids may
    pass through the row index :func:`compact_embedding_rows` inserted)."""
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    from_ids = {"input_ids"}
    for node in graph.node:  # input_ids, possibly through a Cast (fused graphs want int32 ids)
        if node.op_type == "Cast" and node.input[0] in from_ids:
            from_ids.add(node.output[0])
        row_index = node.op_type == "Gather" and node.input[0].endswith(ROW_INDEX_SUFFIX)
        if through_row_index and row_index and node.input[1] in from_ids:
            from_ids.add(node.output[0])
    for node in sorted(graph.node, key=lambda node: node.op_type not in EMBED_OPS):  # a fused lookup first
        if node.op_type in EMBED_OPS:
            ids_input, table_input = EMBED_OPS[node.op_type]
        elif node.op_type == "Gather" and len(node.input) == 2:
            ids_input, table_input = 1, 0
        else:
            continue
        table = initializers.get(node.input[table_input])
        other_gathers = (
            through_row_index and table is not None and readers.get(table.name) == _gathers_of(graph, table.name)
        )
        shared = table is None or (readers.get(table.name) != 1 and not other_gathers)
        if node.input[ids_input] in from_ids and not shared and len(table.dims) == 2:
            return node, ids_input, table_input
    return None


def _gathers_of(graph: Any, table: str) -> int:
    """How many nodes read `table` as a Gather's data, plus the one fused lookup reading it (if any)."""
    gathers = sum(1 for node in graph.node if node.op_type == "Gather" and node.input[0] == table)
    return gathers + sum(1 for node in graph.node if node.op_type in EMBED_OPS and table in node.input)


def pack_word_embeddings_4bit(source: str | Path, destination: str | Path) -> dict[str, Any] | None:
    """Write `source` to `destination` with its word-embedding table stored 4-bit (see the module docstring).

    The lookup may be a plain `Gather` or ORT's `EmbedLayerNormalization` over a float table, or an INT8 form:
    dynamic quantization's `Gather` of uint8 rows and its `DequantizeLinear` (which goes) or
    `QEmbedLayerNormalization`, static QDQ's `Gather` of a dequantized table (the `DequantizeLinear` goes). The
    `QEmbedLayerNormalization` becomes an `EmbedLayerNormalization`: its word
    table unpacked from 4 bits (codes taken from the dequantized INT8 table), its position table from its uint8
    codes, the segment table and LayerNorm weights float (a few rows). Returns {"table", "bytes_before",
    "bytes_after", "one_bit_rows"}, or None when the graph was copied unchanged (no such lookup).
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    stored_bytes = _fold_dequantized_lookup_tables(graph)
    found = _word_embedding_lookup(graph, through_row_index=True)
    if found is None:
        _copy_unchanged(source, destination)
        return None
    node, ids_input, table_input = found
    initializers = {init.name: init for init in graph.initializer}
    table_name = node.input[table_input]
    stored = table = numpy_helper.to_array(initializers[table_name])
    added_initializers, added_nodes = [], []
    if node.op_type == "QEmbedLayerNormalization":
        table, added_initializers, added_nodes = _as_float_embed_layer_norm(node, initializers)
    elif stored.dtype.kind != "f":  # ORT's quantized Gather: uint8 rows, then a DequantizeLinear
        table = _as_float_gather(graph, node, stored, initializers)
        if table is None:
            _copy_unchanged(source, destination)
            return None
    bytes_before = stored_bytes.get(table_name) or stored.nbytes
    others = [other for other in graph.node if other is not node and table_name in other.input]
    table = table.astype("float32")
    by_id = all(other.op_type == "Gather" and other.input[0] == table_name for other in others)
    one_bit = _two_valued_rows(table) if by_id else np.zeros(len(table), bool)  # rows move: readers must follow
    one_bit_rows = int(one_bit.sum()) if one_bit.sum() >= MIN_SAVING * len(table) else 0
    if one_bit_rows:  # sign rows (vocabulary pruning): 1 bit a value, 4 the rest
        distinct, first, row_of = np.unique(table, axis=0, return_index=True, return_inverse=True)  # shared: once
        distinct_one_bit = one_bit[first]
        packed, unpack = _unpack_mixed(distinct, distinct_one_bit, table_name)
        place = np.argsort(np.argsort(distinct_one_bit, kind="stable"))  # 4-bit rows first, then 1-bit ones
        index_name = _reorder_rows(graph, node, ids_input, table_name, place[row_of.reshape(-1)])
        for number, other in enumerate(others):  # DistilBERT's second Gather of the table follows the index too
            _look_up_through(graph, other, 1, index_name, f"{other.input[1]}_embedding_row_{number}")
    else:
        packed, unpack = _unpack_4bit(table, f"{table_name}_4bit")
    node.input[table_input] = unpack[-1].output[0]
    for other in others:  # another Gather of the table (DistilBERT's, for the input's shape) reads it too
        if stored.dtype.kind != "f" and _as_float_gather(graph, other, stored, initializers) is None:
            _copy_unchanged(source, destination)
            return None
        other.input[0] = unpack[-1].output[0]
    position = min(list(graph.node).index(reader) for reader in [node, *others])  # before the first reader
    for offset, new_node in enumerate([*added_nodes, *unpack]):
        graph.node.insert(position + offset, new_node)
    graph.initializer.extend([*added_initializers, *packed])
    _drop_unread(graph)
    onnx.save(model, str(destination))
    bytes_after = sum(numpy_helper.to_array(init).nbytes for init in packed)
    return {
        "table": table_name,
        "bytes_before": bytes_before,
        "bytes_after": bytes_after,
        "one_bit_rows": one_bit_rows,
    }


def _as_float_embed_layer_norm(node: Any, initializers: dict[str, Any]) -> tuple[Any, list[Any], list[Any]]:
    """Turn a `QEmbedLayerNormalization` into the float `EmbedLayerNormalization` in place; returns its word table
    as float, plus the initializers and nodes its other inputs now come from (position: uint8 codes, dequantized
    by foldable ops; segment, gamma, beta: float)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def codes(i: int) -> np.ndarray:
        return numpy_helper.to_array(initializers[node.input[i]])

    def dequantized(i: int) -> np.ndarray:  # scales at inputs 8-12, zero points at 13-17
        return _dequantize(codes(i), codes(i + 6), codes(i + 11))

    ids, segment_ids, word, position, segment, _, _, mask = node.input[:8]
    position_scale, position_zero = node.input[9], node.input[14]
    kept = (4, 5, 6) if segment else (5, 6)  # a model without token types has no segment table
    floats = {i: numpy_helper.from_array(dequantized(i), f"{node.input[i]}_float") for i in kept}
    segment_float = floats[4].name if segment else ""
    as_float = f"{position}_as_float"
    nodes = [
        helper.make_node("Cast", [position], [as_float], to=TensorProto.FLOAT),
        helper.make_node("Cast", [position_zero], [f"{position_zero}_as_float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", [as_float, f"{position_zero}_as_float"], [f"{position}_centred"]),
        helper.make_node("Mul", [f"{position}_centred", position_scale], [f"{position}_float"]),
    ]
    table = dequantized(2)
    epsilon = [attribute for attribute in node.attribute if attribute.name == "epsilon"]
    node.op_type = "EmbedLayerNormalization"
    del node.input[:], node.attribute[:]
    node.input.extend(
        [ids, segment_ids, word, f"{position}_float", segment_float, floats[5].name, floats[6].name, mask]
    )
    node.attribute.extend(epsilon)
    return table, list(floats.values()), nodes


def _fold_dequantized_lookup_tables(graph: Any) -> dict[str, int]:
    """Static QDQ's lookup, `Gather(DequantizeLinear(uint8 table))`: the table as a float initializer instead
    (per-tensor scale and zero point), so the lookup reads an initializer as the other forms do. Returns the
    bytes each folded table had stored, by its new name."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    stored: dict[str, int] = {}
    for node in list(graph.node):
        if node.op_type != "DequantizeLinear":
            continue
        codes = initializers.get(node.input[0])
        readers = [reader for reader in graph.node if node.output[0] in reader.input]
        lookup = len(readers) == 1 and readers[0].op_type == "Gather" and readers[0].input[0] == node.output[0]
        per_tensor = _per_tensor(node, initializers)
        if not lookup or codes is None or per_tensor is None or len(codes.dims) != 2:
            continue
        codes_array = numpy_helper.to_array(codes)
        graph.initializer.append(numpy_helper.from_array(_dequantize(codes_array, *per_tensor), node.output[0]))
        graph.node.remove(node)
        stored[node.output[0]] = codes_array.nbytes
    return stored


def _as_float_gather(graph: Any, node: Any, codes: Any, initializers: dict[str, Any]) -> Any:
    """A `Gather` over uint8 rows whose one reader is a per-tensor `DequantizeLinear` (ORT's quantized lookup):
    the reader removed and the Gather giving its output; returns the float table, None when the pattern differs."""
    readers = [reader for reader in graph.node if node.output[0] in reader.input]
    if len(readers) != 1 or readers[0].op_type != "DequantizeLinear":
        return None
    dequantize = readers[0]
    per_tensor = _per_tensor(dequantize, initializers)
    if per_tensor is None:
        return None
    node.output[0] = dequantize.output[0]
    graph.node.remove(dequantize)
    return _dequantize(codes, *per_tensor)


def _per_tensor(dequantize: Any, initializers: dict[str, Any]) -> tuple[Any, Any] | None:
    """(scale, zero point) of a `DequantizeLinear` whose both are scalar initializers, else None."""
    from onnx import numpy_helper

    if len(dequantize.input) < 3:
        return None
    scale, zero_point = (initializers.get(name) for name in dequantize.input[1:3])
    if scale is None or zero_point is None or len(scale.dims) or len(zero_point.dims):
        return None
    return numpy_helper.to_array(scale), numpy_helper.to_array(zero_point)


def _dequantize(codes: Any, scale: Any, zero_point: Any) -> Any:
    """(codes - zero point) * scale, as float32 (ONNX's DequantizeLinear, per tensor)."""
    import numpy as np

    return ((codes.astype(np.float32) - zero_point.astype(np.float32)) * scale).astype(np.float32)


class _Unpacking:
    """The constant tensors and nodes of one unpacking subgraph, every name prefixed with `name`.

    Constant folding keeps every tensor it computes until the session is made, so the float tensors of the
    table's size come last and are few: three for 4-bit rows (ORT does not fold a `DequantizeLinear`, which would
    then dequantize the whole table on every call), one for 1-bit rows (BENCHMARKS.md, "The word-embedding table
    in 4 bits": the session's peak memory)."""

    def __init__(self, name: str) -> None:
        self.name, self.tensors, self.nodes = name, [], []

    def constant(self, value: Any, suffix: str) -> None:
        import numpy as np
        from onnx import numpy_helper

        self.tensors.append(numpy_helper.from_array(np.asarray(value), f"{self.name}_{suffix}"))

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> None:
        from onnx import helper

        names = [f"{self.name}_{i}" for i in inputs]
        self.nodes.append(helper.make_node(op, names, [f"{self.name}_{output}"], **attributes))

    def without_padding(self, codes: str, padded: int, width: int) -> str:
        """`codes` [rows, padded] with the padding columns sliced off."""
        import numpy as np

        if padded == width:
            return codes
        self.constant(np.array([0], np.int64), "start")
        self.constant(np.array([width], np.int64), "width")
        self.constant(np.array([1], np.int64), "axis")
        self.node("Slice", [codes, "start", "width", "axis"], "row_codes")
        return "row_codes"

    def scaled(self, codes: str) -> tuple[list[Any], list[Any]]:
        """Finish the subgraph: value = code * scale + offset, with the fp16 `scale` and `offset` per row; the last
        node's output is the float rows."""
        from onnx import TensorProto

        self.node("Cast", [codes], "code_values", to=TensorProto.FLOAT)
        self.node("Cast", ["scale"], "scale_float", to=TensorProto.FLOAT)
        self.node("Cast", ["offset"], "offset_float", to=TensorProto.FLOAT)
        self.node("Mul", ["code_values", "scale_float"], "scaled")
        self.node("Add", ["scaled", "offset_float"], "table")
        return self.tensors, self.nodes


def _unpack_4bit(table: Any, name: str) -> tuple[list[Any], list[Any]]:
    """`table` [rows, width] as 4-bit codes (two a byte) with an fp16 scale and offset per row, and the nodes that
    unpack it (value = code * scale + offset), the last one's output the float table. The nibbles are split and
    interleaved as uint8."""
    import numpy as np

    rows, width = table.shape
    even = width + width % 2
    values = np.zeros((rows, even), np.float32)
    values[:, :width] = table
    low = np.minimum(values.min(axis=1, keepdims=True), 0)  # the range holds 0, so 0 stays exact
    high = np.maximum(values.max(axis=1, keepdims=True), 0)
    scale = ((high - low) / 15).astype(np.float16).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero row
    zero_point = np.clip(np.round(-low / scale), 0, 15)
    code = np.clip(np.round(values / scale + zero_point), 0, 15).astype(np.uint8)

    unpacking = _Unpacking(name)
    unpacking.constant((code[:, 0::2] | (code[:, 1::2] << 4)).astype(np.uint8), "codes")
    unpacking.constant(scale.astype(np.float16), "scale")
    unpacking.constant((-zero_point * scale).astype(np.float16), "offset")
    unpacking.constant(np.uint8(4), "four")
    unpacking.constant(np.array([rows, even // 2, 1], np.int64), "pair_shape")
    unpacking.constant(np.array([rows, even], np.int64), "row_shape")
    unpacking.node("BitShift", ["codes", "four"], "high", direction="RIGHT")
    unpacking.node("BitShift", ["codes", "four"], "low_shifted", direction="LEFT")
    unpacking.node("BitShift", ["low_shifted", "four"], "low", direction="RIGHT")
    unpacking.node("Reshape", ["low", "pair_shape"], "low_pairs")
    unpacking.node("Reshape", ["high", "pair_shape"], "high_pairs")
    unpacking.node("Concat", ["low_pairs", "high_pairs"], "pairs", axis=2)
    unpacking.node("Reshape", ["pairs", "row_shape"], "even_codes")
    return unpacking.scaled(unpacking.without_padding("even_codes", even, width))


def _two_valued_rows(table: Any) -> Any:
    """Which rows of `table` hold at most two distinct values (the sign rows of vocabulary pruning's `sign`)."""
    low, high = table.min(axis=1, keepdims=True), table.max(axis=1, keepdims=True)
    return ((table == low) | (table == high)).all(axis=1)


def _unpack_1bit(table: Any, name: str) -> tuple[list[Any], list[Any]]:
    """Two-valued rows of `table` [rows, width] as one bit a value (eight a byte) with an fp16 low value (the
    offset) and step (the scale) per row, and the nodes that unpack them (value = the low value, or low + step
    where the bit is set: a `Where`; the bits looked up from a 256 x 8 table), the last one's output the float
    rows."""
    import numpy as np
    from onnx import TensorProto

    rows, width = table.shape
    padded = -(-width // 8) * 8
    low = table.min(axis=1, keepdims=True)
    step = table.max(axis=1, keepdims=True) - low
    bits = np.zeros((rows, padded), bool)
    bits[:, :width] = (table > low) & (step > 0)

    unpacking = _Unpacking(name)
    unpacking.constant(np.packbits(bits, axis=1, bitorder="little"), "codes")
    unpacking.constant(step.astype(np.float16), "scale")
    unpacking.constant(low.astype(np.float16), "offset")
    byte_bits = (np.arange(256)[:, None] >> np.arange(8)) & 1  # bit i of byte b, the low bit first
    unpacking.constant(byte_bits.astype(bool), "byte_bits")
    unpacking.constant(np.array([rows, padded], np.int64), "row_shape")
    unpacking.node("Cast", ["codes"], "byte_ids", to=TensorProto.INT32)
    unpacking.node("Gather", ["byte_bits", "byte_ids"], "bit_groups")
    unpacking.node("Reshape", ["bit_groups", "row_shape"], "padded_bits")
    bits_name = unpacking.without_padding("padded_bits", padded, width)
    unpacking.node("Cast", ["offset"], "low_float", to=TensorProto.FLOAT)
    unpacking.node("Cast", ["scale"], "step_float", to=TensorProto.FLOAT)
    unpacking.node("Add", ["low_float", "step_float"], "high_float")
    unpacking.node("Where", [bits_name, "high_float", "low_float"], "table")
    return unpacking.tensors, unpacking.nodes


def _unpack_mixed(table: Any, one_bit: Any, name: str) -> tuple[list[Any], list[Any]]:
    """`table`'s other rows in 4 bits, then its `one_bit` rows in 1 bit, concatenated in that order."""
    from onnx import helper

    four_tensors, four_nodes = _unpack_4bit(table[~one_bit], f"{name}_4bit")
    one_tensors, one_nodes = _unpack_1bit(table[one_bit], f"{name}_1bit")
    outputs = [four_nodes[-1].output[0], one_nodes[-1].output[0]]
    concat = helper.make_node("Concat", outputs, [f"{name}_mixed_table"], axis=0)
    return [*four_tensors, *one_tensors], [*four_nodes, *one_nodes, concat]


def _drop_unread(graph: Any) -> None:
    """Remove the initializers no node reads any more."""
    read = {name for node in graph.node for name in node.input}
    outputs = {output.name for output in graph.output}
    for init in [init for init in graph.initializer if init.name not in read and init.name not in outputs]:
        graph.initializer.remove(init)
