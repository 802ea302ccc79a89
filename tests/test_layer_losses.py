"""Intermediate-layer losses and transfer data: each loss against a hand computation on tiny tensors, the
projection absent from the saved student, transfer rows reaching the trainer with teacher targets only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_distill import _all_texts, build_tiny_bert

pytestmark = pytest.mark.usefixtures("private_cache_one_thread")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, clinc_slice) -> Path:
    """A 4-layer tiny classifier on the slice's labels (read-only)."""
    return build_tiny_bert(tmp_path_factory.mktemp("teacher"), _all_texts(clinc_slice), clinc_slice.labels, layers=4)


def test_layer_maps() -> None:
    from slimformer.layer_losses import layer_map

    assert layer_map(3, 6, "uniform") == [2, 4, 6]
    assert layer_map(2, 6, "uniform") == [3, 6]
    assert layer_map(4, 6, "uniform") == [2, 3, 5, 6]
    assert layer_map(2, 6, "last") == [5, 6]
    assert layer_map(1, 12, "uniform") == [12]


def test_hidden_state_loss_matches_a_hand_computation() -> None:
    from slimformer.layer_losses import hidden_state_loss

    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 6))
    weight, bias = rng.normal(size=(6, 4)), rng.normal(size=6)
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    projection = torch.nn.Linear(4, 6)
    with torch.no_grad():
        projection.weight.copy_(torch.tensor(weight))
        projection.bias.copy_(torch.tensor(bias))
    errors = [
        np.mean((weight @ student[b, t] + bias - teacher[b, t]) ** 2) for b in range(2) for t in range(3) if mask[b, t]
    ]
    got = hidden_state_loss(
        torch.tensor(student, dtype=torch.float32),
        torch.tensor(teacher, dtype=torch.float32),
        torch.tensor(mask),
        projection.float(),
    )
    assert got.item() == pytest.approx(np.mean(errors), rel=1e-5)


def _relations(x: np.ndarray, valid: int, heads: int) -> np.ndarray:
    """Hand-computed log relation distributions of one sequence: (heads, valid queries, valid keys)."""
    size = x.shape[-1] // heads
    out = np.zeros((heads, valid, valid))
    for h in range(heads):
        part = x[:valid, h * size : (h + 1) * size]
        for i in range(valid):
            scores = np.array([part[i] @ part[j] / math.sqrt(size) for j in range(valid)])
            out[h, i] = scores - np.log(np.sum(np.exp(scores)))
    return out


def test_attention_relation_loss_matches_a_hand_computation() -> None:
    from slimformer.layer_losses import attention_relation_loss

    rng = np.random.default_rng(1)
    heads, lengths = 2, [4, 3]
    # the student is narrower than the teacher (8 vs 12 wide): relations do not depend on the width
    student = [rng.normal(size=(2, 4, 8)) for _ in range(3)]
    teacher = [rng.normal(size=(2, 4, 12)) for _ in range(3)]
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    expected = 0.0
    for s, t in zip(student, teacher, strict=True):
        kls = []
        for b, valid in enumerate(lengths):
            log_s, log_t = _relations(s[b], valid, heads), _relations(t[b], valid, heads)
            kls += list(np.sum(np.exp(log_t) * (log_t - log_s), axis=-1).ravel())
        expected += np.mean(kls)
    got = attention_relation_loss(
        [torch.tensor(x, dtype=torch.float32) for x in student],
        [torch.tensor(x, dtype=torch.float32) for x in teacher],
        torch.tensor(mask),
        heads,
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)
    same = [torch.tensor(x, dtype=torch.float32) for x in teacher]
    assert attention_relation_loss(same, same, torch.tensor(mask), heads).item() == pytest.approx(0.0, abs=1e-6)


