"""Vocabulary pruning: keep exact embedding rows only for the tokens a corpus uses (plus special tokens).

Three ways to treat the tokens the corpus never uses:

- ``cluster`` (default, :func:`cluster_unseen_rows`; any tokenizer: WordPiece, byte-level BPE, SentencePiece /
  Unigram): the tokenizer is unchanged (every text is spelt with the
  same pieces as before) and each unseen token's row becomes the centroid of its k-means cluster, so the table
  holds only `used + clusters` distinct rows. The ONNX stages store each distinct row once
  (:mod:`slimformer.onnx.embeddings`), which is where the file shrinks.
- ``sign`` (:func:`sign_unseen_rows`; any tokenizer): the tokenizer is unchanged and each unseen token spelt with
  characters the corpus's tokens use keeps its own row in one bit per value: the sign of each value times the
  row's mean magnitude, after the mean of those rows is moved into the position embeddings (every token adds
  one position row, so the model computes the same function for the other tokens). Tokens spelt with other
  characters (other scripts, placeholders) share k-means rows. The ONNX stages store the two-valued rows at one
  bit a value (:func:`slimformer.onnx.embeddings.pack_word_embeddings_4bit`): unseen words keep most of their
  own meaning instead of a centroid's, for about a quarter of a 4-bit row.
- ``split`` (:func:`prune_vocabulary`): slice the rows and rebuild the WordPiece tokenizer with the kept pieces
  only. WordPiece is greedy longest-match-first and every token it chose on the corpus is kept, so the corpus
  tokenizes as before (ids remapped); a word of another text is spelt with smaller kept pieces or becomes
  [UNK]. The PyTorch checkpoint itself shrinks, but unseen words change spelling, which costs accuracy on
  out-of-scope queries. BPE and Unigram vocabularies are not greedy longest-match, so ``split`` refuses them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from slimformer.errors import ModelError
from slimformer.models import save_checkpoint

UNUSED_TOKEN = re.compile(r"\[unused\d+\]")


def used_token_ids(tokenizer: Any, texts: list[str], min_count: int = 1, batch_size: int = 1024) -> list[int]:
    """Sorted ids of every token the tokenizer produces on `texts` at least `min_count` times, plus all special and
    added tokens."""
    counts: Counter[int] = Counter()
    for start in range(0, len(texts), batch_size):
        for ids in tokenizer(texts[start : start + batch_size], add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    used = {token for token, count in counts.items() if count >= min_count}
    used.update(tokenizer.all_special_ids)
    used.update(tokenizer.convert_tokens_to_ids(list(tokenizer.get_added_vocab())))
    return sorted(used)


def frequent_token_ids(tokenizer: Any, count: int) -> set[int]:
    """The first `count` ids of the vocabulary minus BERT's `[unusedN]` placeholders (WordPiece vocabularies
    such as BERT's list pieces roughly by frequency after the single characters)."""
    return {i for token, i in tokenizer.get_vocab().items() if i < count and not UNUSED_TOKEN.fullmatch(token)}


def prune_vocabulary(
    model_dir: str | Path, texts: list[str], output: str | Path, keep_frequent: int = 0
) -> dict[str, Any]:
    """Write to `output` a copy of the classifier in `model_dir` keeping only the tokens `texts` use
    (plus the `keep_frequent` first ids of the vocabulary, so unseen words keep more of their own pieces).

    Returns a summary: vocabulary sizes, parameter counts and weight-file bytes before and after.
    """
    from slimformer.artifacts import atomic_output_dir

    with atomic_output_dir(output) as folder:
        return write_pruned_vocabulary(model_dir, texts, folder, keep_frequent)


