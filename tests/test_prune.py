"""Pruning: the cubic schedule, magnitude masks in a real Trainer, movement pruning, structured FFN slicing,
compressed sparse storage, vocabulary pruning and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slimformer.prune.schedule import CubicSchedule, cubic_sparsity


def _texts(splits) -> list[str]:
    from slimformer.data import column

    return column(splits.validation, "text")[:16]


def _logits(folder: Path, texts: list[str]) -> np.ndarray:
    from slimformer.predictor import load

    return load(folder, threads=1).predict_logits(texts)


def build_worded_bert(folder: Path, texts: list[str], labels: list[str], seed: int = 0) -> Path:
    """A tiny random BERT classifier whose WordPiece vocabulary really holds the words of `texts` (the
    vocabulary built by conftest's `build_tokenizer` is ignored by transformers 5's BertTokenizerFast)."""
    import re

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(seed)
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    vocab += [w for w in words if w not in chars]
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory, clinc_slice) -> Path:
    """Tiny classifier over the slice's labels; its vocabulary holds the words of all but the test split."""
    from slimformer.data import column

    texts = column(clinc_slice.train, "text") + column(clinc_slice.validation, "text")
    return build_worded_bert(tmp_path_factory.mktemp("worded"), texts, clinc_slice.labels)


@pytest.fixture()
def classifier_copy(classifier_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(classifier_dir, tmp_path / "classifier"))


# --- schedule ---------------------------------------------------------------------------------------------


def test_cubic_schedule_matches_formula_at_start_midpoint_and_end() -> None:
    s_i, s_f, t0, n, dt = 0.1, 0.9, 20, 10, 5  # updates at 20, 25, ..., 70

    def formula(t: int) -> float:
        return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3

    assert cubic_sparsity(t0, s_i, s_f, t0, n, dt) == pytest.approx(s_i)
    assert cubic_sparsity(45, s_i, s_f, t0, n, dt) == pytest.approx(formula(45))  # midpoint, an update step
    assert cubic_sparsity(45, s_i, s_f, t0, n, dt) == pytest.approx(0.8)  # 0.9 - 0.8 * 0.5^3
    assert cubic_sparsity(70, s_i, s_f, t0, n, dt) == pytest.approx(s_f)
    assert cubic_sparsity(500, s_i, s_f, t0, n, dt) == pytest.approx(s_f)
    assert cubic_sparsity(3, s_i, s_f, t0, n, dt) == pytest.approx(s_i)  # before t0
    # held constant between updates
    assert cubic_sparsity(47, s_i, s_f, t0, n, dt) == cubic_sparsity(45, s_i, s_f, t0, n, dt)
    assert cubic_sparsity(50, s_i, s_f, t0, n, dt) > cubic_sparsity(49, s_i, s_f, t0, n, dt)


def test_schedule_over_training_updates_only_every_dt_steps() -> None:
    schedule = CubicSchedule.over_training(100, 0.0, 0.8, frequency=10, start_fraction=0.1, end_fraction=0.7)
    updates = [t for t in range(101) if schedule.is_update_step(t)]
    assert updates == [10, 20, 30, 40, 50, 60, 70]
    assert schedule.sparsity(70) == pytest.approx(0.8)
    assert schedule.sparsity(10) == pytest.approx(0.0)


# --- magnitude pruning in a real Trainer --------------------------------------------------------------------


