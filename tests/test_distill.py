"""Distillation: the loss by hand, the teacher-logit cache, students made from teacher layers, the stage, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from slimformer.errors import ConfigError, ModelError
from tests.conftest import SPECIAL_TOKENS

pytestmark = pytest.mark.usefixtures("private_cache_one_thread")


def _all_texts(splits) -> list[str]:
    from slimformer.data import column

    return column(splits.train, "text") + column(splits.validation, "text") + column(splits.test, "text")


def build_tiny_bert(folder: Path, texts: list[str], labels: list[str], layers: int = 2, seed: int = 0) -> Path:
    """A tiny random BERT classifier whose WordPiece vocabulary is the words of `texts`.

    (conftest's builder passes `vocab_file=`, which transformers 5 ignores: its tokenizers know only the 5
    special tokens, so every text would read as [UNK]s and teacher logits would depend on length alone.)
    """
    import re

    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    torch.manual_seed(seed)
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(SPECIAL_TOKENS + words)}, do_lower_case=True)
    tokenizer.model_max_length = 64
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    folder.mkdir(parents=True, exist_ok=True)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, clinc_slice) -> Path:
    """A 4-layer tiny classifier on the slice's labels (read-only)."""
    return build_tiny_bert(tmp_path_factory.mktemp("teacher"), _all_texts(clinc_slice), clinc_slice.labels, layers=4)


# --- the loss ---------------------------------------------------------------------------------------------


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _random_batch(seed: int = 0, batch: int = 5, classes: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(batch, classes)) * 3,
        rng.normal(size=(batch, classes)) * 3,
        rng.integers(0, classes, size=batch),
    )


@pytest.mark.parametrize(("alpha", "temperature"), [(0.5, 2.0), (0.2, 7.0), (0.9, 1.0)])
def test_loss_matches_a_hand_computation(alpha: float, temperature: float) -> None:
    from slimformer.distillation import distillation_loss

    student, teacher, labels = _random_batch()
    cross_entropy = -np.mean(_np_log_softmax(student)[np.arange(len(labels)), labels])
    log_p_teacher = _np_log_softmax(teacher / temperature)
    log_p_student = _np_log_softmax(student / temperature)
    kl = np.mean(np.sum(np.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1))
    expected = alpha * cross_entropy + (1 - alpha) * temperature**2 * kl

    loss = distillation_loss(
        torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), alpha=alpha, temperature=temperature
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert kl > 0.01  # the soft term really contributes


def test_standardized_logits_match_a_hand_computation_and_ignore_the_logit_scale() -> None:
    """Logit standardization: both rows z-scored (sample standard deviation) before the temperature, so a student
    whose logits are the teacher's scaled and shifted has no soft loss left."""
    from slimformer.distillation import distillation_loss

    student, teacher, labels = _random_batch(seed=3)

    def z(rows: np.ndarray) -> np.ndarray:
        return (rows - rows.mean(-1, keepdims=True)) / rows.std(-1, ddof=1, keepdims=True)

    temperature = 2.0
    log_p_teacher = _np_log_softmax(z(teacher) / temperature)
    log_p_student = _np_log_softmax(z(student) / temperature)
    kl = np.mean(np.sum(np.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1))
    loss = distillation_loss(
        torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), 0.0, temperature, standardize=True
    )
    assert loss.item() == pytest.approx(temperature**2 * kl, rel=1e-5)
    scaled = torch.tensor(0.25 * teacher + 3.0)  # the teacher's shape at a quarter of its range
    assert distillation_loss(scaled, torch.tensor(teacher), torch.tensor(labels), 0.0, temperature, True).item() < 1e-6
    assert distillation_loss(scaled, torch.tensor(teacher), torch.tensor(labels), 0.0, temperature).item() > 0.1
    from slimformer.distill import DistillConfig
    from slimformer.errors import ConfigError

    with pytest.raises(ConfigError, match="needs alpha < 1"):
        DistillConfig(student_layers=2, alpha=1.0, standardize_logits=True).validate()