def write_pruned_vocabulary(
    model_dir: str | Path, texts: list[str], folder: Path, keep_frequent: int = 0
) -> dict[str, Any]:
    """`prune_vocabulary` into an existing folder (a stage's atomic output folder)."""
    import torch
    from torch import nn

    from slimformer.artifacts import weights_size_bytes
    from slimformer.models import load_classifier, load_tokenizer, resolve_model_path

    model_dir = resolve_model_path(model_dir)
    if not texts:
        raise ModelError("vocabulary pruning needs at least one text")
    tokenizer = load_tokenizer(model_dir)
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise ModelError("vocabulary pruning needs a tokenizers-backed (fast) tokenizer")
    tokenizer_model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if tokenizer_model.get("type") != "WordPiece":
        raise ModelError(
            f"--vocab-unseen split rebuilds WordPiece tokenizers only; this one is {tokenizer_model.get('type')} "
            "(use --vocab-unseen cluster, which works with any tokenizer)"
        )
    model = load_classifier(model_dir)
    kept = sorted(set(used_token_ids(tokenizer, texts)) | frequent_token_ids(tokenizer, keep_frequent))
    old_embeddings = model.get_input_embeddings()
    if old_embeddings.num_embeddings < len(tokenizer):
        raise ModelError(f"{model_dir}: the embedding table is smaller than the tokenizer's vocabulary")
    params_before = sum(p.numel() for p in model.parameters())

    with torch.no_grad():
        new_embeddings = nn.Embedding(len(kept), old_embeddings.embedding_dim)
        new_embeddings.weight.copy_(old_embeddings.weight[torch.tensor(kept)])
    model.set_input_embeddings(new_embeddings)
    old_to_new = {old: new for new, old in enumerate(kept)}
    model.config.vocab_size = len(kept)
    if model.config.pad_token_id is not None:
        model.config.pad_token_id = old_to_new.get(model.config.pad_token_id, 0)

    save_checkpoint(model, tokenizer, folder)
    _rewrite_tokenizer_files(folder, tokenizer, kept)
    _check_same_tokens(tokenizer, load_tokenizer(folder), texts[:2000])
    return {
        "vocab_size_before": len(tokenizer),
        "vocab_size_after": len(kept),
        "kept_frequent_ids": keep_frequent,
        "parameters_before": params_before,
        "parameters_after": sum(p.numel() for p in model.parameters()),
        "weights_bytes_before": weights_size_bytes(model_dir),
        "weights_bytes_after": weights_size_bytes(folder),
    }


def cluster_unseen_rows(
    model_dir: str | Path, texts: list[str], folder: Path, clusters: int = 1024, seed: int = 42, min_count: int = 1
) -> dict[str, Any]:
    """Write to `folder` the classifier in `model_dir` with the word-embedding rows of the tokens `texts` never
    use (or use fewer than `min_count` times) replaced by their k-means centroid (`clusters` of them); the
    tokenizer is copied unchanged.

    Returns a summary: vocabulary size, used and unseen tokens, clusters and distinct rows.
    """
    import torch

    model, tokenizer, used, unseen = _model_and_unseen_tokens(model_dir, texts, min_count)
    table = model.get_input_embeddings().weight
    clusters = _share_centroid_rows(table, unseen, clusters, seed)
    save_checkpoint(model, tokenizer, folder)
    distinct = len(torch.unique(table.detach(), dim=0))
    return {
        "unseen_tokens": "cluster",
        "vocab_size": len(tokenizer),
        "used_tokens": len(used),
        "unseen_token_count": len(unseen),
        "clusters": clusters,
        "embedding_rows": int(table.shape[0]),
        "distinct_embedding_rows": distinct,
        "note": "tokenizer unchanged; ONNX export/optimize/quantize store each distinct row once",
    }


def sign_unseen_rows(
    model_dir: str | Path, texts: list[str], folder: Path, clusters: int = 64, seed: int = 42, min_count: int = 1
) -> dict[str, Any]:
    """Write to `folder` the classifier in `model_dir` with the word-embedding rows of the tokens `texts` never
    use (or use fewer than `min_count` times) made two-valued (see the module docstring); the tokenizer is copied
    unchanged. Tokens spelt with characters no used token has share `clusters` k-means rows instead.

    Returns a summary: vocabulary size, used tokens, sign rows, clustered tokens and whether the mean was moved.
    """
    import numpy as np
    import torch

    model, tokenizer, used, unseen = _model_and_unseen_tokens(model_dir, texts, min_count)
    table = model.get_input_embeddings().weight
    spelling = tokenizer.convert_ids_to_tokens(list(range(table.shape[0])))
    spelt = set(used) - set(tokenizer.all_special_ids)  # "[CLS]" would make "[unused7]" look familiar
    characters = {character for token in spelt if spelling[token] for character in spelling[token]}
    familiar = np.array([bool(spelling[i]) and set(spelling[i]) <= characters for i in unseen], dtype=bool)
    signed, others = unseen[familiar], unseen[~familiar]
    positions = getattr(getattr(model.base_model, "embeddings", None), "position_embeddings", None)
    move_mean = len(signed) > 0 and isinstance(positions, torch.nn.Embedding)  # every token adds one position row
    signed_ids = torch.from_numpy(signed)
    with torch.no_grad():
        if move_mean:
            mean = table[signed_ids].mean(dim=0)
            table -= mean
            positions.weight += mean
        rows = table[signed_ids]
        magnitude = rows.abs().mean(dim=1, keepdim=True)
        table[signed_ids] = torch.where(rows >= 0, magnitude, -magnitude)
    clusters = _share_centroid_rows(table, others, clusters, seed)
    save_checkpoint(model, tokenizer, folder)
    return {
        "unseen_tokens": "sign",
        "vocab_size": len(tokenizer),
        "used_tokens": len(used),
        "min_count": min_count,
        "sign_rows": len(signed),
        "clustered_tokens": len(others),
        "clusters": clusters,
        "mean_moved_to_positions": move_mean,
        "note": "tokenizer unchanged; the ONNX quantize stage stores two-valued rows at one bit a value",
    }


