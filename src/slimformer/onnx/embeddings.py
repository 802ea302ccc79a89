"""Store each distinct word-embedding row once in an ONNX graph.

Vocabulary clustering (`slimformer prune --method vocab --vocab-unseen cluster`) gives every token the training
data never uses the row of its k-means cluster, so most of the table's rows repeat. This pass keeps one copy of
each distinct row plus an int32 index (token id -> row) and inserts `Gather(index, input_ids)` in front of the
embedding lookup (a plain `Gather` or ORT's fused `EmbedLayerNormalization` / `QEmbedLayerNormalization`). The
logits do not change, the tokenizer does not change, and the file shrinks by the repeated rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EMBED_OPS = {"EmbedLayerNormalization": (0, 2), "QEmbedLayerNormalization": (0, 2)}  # op: (ids input, table input)
MIN_SAVING = 0.1  # compact only when at least this share of the rows repeats


def compact_embedding_rows(source: str | Path, destination: str | Path) -> dict[str, Any] | None:
    """Write `source` to `destination` with the word-embedding table's repeated rows stored once.

    Returns {"rows_before", "rows_after", "table"} when the table was compacted, None when the graph was copied
    unchanged (no word-embedding lookup found, or fewer than 10% of its rows repeat).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

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
    index_name = f"{table_name}_row_of_token"
    graph.initializer.append(numpy_helper.from_array(row_of_token.reshape(-1).astype(np.int32), index_name))
    ids_name = node.input[ids_input]
    compact_ids = f"{ids_name}_embedding_row"
    lookup = helper.make_node("Gather", [index_name, ids_name], [compact_ids], name=f"{table_name}_row_lookup")
    node.input[ids_input] = compact_ids
    position = list(graph.node).index(node)
    graph.node.insert(position, lookup)
    onnx.save(model, str(destination))
    return {"table": table_name, "rows_before": int(table.shape[0]), "rows_after": len(distinct)}


def _copy_unchanged(source: str | Path, destination: str | Path) -> None:
    """The graph as it is: the file copied (not re-serialized), nothing done when it is already in place."""
    import shutil

    if Path(source).resolve() != Path(destination).resolve():
        shutil.copyfile(source, destination)


def _word_embedding_lookup(graph: Any) -> tuple[Any, int, int] | None:
    """(node, ids input index, table input index) of the lookup reading the graph's `input_ids`, when its table
    is an initializer nothing else reads."""
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    from_ids = {"input_ids"}
    for node in graph.node:  # input_ids, possibly through a Cast (fused graphs want int32 ids)
        if node.op_type == "Cast" and node.input[0] in from_ids:
            from_ids.add(node.output[0])
    for node in graph.node:
        if node.op_type in EMBED_OPS:
            ids_input, table_input = EMBED_OPS[node.op_type]
        elif node.op_type == "Gather" and len(node.input) == 2:
            ids_input, table_input = 1, 0
        else:
            continue
        table = initializers.get(node.input[table_input])
        shared = table is None or readers.get(table.name) != 1
        if node.input[ids_input] in from_ids and not shared and len(table.dims) == 2:
            return node, ids_input, table_input
    return None