def test_alpha_one_is_plain_cross_entropy() -> None:
    from slimformer.distillation import distillation_loss

    student, teacher, labels = (torch.tensor(a) for a in _random_batch(seed=1))
    plain = torch.nn.functional.cross_entropy(student, labels)
    assert distillation_loss(student, teacher, labels, alpha=1.0, temperature=5.0).item() == pytest.approx(plain.item())
    assert distillation_loss(student, None, labels, alpha=0.3).item() == pytest.approx(plain.item())
    assert distillation_loss(student, teacher, labels, alpha=0.3).item() != pytest.approx(plain.item())


@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0])
def test_temperature_squared_keeps_the_soft_gradient_scale(temperature: float) -> None:
    """With alpha = 0, d loss / d student = T^2 * (p_s - p_t) / (T * batch): the T^2 undoes the 1/T^2 shrink."""
    from slimformer.distillation import distillation_loss

    student_np, teacher_np, labels_np = _random_batch(seed=2)
    student = torch.tensor(student_np, requires_grad=True)
    loss = distillation_loss(
        student, torch.tensor(teacher_np), torch.tensor(labels_np), alpha=0.0, temperature=temperature
    )
    loss.backward()
    p_student = np.exp(_np_log_softmax(student_np / temperature))
    p_teacher = np.exp(_np_log_softmax(teacher_np / temperature))
    expected = temperature * (p_student - p_teacher) / len(labels_np)
    np.testing.assert_allclose(student.grad.numpy(), expected, rtol=1e-6, atol=1e-12)