def _model_and_unseen_tokens(model_dir: str | Path, texts: list[str], min_count: int) -> tuple[Any, Any, list, Any]:
    """The classifier, its tokenizer, the ids `texts` use (:func:`used_token_ids`) and the other ids (an array)."""
    import numpy as np

    from slimformer.models import load_classifier, load_tokenizer, resolve_model_path

    model_dir = resolve_model_path(model_dir)
    if not texts:
        raise ModelError("vocabulary pruning needs at least one text")
    tokenizer = load_tokenizer(model_dir)
    model = load_classifier(model_dir)
    used = used_token_ids(tokenizer, texts, min_count)
    rows = model.get_input_embeddings().weight.shape[0]
    return model, tokenizer, used, np.setdiff1d(np.arange(rows), np.asarray(used, dtype=np.int64))


def _share_centroid_rows(table: Any, tokens: Any, clusters: int, seed: int) -> int:
    """Give the rows of `tokens` (ids) their k-means centroid in place; returns the number of clusters used."""
    import torch
    from sklearn.cluster import MiniBatchKMeans

    clusters = min(clusters, len(tokens))
    if clusters:
        rows = table.detach()[torch.from_numpy(tokens)].float().numpy()
        kmeans = MiniBatchKMeans(n_clusters=clusters, random_state=seed, batch_size=4096, n_init=1).fit(rows)
        centroids = torch.from_numpy(kmeans.cluster_centers_[kmeans.labels_]).to(table.dtype)
        with torch.no_grad():
            table[torch.from_numpy(tokens)] = centroids
    return clusters


def _rewrite_tokenizer_files(folder: Path, tokenizer: Any, kept: list[int]) -> None:
    """Rewrite tokenizer.json (vocab, added tokens, post-processor ids) and vocab.txt with the kept ids."""
    old_to_new = {old: new for new, old in enumerate(kept)}
    tokens = tokenizer.convert_ids_to_tokens(kept)
    state = json.loads((folder / "tokenizer.json").read_text())
    state["model"]["vocab"] = {token: new for new, token in enumerate(tokens)}
    state["added_tokens"] = [
        {**added, "id": old_to_new[added["id"]]} for added in state.get("added_tokens", []) if added["id"] in old_to_new
    ]
    _remap_post_processor(state.get("post_processor"), old_to_new)
    if state.get("padding") and "pad_id" in state["padding"]:
        state["padding"]["pad_id"] = old_to_new.get(state["padding"]["pad_id"], 0)
    (folder / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False))
    # vocab.txt is what a WordPiece tokenizer rebuilds from when tokenizer.json is absent
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in tokens))
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        decoder = config.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            config["added_tokens_decoder"] = {
                str(old_to_new[int(i)]): entry for i, entry in decoder.items() if int(i) in old_to_new
            }
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))


def _remap_post_processor(processor: dict | None, old_to_new: dict[int, int]) -> None:
    if not processor:
        return
    for child in processor.get("processors", []) or []:
        _remap_post_processor(child, old_to_new)
    for special in (processor.get("special_tokens") or {}).values():
        special["ids"] = [old_to_new[i] for i in special["ids"]]
    for key in ("sep", "cls"):  # BertProcessing / RobertaProcessing store [token, id]
        if isinstance(processor.get(key), list):
            processor[key] = [processor[key][0], old_to_new[processor[key][1]]]


def _check_same_tokens(before: Any, after: Any, texts: list[str]) -> None:
    """The rebuilt tokenizer must spell the corpus with the very same tokens (a bug otherwise)."""
    old = before(texts, add_special_tokens=True)["input_ids"]
    new = after(texts, add_special_tokens=True)["input_ids"]
    for old_ids, new_ids in zip(old, new, strict=True):
        if before.convert_ids_to_tokens(old_ids) != after.convert_ids_to_tokens(new_ids):
            raise RuntimeError("the pruned tokenizer does not reproduce the corpus tokenization")
