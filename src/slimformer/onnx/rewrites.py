"""Exact rewrites of a fused ONNX classifier graph, applied by `slimformer optimize` after ONNX Runtime's fusions.

Both leave the logits unchanged (the optimize stage checks parity against its input graph and drops the
rewrites when it fails) and cut batch-1 latency on the CPU (BENCHMARKS.md, "ONNX export, optimization and graph
rewrites"):

- **first-token tail** (`first_token_tail`): a sequence classifier reads one row of the last layer, the first
  token's (``hidden[:, 0]``, a Gather on axis 1). Everything between the last attention and that Gather works
  row by row (output projection, residual + LayerNorm, the feed-forward block), so the Gather can move up to the
  tensors entering that region: the last layer's projection, feed-forward network and LayerNorms then run on 1
  row instead of the sequence length.
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


def rewrite_graph(path: str, first_token_tail: bool, split_skip_layernorm: bool) -> dict[str, dict[str, Any]]:
    """Apply the chosen rewrites to the ONNX file at `path` in place; what each did, by name."""
    import onnx

    if not first_token_tail and not split_skip_layernorm:
        return {}
    model = onnx.load(path)
    reports: dict[str, dict[str, Any]] = {}
    if first_token_tail:
        reports["first_token_tail"] = compute_first_token_only(model).as_dict()
    if split_skip_layernorm:
        reports["split_skip_layernorm"] = split_skip_layer_norms(model).as_dict()
    if any(report["applied"] for report in reports.values()):
        onnx.save(model, path)
    return reports