def test_trainer_loss_uses_the_batch_teacher_logits(teacher_dir: Path, tmp_path: Path) -> None:
    from slimformer.distillation import DistillationTrainer, DistillationTrainingArguments, distillation_loss
    from slimformer.models import load_classifier, load_tokenizer

    model = load_classifier(teacher_dir)
    tokenizer = load_tokenizer(teacher_dir)
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path), alpha=0.25, temperature=3.0, use_cpu=True, report_to="none"
    )
    trainer = DistillationTrainer(model=model, args=args, processing_class=tokenizer)
    features = [
        {**tokenizer(text), "labels": label, "teacher_logits": list(np.arange(6.0) * sign)}
        for text, label, sign in (("what is my balance", 1, 1.0), ("wake me up at six", 0, -1.0))
    ]
    batch = trainer.data_collator(features)
    assert batch["teacher_logits"].shape == (2, 6)
    model.eval()
    loss = trainer.compute_loss(model, batch)
    without_teacher = {k: v for k, v in batch.items() if k != "teacher_logits"}
    logits = model(**{k: v for k, v in without_teacher.items() if k != "labels"}).logits
    expected = distillation_loss(logits, batch["teacher_logits"], batch["labels"], 0.25, 3.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert "labels" in batch  # compute_loss must not consume the caller's batch


# --- students from teacher layers -------------------------------------------------------------------------


def test_evenly_spaced_layers_keep_first_and_last() -> None:
    from slimformer.students import evenly_spaced_layers

    assert evenly_spaced_layers(6, 3) == [0, 2, 5]
    assert evenly_spaced_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert evenly_spaced_layers(4, 2) == [0, 3]
    assert evenly_spaced_layers(6, 1) == [5]
    assert evenly_spaced_layers(6, 6) == list(range(6))
    with pytest.raises(ConfigError, match="1..6"):
        evenly_spaced_layers(6, 7)
    # from the second layer: the first moves down only where fewer than K layers follow it
    assert evenly_spaced_layers(6, 2, first=1) == [1, 5]
    assert evenly_spaced_layers(6, 3, first=1) == [1, 3, 5]
    assert evenly_spaced_layers(6, 4, first=1) == [1, 2, 4, 5]
    assert evenly_spaced_layers(12, 6, first=1) == [1, 3, 5, 7, 9, 11]
    assert evenly_spaced_layers(6, 6, first=1) == list(range(6))
    assert evenly_spaced_layers(6, 5, first=3) == [1, 2, 3, 4, 5]
    assert evenly_spaced_layers(6, 1, first=1) == [5]
    with pytest.raises(ConfigError, match="first kept layer"):
        evenly_spaced_layers(6, 2, first=6)


def test_student_from_teacher_keeps_the_chosen_layers_exactly(teacher_dir: Path, tmp_path: Path) -> None:
    from slimformer.models import load_classifier, read_config
    from slimformer.students import student_from_teacher

    assert student_from_teacher(teacher_dir, 2, tmp_path / "from-second", first_layer=1) == [1, 3]
    kept = student_from_teacher(teacher_dir, 2, tmp_path / "student")
    assert kept == [0, 3]
    assert read_config(tmp_path / "student")["num_hidden_layers"] == 2
    assert (tmp_path / "student" / "tokenizer.json").is_file()
    teacher = load_classifier(teacher_dir).state_dict()
    student = load_classifier(tmp_path / "student").state_dict()
    layer_keys = [k for k in student if ".encoder.layer." in k]
    assert layer_keys and len(student) < len(teacher)
    for key, tensor in student.items():
        source = key
        for new, old in enumerate(kept):
            source = source.replace(f".encoder.layer.{new}.", f".encoder.layer.<{old}>.")
        source = source.replace("<", "").replace(">", "")
        assert torch.equal(tensor, teacher[source]), key
    for key in ("bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight", "classifier.weight"):
        assert torch.equal(student[key], teacher[key])
    assert not torch.equal(
        student["bert.encoder.layer.1.output.dense.weight"], teacher["bert.encoder.layer.1.output.dense.weight"]
    )


def test_dropout_off_while_distilling(teacher_dir: Path, clinc_slice, tmp_path: Path) -> None:
    """`dropout` sets every dropout layer for the training only (two training-mode passes then agree), and the
    saved student keeps its source's values."""
    from slimformer.distill import DistillConfig, distill
    from slimformer.students import build_student_from_teacher, set_dropout

    student, _, _ = build_student_from_teacher(teacher_dir, 1)
    student.train()
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    assert not torch.equal(student(input_ids=ids).logits, student(input_ids=ids).logits)  # dropout 0.1 on
    # embeddings 1, the layer 3 (attention probabilities, attention output, FFN output), the classifier 1
    assert set_dropout(student, 0.0) == 5
    assert torch.equal(student(input_ids=ids).logits, student(input_ids=ids).logits)

    options = {"student_layers": 1, "epochs": 1, "max_train_samples": 30}
    metrics = distill(teacher_dir, tmp_path / "out", DistillConfig(dropout=0.0, **options), clinc_slice)
    assert metrics["config"]["dropout"] == 0.0
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == 0.1 and saved["attention_probs_dropout_prob"] == 0.1
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\), got 1.0"):
        DistillConfig(dropout=1.0, **options).validate()


def test_frozen_word_embeddings_keep_the_table_and_train_the_rest(teacher_dir: Path, clinc_slice, tmp_path: Path):
    """`freeze_word_embeddings`: the saved student's word table is its source's, bit for bit, while its other
    weights learned; without the option the table learns too."""
    from safetensors.torch import load_file

    from slimformer.distill import DistillConfig, distill

    def weights(folder: Path) -> dict[str, torch.Tensor]:
        return load_file(folder / "model.safetensors")

    source = weights(teacher_dir)
    table = next(name for name in source if name.endswith("word_embeddings.weight"))
    options = {"student_layers": 1, "epochs": 1, "max_train_samples": 30, "learning_rate": 1e-3, "warmup_ratio": 0.0}
    for frozen in (True, False):
        output = tmp_path / f"frozen-{frozen}"
        distill(teacher_dir, output, DistillConfig(freeze_word_embeddings=frozen, **options), clinc_slice)
        student = weights(output)
        assert torch.equal(student[table], source[table]) is frozen
        assert not torch.equal(student["classifier.weight"], source["classifier.weight"])


# --- the teacher-logit cache ------------------------------------------------------------------------------


