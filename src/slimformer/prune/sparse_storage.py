"""Compressed storage of a pruned checkpoint: only the kept weights are written.

Each mostly-zero tensor becomes a bitmask (`np.packbits` of w != 0) plus its nonzero values in row-major
order; other tensors stay dense. With ``values="int8"`` the values (and dense 2-D tensors such as the
embeddings) are stored as INT8 with one float32 scale per row. Everything is written with safetensors (no
pickle); the tensor layout lives in the file's metadata. In float32 mode `load_sparse` returns exactly the
state dict that was saved, so the restored model gives bit-identical logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimformer.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch

SPARSE_FILE = "model.sparse.safetensors"
FORMAT = "slimformer-sparse/1"
VALUE_FORMATS = ("float32", "int8")


def save_sparse(model_dir: str | Path, output_path: str | Path, values: str = "float32") -> dict[str, Any]:
    """Write the weights of the HF checkpoint in `model_dir` to `output_path` in the compressed format.

    Returns sizes: dense checkpoint bytes, compressed bytes and their ratio.
    """
    from safetensors.numpy import save_file
    from safetensors.torch import load_file

    if values not in VALUE_FORMATS:
        raise ConfigError(f"unknown value format {values!r}; use one of {', '.join(VALUE_FORMATS)}")
    dense_path = Path(model_dir) / "model.safetensors"
    if not dense_path.is_file():
        raise ModelError(f"{model_dir} has no model.safetensors to compress")
    arrays: dict[str, np.ndarray] = {}
    layout: dict[str, dict[str, Any]] = {}
    for name, tensor in load_file(str(dense_path)).items():
        array = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
        entry: dict[str, Any] = {
            "shape": list(array.shape),
            "dtype": str(tensor.dtype).removeprefix("torch."),
        }
        floating = tensor.is_floating_point()
        nonzero = array != 0 if floating else None
        if floating and array.ndim >= 2 and _sparse_is_smaller(nonzero, values):
            entry["kind"] = "sparse"
            arrays[f"{name}::mask"] = np.packbits(nonzero.ravel())
            kept = array[nonzero]  # row-major order, the order unpacking restores
            if values == "int8":
                rows = array.reshape(array.shape[0], -1)
                scales = _row_scales(rows)
                row_of_value = np.repeat(np.arange(rows.shape[0]), nonzero.reshape(rows.shape[0], -1).sum(axis=1))
                arrays[f"{name}::values"] = _quantize(kept, scales[row_of_value])
                arrays[f"{name}::scales"] = scales
            else:
                arrays[f"{name}::values"] = kept.astype(np.float32)
        elif floating and array.ndim == 2 and values == "int8":
            entry["kind"] = "dense_int8"
            scales = _row_scales(array)
            arrays[f"{name}::values"] = _quantize(array, scales[:, None])
            arrays[f"{name}::scales"] = scales
        else:
            entry["kind"] = "dense"
            arrays[f"{name}::values"] = np.ascontiguousarray(array)
        layout[name] = entry
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(output_path), metadata={"format": FORMAT, "values": values, "layout": json.dumps(layout)})
    dense_bytes, sparse_bytes = dense_path.stat().st_size, output_path.stat().st_size
    return {
        "file": output_path.name,
        "values": values,
        "dense_bytes": dense_bytes,
        "compressed_bytes": sparse_bytes,
        "compressed_ratio": round(sparse_bytes / dense_bytes, 4),
    }


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a compressed file back into a state dict (names, shapes and dtypes of the saved checkpoint)."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"compressed weights not found: {path}")
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ModelError(f"{path} is not a {FORMAT} file")
        arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open has no iteration
    state = {}
    for name, entry in json.loads(metadata["layout"]).items():
        shape, kind = tuple(entry["shape"]), entry["kind"]
        values = arrays[f"{name}::values"]
        if kind == "sparse":
            count = int(np.prod(shape))
            nonzero = np.unpackbits(arrays[f"{name}::mask"], count=count).astype(bool).reshape(shape)
            if values.dtype == np.int8:
                per_row = nonzero.reshape(shape[0], -1).sum(axis=1)
                values = values.astype(np.float32) * np.repeat(arrays[f"{name}::scales"], per_row)
            array = np.zeros(shape, dtype=np.float32)
            array[nonzero] = values
        elif kind == "dense_int8":
            array = values.astype(np.float32) * arrays[f"{name}::scales"][:, None]
        else:
            array = values
        state[name] = torch.from_numpy(np.ascontiguousarray(array)).to(getattr(torch, entry["dtype"]))
    return state


def load_sparse_classifier(path: str | Path, model_dir: str | Path) -> Any:
    """A sequence classifier built from `model_dir`'s config.json with weights from the compressed file."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from slimformer.models import register_model_types

    register_model_types()
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(str(model_dir)))
    missing, unexpected = model.load_state_dict(load_sparse(path), strict=False)
    if unexpected or [m for m in missing if not m.endswith("position_ids")]:
        raise ModelError(f"{path} does not fit {model_dir}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def _sparse_is_smaller(nonzero: np.ndarray, values: str) -> bool:
    value_bytes = 1 if values == "int8" else 4
    sparse = nonzero.size / 8 + int(nonzero.sum()) * value_bytes
    return sparse < nonzero.size * value_bytes


def _row_scales(rows: np.ndarray) -> np.ndarray:
    rows = rows.reshape(rows.shape[0], -1)
    scales = np.abs(rows).max(axis=1) / 127.0
    return np.where(scales > 0, scales, 1.0).astype(np.float32)  # an all-zero row needs no scale


def _quantize(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values / scales), -127, 127).astype(np.int8)
