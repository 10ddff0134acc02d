"""The offline recommender's features: what it reads of the recent window, the target and a profile.

Items are embedded from their text (title, year, genres), centred on the mean item and
re-normalized: raw MiniLM cosines mostly measure how generic a text is, and centring compares
items with each other instead (docs/architecture.md, "Measured choices"). The recent window gives
rating statistics and relations between the target and the recent items (similarity to the liked
/ disliked items and to the whole window, a similarity-weighted rating, the mean rating of recent
items sharing a genre, genre and year overlap, a rating-weighted taste vector times the target).
The target adds its genres, year and principal components. The profile is split into sentences,
each centred on the mean profile sentence; features relate them to the target: cosines of the
profile and of its closest sentence to the target, the profile times the target in the item
space's principal components, and the sentences pooled by attention on the target (so the head
reads *what the profile says about items like this one*, e.g. "enjoys ..." or "tends to dislike
..."), plus a zero-shot polarity of those sentences against "loves" / "dislikes" anchors. A
profile of None or "" gives zeros.

Low dimensions on purpose (8 principal components): with ~150 calibration users, richer profile
features identify users and overfit.

Optional blocks (`OfflineConfig`): `use_item_stats` adds each item's mean rating and rating count
(collaborative statistics, off by default: the paper's recommender sees none);
`use_item_knowledge` adds `knowledge.KnowledgeFeatures` (item factors learned from training users,
related to the recent window and to the items and genres the profile names, read by
`mentions.ProfileReader`); `oracle_long_window` adds the same relation features computed from the
example's long window: only the oracle study (`oracle.py`) turns it on, to measure the information
ceiling; otherwise the long window reaches the recommender only through a profile's text.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lettingo_dagster.evaluation.examples import ItemText, TargetExample, item_text
from lettingo_dagster.evaluation.knowledge import KnowledgeContext, KnowledgeFeatures
from lettingo_dagster.evaluation.offline.encoder import EncoderPrecision, TextEncoder
from lettingo_dagster.exploration.history import RatedItem


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
    use_item_knowledge: bool = False  # item factors: the recent window and what a profile names
    oracle_long_window: bool = False  # ONLY the oracle study: long-window features
    holdout_fraction: float = 0.25  # calibration users held out for the figures fit returns
    seed: int = 0
    encoder_precision: EncoderPrecision = "float32"  # the MiniLM encoder's (encoder.py)


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


# Examples whose profile-independent blocks are kept (about 30 KB each).
_CONTEXT_CACHE_SIZE = 8192
# Profiles whose sentence embeddings and projections are kept (a few KB each).
_READING_CACHE_SIZE = 8192


@dataclass
class _Context:
    """What the features of one example and candidate list share across profiles."""

    example: TargetExample  # held so that its id cannot be reused while cached
    cand_vecs: np.ndarray
    cand_proj: np.ndarray  # the candidates in the item components
    before: np.ndarray  # recent-window statistics and relations, the candidates' own features
    after: np.ndarray | None  # the oracle's long-window blocks, item statistics
    knowledge: KnowledgeContext | None


@dataclass
class _Reading:
    """What the features of one profile share across its targets: its sentences in the fitted
    text space and their polarity."""

    seg_vecs: np.ndarray  # (S, D) centred, normalized sentence embeddings
    whole: np.ndarray  # (D,) their normalized mean
    polarity: np.ndarray  # (S,) loves-anchor minus dislikes-anchor cosine
    whole_items: np.ndarray  # (1, item_dims) the whole profile in the item components
    whole_text: np.ndarray  # (1, text_dims) the whole profile in the text components


class _Featurizer:
    def __init__(
        self,
        encoder: TextEncoder,
        config: OfflineConfig,
        space: _Space | None,
        knowledge: KnowledgeFeatures | None = None,
    ) -> None:
        self.encoder = encoder
        self.config = config
        self.knowledge = knowledge
        self._anchors: np.ndarray | None = None
        self._stats: dict[str, np.ndarray] = {}
        self._contexts: OrderedDict[tuple[int, tuple[str, ...]], _Context] = OrderedDict()
        self._readings: OrderedDict[str, _Reading | None] = OrderedDict()
        self._items: dict[str, np.ndarray] = {}  # item text -> centred embedding
        self._genre_index: dict[str, int] = {}  # genre -> column of `_genre_rows`
        self.space = space

    @property
    def space(self) -> _Space | None:
        return self._space

    @space.setter
    def space(self, space: _Space | None) -> None:
        # Every cached context, reading, item vector and statistic belongs to the old space.
        self._space = space
        self._contexts.clear()
        self._readings.clear()
        self._items.clear()
        self._stats = {}

    # embeddings
    def item_vectors(self, items: Sequence[ItemText | RatedItem]) -> np.ndarray:
        """Centred, normalized item embeddings (cosines then compare items with each other,
        not with the average item)."""
        texts = [item_text(i) for i in items]
        if not texts:
            return self.space.center_items(self.encoder.encode([]))
        # Each item is centred once per space: the same few thousand items recur in every
        # example's windows and candidates (row-wise, so the vectors are the same bits).
        missing = [t for t in dict.fromkeys(texts) if t not in self._items]
        if missing:
            centred = self.space.center_items(self.encoder.encode(missing))
            self._items.update(zip(missing, centred, strict=True))
        return np.stack([self._items[t] for t in texts])

    def _genre_rows(self, *groups: Sequence[ItemText | RatedItem]) -> list[np.ndarray]:
        """For each group of items, (len(group), genres) 0/1 rows: which genres each item has,
        in columns shared by the groups."""
        for items in groups:
            for item in items:
                for genre in item.genres:
                    self._genre_index.setdefault(genre, len(self._genre_index))
        out = []
        for items in groups:
            rows = np.zeros((len(items), len(self._genre_index)))
            for row, item in enumerate(items):
                rows[row, [self._genre_index[g] for g in item.genres]] = 1.0
            out.append(rows)
        return out

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
        # Genres as 0/1 rows: matrix products instead of a Python loop per candidate (this
        # block runs for every example in every fit and scoring call).
        cand_genres, window_genres = self._genre_rows(candidates, window)
        match = (cand_genres @ window_genres.T) > 0  # (n, W): shares a genre with the item
        genre_rating = (match @ ratings + _SHRINK * mean) / (match.sum(axis=1) + _SHRINK) - mean
        # Per candidate genre, the share of window items with it; averaged over its genres.
        stated = cand_genres.sum(axis=1)
        genre_share = (cand_genres @ window_genres.sum(axis=0)) / len(window)
        genre_share = np.divide(genre_share, stated, out=np.zeros(n), where=stated > 0)
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

    def _reading(self, profile: str | None) -> _Reading | None:
        """The profile's sentences read once, however many targets it is scored on; None
        without any."""
        key = profile or ""
        if key in self._readings:
            self._readings.move_to_end(key)
            return self._readings[key]
        segments = profile_segments(profile, self.config.max_segments)
        reading = None
        if segments:
            raw = self.encoder.encode(segments)
            seg_vecs = self.space.center_text(raw)
            whole = _normalize(seg_vecs.mean(axis=0))
            polarity = raw @ self.anchors().T
            reading = _Reading(
                seg_vecs=seg_vecs,
                whole=whole,
                polarity=polarity[:, 0] - polarity[:, 1],
                whole_items=self.space.project_items(whole[None, :]),
                whole_text=self.space.project_text(whole[None, :]),
            )
        self._readings[key] = reading
        if len(self._readings) > _READING_CACHE_SIZE:
            self._readings.popitem(last=False)
        return reading

    def _profile_block(
        self, cand_vecs: np.ndarray, cand_proj: np.ndarray, profile: str | None
    ) -> np.ndarray:
        n = len(cand_vecs)
        d_item, d_text = self.config.item_dims, self.config.text_dims
        width = 6 + 2 * d_item + 2 * d_text
        reading = self._reading(profile)
        if reading is None:
            return np.zeros((n, width))
        seg_vecs, polarity = reading.seg_vecs, reading.polarity
        sims = cand_vecs @ seg_vecs.T  # (n, S)
        attention = _softmax(sims / self.config.attention_temperature, axis=1)
        pooled = attention @ seg_vecs  # (n, D)
        closest = sims.argmax(axis=1)
        best = sims.max(axis=1)
        scalars = np.column_stack(
            [
                np.ones(n),
                cand_vecs @ reading.whole,
                best,
                attention @ polarity,
                polarity[closest],
                polarity[closest] * best,
            ]
        )
        return np.hstack(
            [
                scalars,
                reading.whole_items * cand_proj,
                self.space.project_items(pooled) * cand_proj,
                self.space.project_text(pooled),
                np.repeat(reading.whole_text, n, axis=0),
            ]
        )

    def _context(self, example: TargetExample, candidates: Sequence[ItemText]) -> _Context:
        """The blocks that do not depend on the profile, computed once per example and
        candidate list: fitting and scoring read each example with many profiles in turn."""
        key = (id(example), tuple(c.item_id for c in candidates))
        cached = self._contexts.get(key)
        if cached is not None and cached.example is example:
            self._contexts.move_to_end(key)
            return cached
        cand_vecs = self.item_vectors(candidates)
        n = len(candidates)
        before = [
            np.repeat(self._user_stats(example.recent)[None, :], n, axis=0),
            self._window_block(cand_vecs, candidates, example.recent),
            self._item_block(cand_vecs, candidates),
        ]
        after = []
        if self.config.oracle_long_window:
            after.append(np.repeat(self._user_stats(example.long_window)[None, :], n, axis=0))
            after.append(self._window_block(cand_vecs, candidates, example.long_window))
        if self.config.use_item_stats:
            after.append(self._item_stats(candidates))
        context = _Context(
            example=example,
            cand_vecs=cand_vecs,
            cand_proj=self.space.project_items(cand_vecs),
            before=np.hstack(before),
            after=np.hstack(after) if after else None,
            knowledge=self.knowledge.context(example, candidates) if self.knowledge else None,
        )
        self._contexts[key] = context
        if len(self._contexts) > _CONTEXT_CACHE_SIZE:
            self._contexts.popitem(last=False)
        return context

    def features(
        self, example: TargetExample, profile: str | None, candidates: Sequence[ItemText]
    ) -> np.ndarray:
        """(len(candidates), n_features) for one example, profile and candidate list."""
        context = self._context(example, candidates)
        blocks = [
            context.before,
            self._profile_block(context.cand_vecs, context.cand_proj, profile),
        ]
        if context.after is not None:
            blocks.append(context.after)
        if context.knowledge is not None:
            blocks.append(self.knowledge.block(context.knowledge, profile))
        return np.hstack(blocks).astype(np.float32)

    def prefetch(self, examples: Sequence[TargetExample], profiles: Sequence[str | None]) -> None:
        """Encode every text in one batched pass (the cache then serves the per-example loop)."""
        items = self.items_read(examples)
        texts = [item_text(i) for i in items.values()]
        texts += sorted(
            {s for p in profiles for s in profile_segments(p, self.config.max_segments)}
        )
        self.encoder.encode(texts)