def test_teacher_logits_are_cached_per_teacher_texts_and_length(teacher_dir: Path, clinc_slice, tmp_path: Path):
    from slimformer.data import column
    from slimformer.distillation import cached_teacher_logits
    from slimformer.models import load_classifier, load_tokenizer

    texts = column(clinc_slice.validation, "text")
    first = cached_teacher_logits(teacher_dir, clinc_slice.validation, max_length=32, cache_dir=tmp_path)
    again = cached_teacher_logits(teacher_dir, texts, max_length=32, cache_dir=tmp_path)
    assert (first.hit, again.hit) == (False, True)
    assert first.key == again.key and first.path.is_file()
    np.testing.assert_array_equal(first.logits, again.logits)
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temp file and renamed

    # rows are in text order (the teacher batches by length internally)
    model, tokenizer = load_classifier(teacher_dir).eval(), load_tokenizer(teacher_dir)
    with torch.inference_mode():
        one_by_one = np.stack([model(**tokenizer(t, return_tensors="pt")).logits[0].numpy() for t in texts[:6]])
    np.testing.assert_allclose(first.logits[:6], one_by_one, atol=1e-5)

    assert cached_teacher_logits(teacher_dir, texts, max_length=16, cache_dir=tmp_path).hit is False
    assert cached_teacher_logits(teacher_dir, texts[:-1], max_length=32, cache_dir=tmp_path).hit is False
    changed = Path(shutil.copytree(teacher_dir, tmp_path / "changed"))
    (changed / "metrics.json").write_text("{}")  # not part of the model: same key
    assert cached_teacher_logits(changed, texts, max_length=32, cache_dir=tmp_path).key == first.key
    config = json.loads((changed / "config.json").read_text())
    config["hidden_dropout_prob"] = 0.2
    (changed / "config.json").write_text(json.dumps(config))
    assert cached_teacher_logits(changed, texts, max_length=32, cache_dir=tmp_path).key != first.key


# --- the stage --------------------------------------------------------------------------------------------