def test_magnitude_masks_fixed_between_updates_and_pruned_weights_stay_zero(classifier_copy, clinc_slice, tmp_path):
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from slimformer.models import load_classifier, load_tokenizer
    from slimformer.prune.magnitude import MagnitudePruningCallback, encoder_linears
    from slimformer.training import base_training_arguments, tokenize_dataset

    model, tokenizer = load_classifier(classifier_copy), load_tokenizer(classifier_copy)
    train_set = tokenize_dataset(clinc_slice.train, tokenizer, 32)
    schedule = CubicSchedule(initial_sparsity=0.0, final_sparsity=0.75, start_step=2, num_steps=3, frequency=3)
    pruning = MagnitudePruningCallback(model, schedule)
    layers = encoder_linears(model)
    seen: list[tuple[int, dict[str, torch.Tensor]]] = []

    class Recorder(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # runs after the pruning callback's
            seen.append((state.global_step, {n: (layer.weight == 0).clone() for n, layer in layers.items()}))

    arguments = TrainingArguments(
        **base_training_arguments(
            tmp_path / "trainer",
            num_train_epochs=3,
            learning_rate=1e-2,
            per_device_train_batch_size=16,
            eval_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
        )
    )
    Trainer(
        model=model, args=arguments, train_dataset=train_set, data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[pruning, Recorder()],
    ).train()  # fmt: skip

    assert [step for step, _ in pruning.updates] == [2, 5, 8, 11]
    by_step = dict(seen)
    for step in range(1, len(seen)):
        if schedule.is_update_step(step + 1):
            continue
        # between updates the zero pattern is exactly the one set at the last update (a large learning rate
        # would revive pruned weights if masks were not re-applied after each optimizer step)
        if step >= 2:
            for name in layers:
                assert torch.equal(by_step[step][name], by_step[step + 1][name]), (step, name)
    final = max(by_step)
    for name, layer in layers.items():
        assert float((layer.weight == 0).float().mean()) == pytest.approx(0.75, abs=0.01), name
        assert torch.equal(by_step[final][name], pruning.masks[name].logical_not())
    # embeddings and the classifier are never pruned
    assert int((model.classifier.weight == 0).sum()) == 0
    assert int((model.get_input_embeddings().weight == 0).sum()) == 32  # the [PAD] row, as before training


def test_magnitude_prune_stage_writes_loadable_checkpoint_and_metrics(classifier_dir, clinc_slice, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from slimformer.prune import PruneConfig, load_sparse, prune
    from slimformer.prune.stage import COMPRESSED_DIR, SPARSE_FILES

    output = tmp_path / "pruned"
    metrics = prune(
        classifier_dir,
        output,
        PruneConfig(
            method="magnitude",
            sparsity=0.8,
            epochs=2,
            learning_rate=1e-3,
            pruning_frequency=2,
        ),
        clinc_slice,
        teacher=classifier_dir,
    )
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["stage"] == "prune" and saved["method"] == "magnitude"
    assert saved["sparsity"]["encoder"] == pytest.approx(0.8, abs=0.01)
    assert all(v == pytest.approx(0.8, abs=0.01) for v in saved["sparsity"]["per_layer"].values())
    assert len(saved["sparsity"]["per_layer"]) == 12  # 2 layers x (q, k, v, attn out, ffn in, ffn out)
    # the accuracies it records are the saved sparse model's, scored afresh
    from slimformer.evaluation import evaluate_predictor
    from slimformer.predictor import load

    for split in ("validation", "test"):
        fresh = evaluate_predictor(load(output), clinc_slice.split(split), clinc_slice)["accuracy"]
        assert metrics[split]["accuracy"] == pytest.approx(fresh, abs=1e-6), split
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert float((model.bert.encoder.layer[0].intermediate.dense.weight == 0).float().mean()) == pytest.approx(
        0.8, abs=0.01
    )
    compressed = {c["values"]: c for c in saved["size"]["compressed"]}
    assert (
        compressed["int8"]["compressed_bytes"]
        < compressed["float32"]["compressed_bytes"]
        < saved["size"]["dense_bytes"]
    )
    state = load_sparse(output / COMPRESSED_DIR / SPARSE_FILES["float32"])
    dense = model.state_dict()
    assert all(np.array_equal(state[k].numpy(), dense[k].numpy()) for k in state)
    _logits(output, _texts(clinc_slice))  # the predictor loads it


# --- movement pruning ---------------------------------------------------------------------------------------


def test_movement_pruning_reaches_sparsity_and_bakes_masks(classifier_dir, clinc_slice, tmp_path):
    import torch
    from safetensors.torch import load_file

    from slimformer.models import load_classifier
    from slimformer.prune import PruneConfig, prune
    from slimformer.prune.movement import MovementMask, add_movement_masks, bake_masks

    # the straight-through estimator: scores get grad_output * weight although the mask is a step function
    model = load_classifier(classifier_dir)
    masks = add_movement_masks(model)
    name, mask = next(iter(masks.items()))
    assert isinstance(mask, MovementMask)
    mask.sparsity = 0.5
    layer = dict(model.named_modules())[name]
    kept = layer.weight
    assert float((kept == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    layer.weight.sum().backward()
    original = layer.parametrizations.weight.original
    assert torch.allclose(mask.scores.grad, original.detach())
    bake_masks(model)
    assert not any("scores" in k or "parametrizations" in k for k in model.state_dict())

    output = tmp_path / "movement"
    metrics = prune(
        classifier_dir,
        output,
        PruneConfig(method="movement", sparsity=0.9, epochs=2, pruning_frequency=1),
        clinc_slice,
        teacher=classifier_dir,
    )
    assert metrics["sparsity"]["encoder"] == pytest.approx(0.9, abs=0.01)
    keys = load_file(str(output / "model.safetensors")).keys()
    assert not any("scores" in k or "parametrizations" in k for k in keys)
    assert _logits(output, _texts(clinc_slice)).shape == (16, len(clinc_slice.labels))


# --- structured pruning -------------------------------------------------------------------------------------


def test_structured_pruning_nothing_keeps_logits(classifier_dir, clinc_slice, tmp_path):
    import torch

    from slimformer.models import load_classifier, load_tokenizer
    from slimformer.prune.structured import ffn_importance, prune_ffn

    texts = _texts(clinc_slice)
    model, tokenizer = load_classifier(classifier_dir).eval(), load_tokenizer(classifier_dir)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).logits
    prune_ffn(model, 0.0, ffn_importance(model, "magnitude"))
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)


@pytest.mark.parametrize("importance", ["gradient", "movement"])
def test_structured_pruning_slices_ffn_and_reloads(classifier_dir, clinc_slice, tmp_path, importance):
    from transformers import AutoModelForSequenceClassification

    from slimformer.models import load_classifier
    from slimformer.prune import PruneConfig, prune

    output = tmp_path / "structured"
    metrics = prune(
        classifier_dir,
        output,
        PruneConfig(
            method="structured",
            sparsity=0.5,
            epochs=1 if importance == "gradient" else 0,
            importance=importance,
            importance_batches=2,
        ),
        clinc_slice,
    )
    summary = metrics["structured"]
    assert summary["intermediate_size_before"] == 64 and summary["intermediate_size_after"] == 32
    assert summary["parameters_after"] == summary["parameters_before"] - 2 * (2 * 32 * 32 + 32)
    assert metrics["sparsity"]["encoder_parameters_removed"] == pytest.approx(0.25)  # half of the FFN's half
    config = json.loads((output / "config.json").read_text())
    assert config["intermediate_size"] == 32
    reloaded = AutoModelForSequenceClassification.from_pretrained(output)
    assert reloaded.bert.encoder.layer[1].output.dense.weight.shape == (32, 32)
    assert sum(p.numel() for p in reloaded.parameters()) < sum(
        p.numel() for p in load_classifier(classifier_dir).parameters()
    )
    assert _logits(output, _texts(clinc_slice)).shape == (16, len(clinc_slice.labels))


def _head_logits(model, batch):
    import torch

    with torch.no_grad():
        return model(**batch).logits


def test_removing_heads_equals_silencing_them(classifier_dir, clinc_slice):
    """Slicing heads out computes what the full model computes with those heads' output columns zeroed, and the
    SlimBERT it is saved as computes the same again."""
    import torch

    from slimformer.models import load_classifier, load_tokenizer
    from slimformer.prune.structured import as_slim_bert, slice_heads

    tokenizer = load_tokenizer(classifier_dir)
    batch = tokenizer(_texts(clinc_slice), padding=True, return_tensors="pt")
    keep = [torch.tensor([3, 1]), torch.tensor([0, 2])]  # of 4 heads of 8 dims per layer
    silenced = load_classifier(classifier_dir).eval()
    with torch.no_grad():
        for layer, heads in zip(silenced.bert.encoder.layer, keep, strict=True):
            dropped = [h for h in range(4) if h not in heads.tolist()]
            for head in dropped:
                layer.attention.output.dense.weight[:, head * 8 : (head + 1) * 8] = 0
    pruned = load_classifier(classifier_dir).eval()
    slice_heads(pruned, keep)
    assert pruned.bert.encoder.layer[0].attention.self.query.weight.shape == (16, 32)
    assert pruned.bert.encoder.layer[1].attention.output.dense.weight.shape == (32, 16)
    expected = _head_logits(silenced, batch)
    assert torch.allclose(_head_logits(pruned, batch), expected, rtol=0, atol=1e-6)
    slim = as_slim_bert(pruned).eval()
    assert type(slim).__name__ == "SlimBertForSequenceClassification"
    assert slim.config.num_attention_heads == 2 and slim.config.attention_head_size == 8
    assert torch.allclose(_head_logits(slim, batch), expected, rtol=0, atol=1e-6)
    full = _head_logits(load_classifier(classifier_dir).eval(), batch)
    assert (full - expected).abs().max() > 1e-5  # the removed heads did matter (logits of a random tiny BERT)


def test_keeping_every_head_changes_nothing(classifier_dir, clinc_slice):
    import torch

    from slimformer.models import load_classifier, load_tokenizer
    from slimformer.prune.structured import prune_units, unit_importance

    model, tokenizer = load_classifier(classifier_dir).eval(), load_tokenizer(classifier_dir)
    batch = tokenizer(_texts(clinc_slice), padding=True, return_tensors="pt")
    before = _head_logits(model, batch)
    importance = unit_importance(model, "magnitude")
    assert [len(s) for s in importance["heads"]] == [4, 4] and [len(s) for s in importance["ffn"]] == [64, 64]
    summary = prune_units(model, "heads", 0.0, importance["heads"])
    assert summary["heads_after"] == 4 and summary["kept_heads"] == [[0, 1, 2, 3]] * 2
    assert torch.equal(_head_logits(model, batch), before)


def test_head_importance_ranks_a_silenced_head_last(classifier_dir):
    import torch

    from slimformer.models import load_classifier
    from slimformer.prune.structured import unit_importance

    model = load_classifier(classifier_dir)
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.output.dense.weight[:, 16:24] = 0  # head 2 of layer 0 reaches nothing
    scores = unit_importance(model, "magnitude", kinds=("heads",))["heads"]
    assert scores[0][2] == 0 and torch.all(scores[0][[0, 1, 3]] > 0) and torch.all(scores[1] > 0)


@pytest.mark.parametrize("importance", ["magnitude", "gradient"])
def test_structured_head_pruning_saves_a_slimbert_every_stage_loads(classifier_dir, clinc_slice, tmp_path, importance):
    import subprocess
    import sys

    from transformers import AutoModelForSequenceClassification

    from slimformer.onnx import export_onnx, optimize_onnx
    from slimformer.onnx.optimize import OptimizeConfig
    from slimformer.prune import PruneConfig, prune

    output = tmp_path / "heads"
    metrics = prune(
        classifier_dir,
        output,
        PruneConfig(
            method="structured",
            sparsity=0.5,
            heads_fraction=0.5,
            epochs=1 if importance == "gradient" else 0,
            importance=importance,
            importance_batches=2,
        ),
        clinc_slice,
    )
    summary = metrics["structured"]
    assert (summary["heads_before"], summary["heads_after"], summary["head_size"]) == (4, 2, 8)
    assert summary["intermediate_size_after"] == 32 and len(summary["kept_heads"]) == 2
    # per layer: 3 x (32x16 + 16) + 16x32 for the attention, 2 x 32x32 + 32 for the FFN
    removed = 2 * (3 * (16 * 32 + 16) + 16 * 32 + 2 * 32 * 32 + 32)
    assert summary["parameters_after"] == summary["parameters_before"] - removed
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "slimbert" and config["num_attention_heads"] == 2
    assert config["attention_head_size"] == 8
    assert config["auto_map"] == {
        "AutoConfig": "configuration_slimbert.SlimBertConfig",
        "AutoModelForSequenceClassification": "modeling_slimbert.SlimBertForSequenceClassification",
    }
    assert (output / "configuration_slimbert.py").is_file() and (output / "modeling_slimbert.py").is_file()
    logits = _logits(output, _texts(clinc_slice))
    reloaded = AutoModelForSequenceClassification.from_pretrained(output)  # registered by slimformer
    assert reloaded.bert.encoder.layer[1].attention.self.key.weight.shape == (16, 32)

    # plain transformers, without slimformer's registration, loads it from the saved SlimBERT files
    script = (
        "import sys, torch, numpy as np; from transformers import AutoModelForSequenceClassification as A, "
        "BertTokenizerFast as T; p = sys.argv[1]; m = A.from_pretrained(p, trust_remote_code=True).eval(); "
        "b = T.from_pretrained(p)(sys.argv[2:], padding=True, truncation=True, max_length=128, return_tensors='pt')"
        "\nwith torch.no_grad(): np.save(p + '/plain.npy', m(**b).logits.numpy())"
    )
    subprocess.run([sys.executable, "-c", script, str(output), *_texts(clinc_slice)], check=True, timeout=120)
    assert np.allclose(np.load(output / "plain.npy"), logits, atol=1e-5)
    (output / "plain.npy").unlink()

    # export and ONNX Runtime's optimizer: every layer's attention fuses, at 2 heads of 8
    export_onnx(output, tmp_path / "onnx")
    assert (tmp_path / "onnx" / "configuration_slimbert.py").is_file()  # its config.json's auto_map resolves
    optimized = optimize_onnx(tmp_path / "onnx", tmp_path / "opt", OptimizeConfig(level=2))
    assert (optimized["num_heads"], optimized["hidden_size"]) == (2, 16)
    assert optimized["fusions"]["Attention"] == 2 and optimized["attention_fully_fused"]
    assert np.allclose(_logits(tmp_path / "opt", _texts(clinc_slice)), logits, atol=1e-4)


# --- compressed storage -------------------------------------------------------------------------------------


def test_sparse_storage_round_trips_exactly(classifier_copy, clinc_slice, tmp_path):
    import torch

    from slimformer.models import load_classifier
    from slimformer.prune import load_sparse, save_sparse
    from slimformer.prune.magnitude import encoder_linears, magnitude_mask
    from slimformer.prune.sparse_storage import load_sparse_classifier

    model = load_classifier(classifier_copy)
    with torch.no_grad():
        for layer in encoder_linears(model).values():
            layer.weight.mul_(magnitude_mask(layer.weight, 0.9))
    model.save_pretrained(classifier_copy)
    texts = _texts(clinc_slice)
    expected = _logits(classifier_copy, texts)

    exact = save_sparse(classifier_copy, tmp_path / "model.sparse.safetensors")
    restored = load_sparse(tmp_path / "model.sparse.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored[name], tensor), name
    assert exact["compressed_bytes"] < exact["dense_bytes"]
    rebuilt = load_sparse_classifier(tmp_path / "model.sparse.safetensors", classifier_copy)
    from slimformer.models import load_tokenizer

    batch = load_tokenizer(classifier_copy)(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        assert np.array_equal(rebuilt(**batch).logits.numpy(), expected)

    small = save_sparse(classifier_copy, tmp_path / "model.int8.safetensors", values="int8")
    assert small["compressed_bytes"] < 0.5 * exact["compressed_bytes"]
    approx = load_sparse(tmp_path / "model.int8.safetensors")
    weight = "bert.encoder.layer.0.intermediate.dense.weight"
    assert torch.equal(approx[weight] == 0, restored[weight] == 0)  # zeros stay exactly zero
    assert torch.allclose(approx[weight], restored[weight], atol=float(restored[weight].abs().max()) / 100)


# --- vocabulary pruning -------------------------------------------------------------------------------------


def test_vocabulary_pruning_keeps_training_tokens_and_logits(classifier_dir, clinc_slice, tmp_path):
    from slimformer.data import column
    from slimformer.models import load_tokenizer
    from slimformer.prune import prune_vocabulary

    train_texts = column(clinc_slice.train, "text")
    output = tmp_path / "vocab"
    summary = prune_vocabulary(classifier_dir, train_texts, output)
    assert summary["vocab_size_after"] < summary["vocab_size_before"]
    assert summary["weights_bytes_after"] < summary["weights_bytes_before"]
    before, after = load_tokenizer(classifier_dir), load_tokenizer(output)
    assert len(after) == summary["vocab_size_after"]
    for text in train_texts:
        assert before.tokenize(text) == after.tokenize(text)
    assert np.array_equal(_logits(classifier_dir, train_texts[:20]), _logits(output, train_texts[:20]))
    # a word the training texts never spell maps to [UNK]
    assert after.tokenize("zyzzyva") == ["[UNK]"] or "[UNK]" in after.tokenize("zyzzyva")
    ids = after("what is my balance", return_tensors=None)["input_ids"]
    assert ids[0] == after.cls_token_id and ids[-1] == after.sep_token_id
    assert after.convert_ids_to_tokens(ids) == before.convert_ids_to_tokens(before("what is my balance")["input_ids"])


def test_vocabulary_pruning_can_keep_frequent_ids(classifier_dir, clinc_slice, tmp_path):
    from slimformer.data import column
    from slimformer.models import load_tokenizer
    from slimformer.prune import prune_vocabulary

    texts = column(clinc_slice.train, "text")
    only_used = prune_vocabulary(classifier_dir, texts, tmp_path / "a")
    with_frequent = prune_vocabulary(classifier_dir, texts, tmp_path / "b", keep_frequent=40)
    assert with_frequent["vocab_size_after"] > only_used["vocab_size_after"]
    before, after = load_tokenizer(classifier_dir), load_tokenizer(tmp_path / "b")
    assert set(before.convert_ids_to_tokens(list(range(40)))) <= set(after.get_vocab())
    assert all(before.tokenize(t) == after.tokenize(t) for t in texts)


def test_clustering_keeps_the_tokenizer_and_every_used_row(classifier_dir, clinc_slice, tmp_path):
    import torch

    from slimformer.data import column
    from slimformer.models import load_classifier, load_tokenizer
    from slimformer.prune.vocab import cluster_unseen_rows, used_token_ids

    texts = column(clinc_slice.train, "text")
    output = tmp_path / "clustered"
    output.mkdir()
    summary = cluster_unseen_rows(classifier_dir, texts, output, clusters=3)
    before, after = load_tokenizer(classifier_dir), load_tokenizer(output)
    assert before.get_vocab() == after.get_vocab()
    assert all(before.tokenize(t) == after.tokenize(t) for t in column(clinc_slice.test, "text"))
    old = load_classifier(classifier_dir).get_input_embeddings().weight.detach()
    new = load_classifier(output).get_input_embeddings().weight.detach()
    used = used_token_ids(before, texts)
    unseen = sorted(set(range(old.shape[0])) - set(used))
    assert len(unseen) > 3
    assert torch.equal(old[used], new[used])  # rows of the training tokens are untouched
    assert len(torch.unique(new[unseen], dim=0)) == 3  # the others share 3 centroid rows
    assert not torch.equal(old[unseen], new[unseen])
    assert summary["distinct_embedding_rows"] == len(torch.unique(new, dim=0)) <= len(used) + 3
    assert summary["clusters"] == 3 and summary["used_tokens"] == len(used)


def test_sign_rows_are_the_centred_signs_and_the_used_tokens_compute_as_before(classifier_dir, clinc_slice, tmp_path):
    """`sign`: the mean of the signed rows moves into the position table (the same sum for every token), each
    signed row becomes sign(row - mean) times its mean magnitude, and logits over training texts do not move."""
    import torch

    from slimformer.data import column
    from slimformer.models import load_classifier, load_tokenizer
    from slimformer.prune.vocab import sign_unseen_rows, used_token_ids

    texts = column(clinc_slice.train, "text")
    output = tmp_path / "signed"
    output.mkdir()
    summary = sign_unseen_rows(classifier_dir, texts, output, clusters=2)
    before, after = load_classifier(classifier_dir), load_classifier(output)
    old = before.get_input_embeddings().weight.detach()
    new = after.get_input_embeddings().weight.detach()
    used = used_token_ids(load_tokenizer(classifier_dir), texts)
    two_valued = [i for i in range(old.shape[0]) if i not in used and len(torch.unique(new[i].abs())) == 1]
    assert len(two_valued) == summary["sign_rows"] > 0 and summary["mean_moved_to_positions"]
    mean = old[two_valued].mean(dim=0)
    centred = old[two_valued] - mean
    magnitude = centred.abs().mean(dim=1, keepdim=True)
    torch.testing.assert_close(new[two_valued], torch.where(centred >= 0, magnitude, -magnitude))
    torch.testing.assert_close(new[used], old[used] - mean)
    positions = after.base_model.embeddings.position_embeddings.weight.detach()
    torch.testing.assert_close(positions, before.base_model.embeddings.position_embeddings.weight.detach() + mean)
    np.testing.assert_allclose(_logits(output, texts[:16]), _logits(classifier_dir, texts[:16]), atol=1e-4)


def test_sign_rows_cluster_the_tokens_spelt_with_unfamiliar_characters(classifier_dir, clinc_slice, tmp_path):
    from slimformer.data import column
    from slimformer.models import load_classifier, load_tokenizer
    from slimformer.prune.vocab import sign_unseen_rows, used_token_ids

    texts = [text for text in column(clinc_slice.train, "text") if "w" not in text.lower()]
    tokenizer = load_tokenizer(classifier_dir)
    spelt_with_w = [token for token, i in tokenizer.get_vocab().items() if "w" in token]
    assert spelt_with_w and not set(tokenizer.convert_tokens_to_ids(spelt_with_w)) & set(
        used_token_ids(tokenizer, texts)
    )
    output = tmp_path / "signed"
    output.mkdir()
    summary = sign_unseen_rows(classifier_dir, texts, output, clusters=1)
    assert summary["clustered_tokens"] >= len(spelt_with_w) and summary["clusters"] == 1
    table = load_classifier(output).get_input_embeddings().weight.detach().numpy()
    rows = {table[i].tobytes() for i in tokenizer.convert_tokens_to_ids(spelt_with_w)}
    assert len(rows) == 1  # one shared centroid row


@pytest.mark.parametrize("unseen", ["split", "cluster", "sign"])
def test_vocab_method_reports_accuracy_cost(classifier_dir, clinc_slice, tmp_path, unseen):
    from slimformer.prune import PruneConfig, prune

    config = PruneConfig(method="vocab", vocab_unseen=unseen, vocab_clusters=4)
    metrics = prune(classifier_dir, tmp_path / "v", config, clinc_slice)
    if unseen == "split":
        assert metrics["vocabulary"]["vocab_size_after"] < metrics["vocabulary"]["vocab_size_before"]
    elif unseen == "cluster":
        vocabulary = metrics["vocabulary"]
        assert vocabulary["distinct_embedding_rows"] <= vocabulary["used_tokens"] + 4 < vocabulary["vocab_size"]
    else:
        vocabulary = metrics["vocabulary"]
        assert (
            vocabulary["sign_rows"] + vocabulary["clustered_tokens"] + vocabulary["used_tokens"]
            == vocabulary["vocab_size"]
        )
    assert metrics["accuracy_cost"] == pytest.approx(
        metrics["input_validation"]["accuracy"] - metrics["validation"]["accuracy"]
    )
    assert (tmp_path / "v" / "config.json").is_file() and not (tmp_path / "v" / "model").exists()


# --- CLI ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "pinch"], "unknown pruning method"),
        (["--sparsity", "1.5"], "sparsity must be in"),
        (["--method", "structured", "--heads-fraction", "1.0"], "heads fraction must be in [0, 1)"),
        (["--method", "magnitude", "--heads-fraction", "0.5"], "is for structured pruning"),
        (["--importance", "vibes", "--method", "structured"], "unknown importance"),
        (["--method", "vocab", "--vocab-unseen", "forget"], "vocab unseen must be one of"),
        (["--method", "vocab", "--vocab-clusters", "0"], "vocab clusters must be >= 1"),
        (["--method", "vocab", "--vocab-min-count", "0"], "vocab min count must be >= 1"),
    ],
)
def test_cli_bad_options_give_one_line_errors(classifier_dir, tmp_path, capsys, args, message):
    from slimformer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["prune", str(classifier_dir), "--output", str(tmp_path / "o"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_cli_missing_model_gives_one_line_error(clinc_slice_dir, tmp_path, capsys):
    from slimformer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["prune", str(tmp_path / "nope"), "--data", str(clinc_slice_dir), "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "model folder not found" in err and "\n" not in err


def test_sweep_writes_plot(classifier_dir, clinc_slice, tmp_path):
    from slimformer.prune.stage import PruneConfig, prune_sweep

    output = tmp_path / "sweep"
    prune_sweep(classifier_dir, clinc_slice, output, PruneConfig(method="structured", epochs=0), [0.25, 0.5])
    sweep = json.loads((output / "sweep.json").read_text())
    assert [r["sparsity"] for r in sweep["runs"]] == [0.25, 0.5]
    assert sweep["runs"][1]["dense_bytes"] < sweep["runs"][0]["dense_bytes"]
    assert (output / "accuracy_vs_sparsity.png").stat().st_size > 1000
    assert (output / "sparsity-0.5" / "metrics.json").is_file()


@pytest.mark.slow
@pytest.mark.ci_slow
def test_head_pruned_packaged_minilm_exports_with_every_attention_fused(clinc_slice, tmp_path):
    """The real MiniLM-L6 (12 heads of 32): half its heads and FFN sliced out, then ONNX export and ORT's
    optimizer fuse all 6 layers' attention at 6 heads (attention width 192) and match PyTorch."""
    from slimformer.models import load_classifier, load_tokenizer, resolve_model_path
    from slimformer.onnx import export_onnx, optimize_onnx
    from slimformer.onnx.optimize import OptimizeConfig
    from slimformer.prune import PruneConfig, prune

    base = resolve_model_path("default")
    classifier = tmp_path / "minilm-head"  # an untrained head is enough: this checks shapes, fusion and parity
    load_classifier(base, labels=clinc_slice.labels).save_pretrained(classifier)
    load_tokenizer(base).save_pretrained(classifier)
    metrics = prune(
        classifier,
        tmp_path / "pruned",
        PruneConfig(method="structured", heads_fraction=0.5, ffn_fraction=0.5, epochs=0),
        clinc_slice,
    )
    assert (metrics["structured"]["heads_after"], metrics["structured"]["head_size"]) == (6, 32)
    assert metrics["structured"]["intermediate_size_after"] == 768
    exported = export_onnx(tmp_path / "pruned", tmp_path / "onnx", data=clinc_slice)
    assert exported["parity"]["passed"]
    optimized = optimize_onnx(tmp_path / "onnx", tmp_path / "opt", OptimizeConfig(level=2))
    assert (optimized["num_heads"], optimized["hidden_size"]) == (6, 192)
    assert optimized["fusions"]["Attention"] == 6 and optimized["fusions"]["EmbedLayerNormalization"] == 1
    assert optimized["parity_vs_input"]["max_abs_logit_diff"] < 1e-3