def test_unlabelled_rows_count_in_the_soft_term_only() -> None:
    from slimformer.distillation import distillation_loss
    from slimformer.layer_losses import IGNORED_LABEL

    torch.manual_seed(0)
    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.tensor([1, IGNORED_LABEL, 3, IGNORED_LABEL])
    kept = torch.tensor([0, 2])
    ce = torch.nn.functional.cross_entropy(student[kept], labels[kept])
    t = 3.0
    p = torch.softmax(teacher / t, -1)
    kl = (p * (torch.log(p) - torch.log_softmax(student / t, -1))).sum(-1).mean()
    got = distillation_loss(student, teacher, labels, alpha=0.3, temperature=t)
    assert got.item() == pytest.approx((0.3 * ce + 0.7 * t**2 * kl).item(), rel=1e-5)
    only_transfer = distillation_loss(student, teacher, torch.full((4,), IGNORED_LABEL), 0.3, t)
    assert only_transfer.item() == pytest.approx((0.7 * t**2 * kl).item(), rel=1e-5)


def test_layer_distiller_trains_a_projection_that_is_never_saved(
    teacher_dir: Path, clinc_slice, tmp_path: Path
) -> None:
    """A narrower student with the teacher's tokenizer: all three losses on, the projection trained with it."""
    from safetensors import safe_open
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from slimformer.distill import DistillConfig, distill

    student_dir = tmp_path / "narrow"
    teacher_config = BertConfig.from_pretrained(teacher_dir)
    config = BertConfig(
        **{**teacher_config.to_dict(), "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2}
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(student_dir)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(student_dir)
    with safe_open(student_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    options = {"student": str(student_dir), "epochs": 1, "max_train_samples": 40, "relation_heads": 2}
    metrics = distill(
        teacher_dir,
        tmp_path / "out",
        DistillConfig(hidden_weight=1.0, attention_weight=1.0, embedding_weight=1.0, **options),
        clinc_slice,
    )
    assert metrics["live_teacher"] is True
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == keys  # no projection among the student's weights
    plain = distill(teacher_dir, tmp_path / "plain", DistillConfig(**options), clinc_slice)
    assert plain["live_teacher"] is False
    # the layer losses add to the training loss: the first epoch's mean loss is higher with them on
    assert metrics["history"][0]["train_loss"] > plain["history"][0]["train_loss"]


def test_layer_distiller_gradients_reach_the_projection(teacher_dir: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from slimformer.layer_losses import LayerDistiller, LayerLosses
    from slimformer.models import load_classifier

    teacher = load_classifier(teacher_dir)
    config = BertConfig(
        **{**teacher.config.to_dict(), "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2}
    )
    student = BertForSequenceClassification(config).train()
    distiller = LayerDistiller(
        teacher, student, LayerLosses(hidden=1.0, attention=1.0, embedding=1.0, relation_heads=2)
    )
    assert distiller.layers == [2, 4] and distiller.projection is not None
    batch = dict(
        AutoTokenizer.from_pretrained(teacher_dir)(
            ["what is my balance", "book a flight"], padding=True, return_tensors="pt"
        )
    )
    outputs = student(**batch, output_hidden_states=True)
    loss = distiller.loss(batch, outputs)
    loss.backward()
    assert loss.item() > 0
    assert distiller.projection.weight.grad.abs().sum() > 0
    assert student.bert.encoder.layer[-1].attention.self.query.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_layer_losses_refuse_a_student_with_another_vocabulary(
    teacher_dir: Path, tiny_base_dir: Path, clinc_slice, tmp_path: Path
) -> None:
    from slimformer.distill import DistillConfig, distill
    from slimformer.errors import ConfigError

    config = DistillConfig(student=str(tiny_base_dir), hidden_weight=1.0, epochs=1, max_train_samples=20)
    with pytest.raises(ConfigError, match="teacher's tokenizer"):
        distill(teacher_dir, tmp_path / "out", config, clinc_slice)
    assert not (tmp_path / "out").exists()


def test_unlabelled_texts_reach_the_trainer_with_teacher_targets_only(
    teacher_dir: Path, clinc_slice, tmp_path: Path
) -> None:
    from slimformer.distillation import TEACHER_LOGITS_COLUMN, add_teacher_logits, teacher_logits
    from slimformer.layer_losses import IGNORED_LABEL

    texts = ["is it going to rain tomorrow", "set an alarm for six", "how much money do i have"]
    train = clinc_slice.train.select(range(5))
    with_logits, _ = add_teacher_logits(train, teacher_dir, clinc_slice.labels, 64, transfer_texts=texts)
    assert with_logits["label"][:5] == clinc_slice.train["label"][:5]
    assert with_logits["label"][5:] == [IGNORED_LABEL] * 3
    expected = teacher_logits(teacher_dir, texts, 64)
    np.testing.assert_allclose(np.array(with_logits[TEACHER_LOGITS_COLUMN][5:]), expected, atol=1e-6)

    from slimformer.distill import DistillConfig, distill

    path = tmp_path / "logs.txt"
    path.write_text("\n".join(texts) + "\n\n")
    options = {"student_layers": 2, "epochs": 1, "max_train_samples": 30}
    metrics = distill(teacher_dir, tmp_path / "out", DistillConfig(unlabeled=str(path), **options), clinc_slice)
    assert metrics["transfer_rows"] == 3 and metrics["live_teacher"] is False
    plain = distill(teacher_dir, tmp_path / "plain", DistillConfig(**options), clinc_slice)
    assert plain["transfer_rows"] == 0
    # the training split's logits are cached apart from the transfer texts': both runs share them
    assert metrics["teacher_logits"]["key"] == plain["teacher_logits"]["key"] and plain["teacher_logits"]["hit"]
    assert metrics["teacher_logits"]["transfer"]["key"] != plain["teacher_logits"]["key"]  # the new rows' own
    assert "transfer" not in plain["teacher_logits"]


def test_bad_transfer_options_are_one_line_errors(tmp_path: Path) -> None:
    from slimformer.distill import DistillConfig
    from slimformer.errors import ConfigError, DataError
    from slimformer.transfer import read_unlabeled

    with pytest.raises(ConfigError, match="unknown augmentation 'paraphrase'"):
        DistillConfig(student_layers=2, augment="mask,paraphrase").validate()
    with pytest.raises(ConfigError, match="need alpha < 1"):
        DistillConfig(student_layers=2, alpha=1.0, hidden_weight=1.0).validate()
    with pytest.raises(DataError, match="no such file"):
        read_unlabeled(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match="holds no texts"):
        read_unlabeled(tmp_path / "empty.txt")
    (tmp_path / "rows.csv").write_text("query\nhello\n")
    with pytest.raises(DataError, match="no column 'text'"):
        read_unlabeled(tmp_path / "rows.csv")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "a b"}) + "\n" + json.dumps({"text": "c"}) + "\n")
    assert read_unlabeled(tmp_path / "rows.jsonl") == ["a b", "c"]


def test_augmentations_are_deterministic_and_do_what_they_say() -> None:
    from slimformer.transfer import augment_texts

    texts = ["book a flight to paris tomorrow", "what is the weather like in boston today", "set an alarm"]
    masked = augment_texts(texts, ["mask"], seed=3)
    assert masked == augment_texts(texts, ["mask"], seed=3) and len(masked) == 3
    for original, new in zip(texts, masked, strict=True):
        a, b = original.split(), new.split()
        assert len(a) == len(b) and 1 <= sum(x != y for x, y in zip(a, b, strict=True)) == b.count("[MASK]")
    deleted = augment_texts(texts, ["delete"], seed=3)
    assert all(len(n.split()) < len(o.split()) for o, n in zip(texts, deleted, strict=True))
    swapped = augment_texts(texts, ["swap"], seed=3)
    assert all(sorted(n.split()) == sorted(o.split()) for o, n in zip(texts, swapped, strict=True))
    mixed = augment_texts(texts, ["mix"], copies=2, seed=3)
    heads = {" ".join(t.split()[: (len(t.split()) + 1) // 2]) for t in texts}
    assert mixed and all(any(m.startswith(h) for h in heads) for m in mixed)
    assert len(augment_texts(texts, ["mask", "delete"], copies=2, seed=0)) == 12


def test_mix_near_takes_its_second_half_from_the_intent_the_teacher_ranks_next() -> None:
    from slimformer.errors import ConfigError
    from slimformer.transfer import augment_texts, runner_up_partners

    texts = ["book a flight to paris", "book a hotel in rome", "what is my balance", "how much money is left"]
    labels = [0, 1, 2, 2]
    logits = np.array(  # rows: texts; columns: labels 0, 1, 2
        [[5.0, 3.0, 1.0], [2.0, 6.0, 1.0], [0.0, 1.0, 7.0], [0.5, 0.0, 4.0]]
    )
    near = runner_up_partners(labels, logits)
    assert near == [[1], [0], [1], [0]]  # the highest logit of another label: flight <-> hotel; balance -> 1, 0
    mixed = augment_texts(texts, ["mix-near"], copies=3, seed=0, near=near)
    tails = {i: " ".join(t.split()[len(t.split()) // 2 :]) for i, t in enumerate(texts)}
    heads = [" ".join(t.split()[: (len(t.split()) + 1) // 2]) for t in texts]
    expected = {f"{heads[i]} {tails[near[i][0]]}" for i in range(len(texts))}
    assert set(mixed) == expected and len(mixed) == 12
    with pytest.raises(ConfigError, match="nearest intent"):
        augment_texts(texts, ["mix-near"])


def test_replace_draws_each_word_from_its_nearest_words_in_the_embedding_table() -> None:
    import torch
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from slimformer.errors import ConfigError
    from slimformer.transfer import augment_texts, word_neighbours

    vocab = ["[PAD]", "[UNK]", "[MASK]", "flight", "flights", "plane", "pizza", "cheese", "##s", "7"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]")),
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    )
    table = torch.zeros(len(vocab), 3)
    table[3:6] = torch.tensor([[1.0, 0.1, 0.0], [1.0, 0.0, 0.0], [0.9, 0.3, 0.0]])  # the flight words
    table[6:8] = torch.tensor([[0.05, 0.0, 1.0], [0.15, 0.0, 1.0]])  # the food words
    table[8:] = torch.tensor([1.0, 0.05, 0.0])  # a piece and a digit close to "flight": never drawn
    neighbours = word_neighbours(tokenizer, table, ["Flight pizza 7 boston"], count=2)
    # hand computation: flight-flights 0.995, flight-plane 0.975; pizza-cheese 0.995, pizza-flights 0.0499,
    # pizza-flight 0.0497 ("7", "##s" and the special tokens are no words; "boston" is not in the vocabulary)
    assert neighbours == {"flight": ["flights", "plane"], "pizza": ["cheese", "flights"]}
    replaced = augment_texts(["flight pizza"], ["replace"], copies=20, seed=1, neighbours=neighbours)
    assert replaced and all(len(text.split()) == 2 for text in replaced)
    firsts, seconds = {t.split()[0] for t in replaced}, {t.split()[1] for t in replaced}
    assert firsts <= {"flight", "flights", "plane"} and seconds <= {"pizza", "cheese", "flights"}
    assert firsts != {"flight"} and seconds != {"pizza"}
    with pytest.raises(ConfigError, match="needs word neighbours"):
        augment_texts(["flight"], ["replace"])


def test_mix_near_partners_come_from_the_teachers_runner_up_intent(teacher_dir: Path, clinc_slice, tmp_path) -> None:
    from slimformer.data import column
    from slimformer.distill import DistillConfig, distill
    from slimformer.distillation import teacher_logits
    from slimformer.models import classifier_labels
    from slimformer.transfer import teacher_runner_ups

    splits = clinc_slice.subset(30, None, seed=0)
    near = teacher_runner_ups(teacher_dir, splits, 64)
    logits = teacher_logits(teacher_dir, splits.train, 64)
    order = [classifier_labels(teacher_dir).index(label) for label in splits.labels]
    labels = column(splits.train, "label")
    for index, pool in enumerate(near):
        scores = logits[index, order].copy()
        scores[labels[index]] = -np.inf
        runner_up = int(scores.argmax())
        assert pool == [i for i, label in enumerate(labels) if label == runner_up]
    options = {"student_layers": 2, "epochs": 1, "max_train_samples": 30, "augment": "mix-near"}
    metrics = distill(teacher_dir, tmp_path / "out", DistillConfig(cache_dir=str(tmp_path), **options), clinc_slice)
    assert 0 < metrics["transfer_rows"] <= 30
    # the teacher scored the training split once: for the partners, then the training read it from the cache
    assert metrics["teacher_logits"]["hit"] is True and metrics["teacher_logits"]["transfer"]["hit"] is False