def test_distill_writes_a_checkpoint_and_reuses_the_cache(teacher_dir: Path, clinc_slice, tmp_path: Path) -> None:
    from slimformer.distill import DistillConfig, distill
    from slimformer.models import load_classifier, read_config

    config = DistillConfig(student_layers=2, epochs=2, learning_rate=5e-4, max_train_samples=60)
    metrics = distill(teacher_dir, tmp_path / "student", config, clinc_slice)
    assert metrics["stage"] == "distill"
    assert metrics["teacher_logits"]["hit"] is False
    assert [round(e["epoch"]) for e in metrics["history"]] == [1, 2]
    assert metrics["student_layers_kept"] == [0, 3]
    from slimformer.evaluation import evaluate_predictor
    from slimformer.predictor import load

    rescored = evaluate_predictor(load(tmp_path / "student", threads=1), clinc_slice.test, clinc_slice)
    assert rescored["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    saved = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert saved["validation"] == metrics["validation"] and saved["config"]["alpha"] == 0.5
    assert read_config(tmp_path / "student")["num_hidden_layers"] == 2
    assert load_classifier(tmp_path / "student").config.num_labels == len(clinc_slice.labels)

    plain = distill(
        teacher_dir,
        tmp_path / "plain",
        DistillConfig(student_layers=2, epochs=1, alpha=1.0, max_train_samples=60),
        clinc_slice,
    )
    assert plain["teacher_logits"] is None  # alpha = 1: the teacher is not consulted
    again = distill(
        teacher_dir, tmp_path / "again", DistillConfig(student_layers=2, epochs=1, max_train_samples=60), clinc_slice
    )
    assert again["teacher_logits"]["hit"] is True
    assert again["teacher_logits"]["key"] == metrics["teacher_logits"]["key"]


def test_student_with_its_own_tokenizer_and_label_order(
    teacher_dir: Path, clinc_slice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Teacher logits reach the student per example and per label name, whatever either model's order."""
    import slimformer.training
    from slimformer.data import column
    from slimformer.distill import DistillConfig, distill
    from slimformer.distillation import teacher_logits
    from slimformer.models import load_tokenizer

    student_labels = list(reversed(clinc_slice.labels))
    student_dir = build_tiny_bert(tmp_path / "student_in", _all_texts(clinc_slice)[::2], student_labels, seed=3)
    assert load_tokenizer(student_dir).get_vocab() != load_tokenizer(teacher_dir).get_vocab()

    seen = []
    original = slimformer.training.tokenize_dataset

    def spy(dataset, tokenizer, max_length):
        seen.append(dataset)
        return original(dataset, tokenizer, max_length)

    monkeypatch.setattr(slimformer.training, "tokenize_dataset", spy)
    distill(
        teacher_dir,
        tmp_path / "out",
        DistillConfig(student=str(student_dir), epochs=1, max_train_samples=40),
        clinc_slice,
    )
    train = seen[0]
    texts = column(train, "text")
    raw = teacher_logits(teacher_dir, texts, max_length=64)  # teacher's own label order
    columns = [clinc_slice.labels.index(label) for label in student_labels]  # teacher order == data order
    np.testing.assert_allclose(np.asarray(column(train, "teacher_logits")), raw[:, columns], atol=1e-5)
    by_text = dict(zip(column(clinc_slice.train, "text"), column(clinc_slice.train, "label"), strict=True))
    expected = [student_labels.index(clinc_slice.labels[by_text[t]]) for t in texts]
    assert column(train, "label") == expected


# --- errors -----------------------------------------------------------------------------------------------


def test_config_errors(teacher_dir: Path, tiny_base_dir: Path, clinc_slice, tmp_path: Path) -> None:
    from slimformer.distill import DistillConfig, distill

    with pytest.raises(ConfigError, match="exactly one"):
        DistillConfig().validate()
    with pytest.raises(ConfigError, match="exactly one"):
        DistillConfig(student="default", student_layers=2).validate()
    with pytest.raises(ConfigError, match="alpha"):
        DistillConfig(student_layers=2, alpha=1.5).validate()
    with pytest.raises(ConfigError, match="temperature"):
        DistillConfig(student_layers=2, temperature=0).validate()
    with pytest.raises(ConfigError, match="1..4"):
        distill(teacher_dir, tmp_path / "x", DistillConfig(student_layers=5), clinc_slice)
    with pytest.raises(ModelError, match="base model"):
        distill(tiny_base_dir, tmp_path / "x", DistillConfig(student_layers=1), clinc_slice)
    assert not (tmp_path / "x").exists()


def test_cli_needs_exactly_one_student(teacher_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from slimformer.cli import main

    for extra in ([], ["--student", "default", "--student-layers", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["distill", str(teacher_dir), "--output", str(tmp_path / "o"), *extra])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err == "error: give exactly one of --student PATH|default and --student-layers K"


def test_cli_distill_runs(
    teacher_dir: Path, clinc_slice_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from slimformer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "distill",
                str(teacher_dir),
                "--student-layers",
                "1",
                "--data",
                str(clinc_slice_dir),
                "--output",
                str(tmp_path / "o"),
                "--epochs",
                "1",
                "--alpha",
                "0.3",
                "--temperature",
                "4",
                "--learning-rate",
                "3e-4",
                "--max-train-samples",
                "30",
            ]
        )
    assert exit_info.value.code == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["config"]["alpha"] == 0.3 and metrics["config"]["temperature"] == 4.0
    assert metrics["student_layers_kept"] == [3]
    assert '"test"' in capsys.readouterr().out


def test_a_base_body_student_gets_a_head_for_the_data(
    teacher_dir: Path, tiny_base_dir: Path, clinc_slice, tmp_path: Path
) -> None:
    from slimformer.distill import DistillConfig, distill
    from slimformer.models import classifier_labels

    metrics = distill(
        teacher_dir,
        tmp_path / "out",
        DistillConfig(student=str(tiny_base_dir), epochs=1, max_train_samples=20),
        clinc_slice,
    )
    assert classifier_labels(tmp_path / "out") == clinc_slice.labels
    assert metrics["student"] == str(tiny_base_dir) and metrics["student_layers_kept"] is None
