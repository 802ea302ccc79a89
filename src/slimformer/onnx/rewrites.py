"""Exact rewrites of a fused ONNX classifier graph, applied by `slimformer optimize` after ONNX Runtime's fusions.

Both leave the logits unchanged (the optimize stage checks parity against its input graph and drops the
rewrites when it fails) and cut batch-1 latency on the CPU (BENCHMARKS.md, "ONNX export, optimization and graph
rewrites"):

- **first-token tail** (`first_token_tail`): a sequence classifier reads one row of the last layer, the first
  token's (``hidden[:, 0]``, a Gather on axis 1). Everything between the last attention and that Gather works
  row by row (output projection, residual + LayerNorm, the feed-forward block), so the Gather can move up to the
  tensors entering that region: the last layer's projection, feed-forward network and LayerNorms then run on 1
  row instead of the sequence length.
- **biased attention** (`biased_attention`): attention whose scores get an additive bias besides the mask
  (MPNet's relative-position bias, computed once and shared by all layers) matches none of ONNX Runtime's
  Attention patterns, so it runs as a dozen unfused nodes per layer (MatMul, Div, Add, Add, Softmax, MatMul and
  the Reshape / Transpose pairs around them). It is rewritten as one ``MultiHeadAttention`` contrib node per
  layer over the projected query, key and value, with the bias and mask summed once into its
  ``attention_bias`` input. The projections stay MatMul + Add, so INT8 quantization still reaches them (a
  fused ``Attention`` node would not do: ORT's quantizer turns it into ``QAttention``, which has no bias input).
- **split SkipLayerNormalization** (`split_skip_layernorm`): ONNX Runtime's fused SkipLayerNormalization CPU
  kernel is slower than the ops it replaces (in onnxruntime 1.32: 24.7 against 10.2 us for 10 x 384 at 1 thread,
  975 against 166 us for 32 x 16 x 384). It is rewritten as ``LayerNormalization(Add(Add(input, skip), bias))``,
  in the order ONNX Runtime's load-time SkipLayerNormFusion does not fuse back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

MS_DOMAIN = "com.microsoft"
# ops that compute each (batch, position) row from that row alone, whatever their other inputs
ROW_WISE_OPS = {
    "SkipLayerNormalization",
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "BiasGelu",
    "Gelu",
    "FastGelu",
    "QuickGelu",
    "Tanh",
    "Relu",
    "Sigmoid",
    "Erf",
    "Identity",
}
# elementwise ops: row-wise when every input is a constant or a tensor of the region's (batch, position, ...) shape
ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt"}
FIRST_TOKEN_INDEX = "slimformer_first_token"


@dataclass
class RewriteReport:
    """What a rewrite did: applied or not, how many nodes it touched, and why not."""

    applied: bool
    nodes: int = 0
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "nodes": self.nodes, "reason": self.reason, **self.details}


class _Graph:
    """Producer / consumer lookups over an ONNX graph (rebuilt after each rewrite)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.producers = {name: node for node in graph.node for name in node.output if name}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {output.name for output in graph.output}

    def constant_tensor(self, name: str) -> Any:
        """The TensorProto of an initializer or Constant node output, else None."""
        if name in self.initializers:
            return self.initializers[name]
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            return node.attribute[0].t
        return None

    def constant(self, name: str) -> Any:
        """The value of an initializer or Constant node output, else None."""
        from onnx import numpy_helper

        tensor = self.constant_tensor(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def constant_rank(self, name: str) -> int | None:
        """The rank of an initializer or Constant tensor (read from its dims, no copy), else None."""
        tensor = self.constant_tensor(name)
        return None if tensor is None else len(tensor.dims)


def _attribute(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def first_token_gather(graph: _Graph) -> Any:
    """The last Gather that picks position 0 on axis 1 (a classifier's pooling of the first token), or None."""
    found = None
    for node in graph.graph.node:
        if node.op_type != "Gather" or _attribute(node, "axis", 0) != 1:
            continue
        index = graph.constant(node.input[1])
        if index is not None and index.ndim == 0 and int(index) == 0:
            found = node
    return found


def _row_wise(node: Any, graph: _Graph) -> bool:
    if node.op_type in ROW_WISE_OPS:
        return True
    if node.op_type == "MatMul":  # activation x weight: each row times the same matrix
        return graph.constant_rank(node.input[1]) == 2
    if node.op_type in ELEMENTWISE_OPS:  # constants must broadcast over rows: at most one dimension
        return all((graph.constant_rank(name) or 0) <= 1 for name in node.input)
    return False


def compute_first_token_only(model: onnx.ModelProto) -> RewriteReport:
    """Move the first-token Gather up through the row-wise ops before it (see the module docstring)."""
    from onnx import TensorProto, helper

    graph = _Graph(model.graph)
    gather = first_token_gather(graph)
    if gather is None:
        return RewriteReport(False, reason="no first-token pooling (Gather of position 0 on axis 1) in the graph")
    region: list[Any] = []
    names: set[str] = set()
    for node in reversed(list(model.graph.node)):  # graph nodes are in topological order
        if not _row_wise(node, graph) or any(name in graph.outputs for name in node.output):
            continue
        users = [user for name in node.output if name for user in graph.consumers.get(name, [])]
        if users and all(user is gather or user.name in names for user in users):
            if not node.name:
                node.name = f"slimformer_row_wise_{len(region)}"
            region.append(node)
            names.add(node.name)
    if not region:
        return RewriteReport(False, reason="the pooled tensor does not come from row-wise operators")
    produced = {name for node in region for name in node.output}
    entering: list[str] = []
    for node in region:
        for name in node.input:
            if name and name not in produced and graph.constant_tensor(name) is None and name not in entering:
                entering.append(name)
    model.graph.initializer.append(helper.make_tensor(FIRST_TOKEN_INDEX, TensorProto.INT64, [1], [0]))
    renamed = {name: f"{name}_first_token" for name in entering}
    gathers = [
        helper.make_node("Gather", [name, FIRST_TOKEN_INDEX], [renamed[name]], name=f"{name}_first_token", axis=1)
        for name in entering
    ]
    for node in region:
        for position, name in enumerate(node.input):
            if name in renamed:
                node.input[position] = renamed[name]
    nodes = list(model.graph.node)
    first = min(nodes.index(node) for node in region)
    nodes[first:first] = gathers  # every entering tensor is produced before the region's first node
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return RewriteReport(True, nodes=len(region), details={"tensors_gathered": len(entering)})


def _single_parent(graph: _Graph, name: str, op_type: str, perm: list[int] | None = None) -> Any:
    """The node of `op_type` producing `name` when `name` feeds nothing else (and the Transpose has `perm`)."""
    node = graph.producers.get(name)
    if node is None or node.op_type != op_type or len(graph.consumers.get(name, [])) != 1 or name in graph.outputs:
        return None
    if perm is not None and list(_attribute(node, "perm", [])) != perm:
        return None
    return node


def _heads_input(graph: _Graph, name: str, perms: list[list[int]]) -> tuple[str, list[Any]] | None:
    """(the (batch, sequence, width) tensor, the nodes) of Transpose(s) with `perms` over a Reshape of it."""
    nodes = []
    for perm in reversed(perms):
        node = _single_parent(graph, name, "Transpose", perm)
        if node is None:
            return None
        nodes.append(node)
        name = node.input[0]
    reshape = _single_parent(graph, name, "Reshape")
    if reshape is None:
        return None
    return reshape.input[0], [*nodes, reshape]


def _score_terms(graph: _Graph, name: str) -> tuple[Any, float, list[str], list[Any]] | None:
    """Split the Softmax input `name` = scale * MatMul(q, k) + terms... into (the MatMul, scale, the terms, the
    nodes between), walking a chain of Adds; None when it is not of that form."""
    terms: list[str] = []
    nodes: list[Any] = []
    scores = None
    pending = [name]
    while pending:
        current = pending.pop()
        node = _single_parent(graph, current, "Add")
        if node is not None and all(graph.constant_tensor(i) is None for i in node.input):
            nodes.append(node)
            pending += list(node.input)
            continue
        scale_node = graph.producers.get(current)
        if scores is None and scale_node is not None and scale_node.op_type in ("Div", "Mul"):
            factor = graph.constant(scale_node.input[1])
            matmul = _single_parent(graph, scale_node.input[0], "MatMul")
            if factor is not None and factor.size == 1 and matmul is not None:
                if len(graph.consumers.get(current, [])) != 1:
                    return None
                value = float(factor.reshape(-1)[0])
                scores = (matmul, 1 / value if scale_node.op_type == "Div" else value)
                nodes.append(scale_node)
                continue
        terms.append(current)
    if scores is None or not terms:
        return None
    return scores[0], scores[1], terms, nodes


def fuse_biased_attention(model: onnx.ModelProto, num_heads: int) -> RewriteReport:
    """Rewrite each unfused attention with an additive score bias as one MultiHeadAttention node (see the
    module docstring); layers of any other form are left as they are."""
    from onnx import helper

    graph = _Graph(model.graph)
    removed: set[int] = set()
    added: dict[int, list[Any]] = {}  # position in the graph -> nodes inserted there
    biases: dict[tuple[str, ...], str] = {}
    fused = 0
    nodes = list(model.graph.node)
    positions = {id(node): index for index, node in enumerate(nodes)}
    for softmax in nodes:
        if softmax.op_type != "Softmax" or _attribute(softmax, "axis", -1) not in (-1, 3):
            continue
        split = _score_terms(graph, softmax.input[0])
        users = graph.consumers.get(softmax.output[0], [])
        if split is None or len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != softmax.output[0]:
            continue
        matmul_qk, scale, terms, between = split
        matmul_pv = users[0]
        query = _heads_input(graph, matmul_qk.input[0], [[0, 2, 1, 3]])
        key = _heads_input(graph, matmul_qk.input[1], [[0, 2, 3, 1]]) or _heads_input(
            graph, matmul_qk.input[1], [[0, 2, 1, 3], [0, 1, 3, 2]]
        )
        value = _heads_input(graph, matmul_pv.input[1], [[0, 2, 1, 3]])
        merged = graph.consumers.get(matmul_pv.output[0], [])
        if query is None or key is None or value is None or len(merged) != 1:
            continue
        transpose = merged[0]
        reshapes = graph.consumers.get(transpose.output[0], [])
        if transpose.op_type != "Transpose" or list(_attribute(transpose, "perm", [])) != [0, 2, 1, 3]:
            continue
        if len(reshapes) != 1 or reshapes[0].op_type != "Reshape":
            continue
        group = [*query[1], *key[1], *value[1], matmul_qk, *between, softmax, matmul_pv, transpose, reshapes[0]]
        position = min(positions[id(node)] for node in group)
        new_nodes = []
        bias = biases.get(tuple(sorted(terms)))
        if bias is None:
            bias = terms[0]
            for term in terms[1:]:
                total = f"slimformer_attention_bias_{len(biases)}_{term}"
                new_nodes.append(helper.make_node("Add", [bias, term], [total], name=total))
                bias = total
            biases[tuple(sorted(terms))] = bias
        new_nodes.append(
            helper.make_node(
                "MultiHeadAttention",
                [query[0], key[0], value[0], "", "", bias],
                [reshapes[0].output[0]],
                name=f"slimformer_biased_attention_{fused}",
                domain=MS_DOMAIN,
                num_heads=num_heads,
                scale=scale,
            )
        )
        removed.update(id(node) for node in group)
        added.setdefault(position, []).extend(new_nodes)
        fused += 1
    if not fused:
        return RewriteReport(False, reason="no unfused attention with an additive score bias in the graph")
    rebuilt = []
    for position, node in enumerate(nodes):
        rebuilt += added.get(position, [])
        if id(node) not in removed:
            rebuilt.append(node)
    del model.graph.node[:]
    model.graph.node.extend(rebuilt)
    used = {name for node in rebuilt for name in node.input} | {output.name for output in model.graph.output}
    kept = [tensor for tensor in model.graph.initializer if tensor.name in used]  # the shapes of removed Reshapes
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if not any(entry.domain == MS_DOMAIN for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return RewriteReport(True, nodes=fused)


def split_skip_layer_norms(model: onnx.ModelProto) -> RewriteReport:
    """Rewrite every SkipLayerNormalization whose extra outputs nobody reads as Add, Add (bias), LayerNormalization."""
    from onnx import helper

    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    if opset < 17:
        return RewriteReport(False, reason=f"LayerNormalization needs ONNX opset >= 17, the graph has {opset}")
    graph = _Graph(model.graph)
    nodes, split = [], 0
    for node in model.graph.node:
        extra_used = any(name and (name in graph.consumers or name in graph.outputs) for name in node.output[1:])
        if node.op_type != "SkipLayerNormalization" or node.domain != MS_DOMAIN or extra_used:
            nodes.append(node)
            continue
        inputs = list(node.input) + [""] * (5 - len(node.input))
        source, skip, gamma, beta, bias = inputs[:5]
        prefix = node.name or f"slimformer_skip_layer_norm_{split}"
        total = f"{prefix}_residual"
        # Add(input, skip) before the bias: ONNX Runtime's load-time fusion takes the bias-first order back
        nodes.append(helper.make_node("Add", [source, skip], [total], name=f"{prefix}_add_skip"))
        if bias:
            nodes.append(helper.make_node("Add", [total, bias], [f"{total}_bias"], name=f"{prefix}_add_bias"))
            total = f"{total}_bias"
        epsilon = _attribute(node, "epsilon", 1e-12)
        norm_inputs = [total, gamma] + ([beta] if beta else [])
        nodes.append(
            helper.make_node(
                "LayerNormalization", norm_inputs, [node.output[0]], name=f"{prefix}_norm", axis=-1, epsilon=epsilon
            )
        )
        split += 1
    if not split:
        return RewriteReport(False, reason="no SkipLayerNormalization in the graph")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return RewriteReport(True, nodes=split)


def rewrite_graph(
    path: str, first_token_tail: bool, split_skip_layernorm: bool, biased_attention: bool = False, num_heads: int = 0
) -> dict[str, dict[str, Any]]:
    """Apply the chosen rewrites to the ONNX file at `path` in place; what each did, by name."""
    import onnx

    if not first_token_tail and not split_skip_layernorm and not biased_attention:
        return {}
    model = onnx.load(path)
    reports: dict[str, dict[str, Any]] = {}
    if biased_attention:
        reports["biased_attention"] = fuse_biased_attention(model, num_heads).as_dict()
    if first_token_tail:
        reports["first_token_tail"] = compute_first_token_only(model).as_dict()
    if split_skip_layernorm:
        reports["split_skip_layernorm"] = split_skip_layer_norms(model).as_dict()
    if any(report["applied"] for report in reports.values()):
        onnx.save(model, path)
    return reports
