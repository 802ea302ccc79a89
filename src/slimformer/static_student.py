"""`slimformer static`: a static student (depth 0), the far end of the size / speed frontier.

The teacher's contextual token embeddings are distilled into one table (the Model2Vec recipe): every vocabulary
token goes through the teacher alone (``[CLS] token [SEP]``, outputs mean-pooled), the vectors are reduced by
PCA, and each row is weighted by SIF, a / (a + p(token)) with p from Zipf's law over the token ids (WordPiece
vocabularies list pieces roughly by frequency). A text is the mean of its tokens' rows; a linear head on top is
trained with the one distillation path (:func:`slimformer.training.train_classifier`: the teacher's cached logits,
transfer data if asked), and the table learns too unless `freeze_word_embeddings`. The checkpoint is a
transformers model (`static-embedding`), so `slimformer export` turns it into an ONNX folder like any other
student: a Gather, a masked mean and a MatMul, which benchmark, report, serve and `auto` treat as they treat
every ONNX artefact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from slimformer.artifacts import Session, StageResult
from slimformer.config import option
from slimformer.envelope import Stage
from slimformer.errors import ConfigError
from slimformer.families import STATIC_MODEL_TYPE
from slimformer.models import save_checkpoint
from slimformer.training import SoftTargets, TrainingOptions

if TYPE_CHECKING:
    from slimformer.data import DataSplits

MODEL_TYPE = STATIC_MODEL_TYPE
ARCHITECTURE = "StaticEmbeddingForSequenceClassification"
TOKEN_BATCH = 512  # vocabulary tokens through the teacher at once


@dataclass
class StaticConfig(SoftTargets, TrainingOptions):
    """Options of `slimformer static`: the table's width and weighting, and how the head is trained."""

    accepts_teacher: ClassVar[bool] = True

    dims: int = option(256, "Width of the static token table after PCA (Model2Vec's default: 256).")
    sif_coefficient: float = option(1e-4, "SIF weight a / (a + p(token)), p from Zipf's law over ids (0 = off).")
    augment: str = option(
        "", "Augmented copies of the training texts, teacher targets only: mask,delete,swap,mix,replace."
    )
    cache_dir: str | None = option(None, "Teacher-logit cache folder (default: $SLIMFORMER_CACHE_DIR or ~/.cache).")
    epochs: float = option(10.0, "Passes over the training split (a static student's step is cheap).")
    learning_rate: float = option(3e-3, "Peak learning rate (a table and a linear head want more than a BERT).")
    batch_size: int = option(64, "Training batch size.")

    @property
    def needs_teacher(self) -> bool:
        return True  # the table comes from the teacher whatever alpha is

    def validate(self) -> None:
        from slimformer.transfer import parse_augmentations

        if self.dims < 1:
            raise ConfigError(f"dims must be >= 1, got {self.dims}")
        if self.sif_coefficient < 0:
            raise ConfigError(f"sif coefficient must be >= 0, got {self.sif_coefficient}")
        self.validate_soft_targets()
        parse_augmentations(self.augment)
        if self.augment and self.alpha >= 1:
            raise ConfigError("--augment learns from the teacher: it needs alpha < 1")
        self.validate_training_options()


def token_table(teacher: Path, dims: int, sif_coefficient: float, batch: int = TOKEN_BATCH) -> dict[str, Any]:
    """The Model2Vec table of `teacher`: (vocabulary, dims) float32 rows and what PCA kept."""
    import torch
    from sklearn.decomposition import PCA

    from slimformer.models import load_classifier, load_tokenizer

    tokenizer = load_tokenizer(teacher)
    model = load_classifier(teacher).eval()
    encoder = model.base_model
    vocab = len(tokenizer)
    first = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
    last = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
    rows = np.zeros((vocab, model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, vocab, batch):
            ids = torch.tensor([[*first, i, *last] for i in range(start, min(start + batch, vocab))])
            hidden = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            rows[start : start + len(ids)] = hidden.mean(dim=1).float().numpy()
    dims = min(dims, rows.shape[1], vocab)
    pca = PCA(n_components=dims, svd_solver="full", random_state=0)
    table = pca.fit_transform(rows).astype(np.float32)
    if sif_coefficient > 0:
        inverse_rank = 1.0 / np.arange(2, vocab + 2)
        probability = inverse_rank / inverse_rank.sum()
        table *= (sif_coefficient / (sif_coefficient + probability))[:, None].astype(np.float32)
    return {"table": table, "explained_variance": float(pca.explained_variance_ratio_.sum())}


def static_student(
    source: Path, folder: Path, config: StaticConfig, data: DataSplits, teacher: Path | None = None
) -> StageResult:
    """The static stage's body: distil `teacher` (default: `source`) into a table, train the head, save both."""
    import torch
    from transformers import set_seed

    from slimformer.data import column
    from slimformer.models import check_classifier_fits, load_tokenizer
    from slimformer.static_model import StaticEmbeddingConfig, StaticEmbeddingForSequenceClassification
    from slimformer.training import train_classifier
    from slimformer.transfer import augment_for_model, near_partners

    teacher_path = teacher or source
    labels = check_classifier_fits(teacher_path, data.labels)
    splits = data.subset(config.max_train_samples, config.max_eval_samples, seed=config.seed)
    splits = splits.in_label_order(labels)
    set_seed(config.seed)
    built = token_table(teacher_path, config.dims, config.sif_coefficient)
    tokenizer = load_tokenizer(teacher_path)
    model_config = StaticEmbeddingConfig(
        vocab_size=built["table"].shape[0],
        hidden_size=built["table"].shape[1],
        pad_token_id=tokenizer.pad_token_id or 0,
        num_labels=len(splits.labels),
        id2label=dict(enumerate(splits.labels)),
        label2id={label: i for i, label in enumerate(splits.labels)},
    )
    model = StaticEmbeddingForSequenceClassification(model_config)
    with torch.no_grad():
        model.embeddings.weight.copy_(torch.from_numpy(built["table"]))
    transfer = []
    if config.augment:  # `replace` draws nearest words from the static table itself
        train = column(splits.train, "text")
        near = near_partners(config.augment, teacher_path, splits, config.max_length, config.cache_dir)
        transfer = augment_for_model(train, config.augment, 1, config.seed, tokenizer, model.embeddings.weight, near)
    distillation = config.distillation(teacher_path, cache_dir=config.cache_dir, transfer_texts=transfer)
    result = train_classifier(model, tokenizer, splits, config, folder / "trainer", distillation=distillation)
    save_checkpoint(model, tokenizer, folder)
    metrics = {
        "teacher": str(teacher_path),
        "student": "static token table (Model2Vec: teacher outputs per token, PCA, SIF) + linear head",
        "explained_variance": round(built["explained_variance"], 4),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "data": splits.name,
        "data_fingerprint": splits.fingerprint,
        "config": asdict(config),
        **result.metrics(),
    }
    return StageResult(metrics, Session(config.max_length))


STAGE = Stage(
    "static",
    StaticConfig,
    static_student,
    "A static student (depth 0): the teacher's token embeddings as one table (Model2Vec) + a trained head.",
)
