"""Item knowledge: what the recommender knows about items, learned from training users only.

An LLM recommender knows films from pretraining; the offline recommender has to learn that
knowledge from interactions. `fit_item_knowledge` takes the training split's interactions and
returns item factors (a truncated SVD of the user x item interaction matrix, scikit-learn),
each item's popularity (log count) and its shrunk mean rating. Calibration and test users never
enter it, so the recommender fit on calibration users and the report on test users read
knowledge that saw none of their interactions.

Saved as arrays (npz) and a JSON summary, never a pickle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lettingo_dagster.settings import KnowledgeSettings, SplitSettings

if TYPE_CHECKING:
    from lettingo_dagster.evaluation.mentions import ProfileReader

_SHRINK = 5.0  # pseudo-ratings at the global mean for an item's mean rating
FILES = ("knowledge.npz", "knowledge.json")


@dataclass
class ItemKnowledge:
    item_ids: list[str]
    factors: np.ndarray  # (items, k); rows of items without enough training users are zero
    popularity: np.ndarray  # (items,) log1p(training users who rated the item)
    mean_rating: np.ndarray  # (items,) shrunk towards the global mean
    global_mean: float
    titles: list[str] = field(default_factory=list)  # per item, for reading profiles
    genres: list[str] = field(default_factory=list)  # per item, '|'-joined
    summary: dict[str, object] = field(default_factory=dict)
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {item: row for row, item in enumerate(self.item_ids)}

    @property
    def dims(self) -> int:
        return int(self.factors.shape[1])

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for array in (self.factors, self.popularity, self.mean_rating):
            digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        digest.update("|".join(self.item_ids).encode())
        return digest.hexdigest()[:16]

    def rows(self, item_ids: list[str] | tuple[str, ...]) -> np.ndarray:
        """Row index of each item, -1 for items the knowledge has never seen."""
        return np.array([self._index.get(str(i), -1) for i in item_ids], dtype=int)

    def vectors(self, item_ids: list[str] | tuple[str, ...]) -> np.ndarray:
        """(n, k) factors; zeros for unknown items."""
        rows = self.rows(item_ids)
        out = np.zeros((len(rows), self.dims), dtype=np.float32)
        known = rows >= 0
        out[known] = self.factors[rows[known]]
        return out

    def item_stats(self, item_ids: list[str] | tuple[str, ...]) -> np.ndarray:
        """(n, 2): log popularity and mean rating minus the global mean (0 for unknown items)."""
        rows = self.rows(item_ids)
        out = np.zeros((len(rows), 2))
        known = rows >= 0
        out[known, 0] = self.popularity[rows[known]]
        out[known, 1] = self.mean_rating[rows[known]] - self.global_mean
        return out

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(
            folder / FILES[0],
            factors=self.factors,
            popularity=self.popularity,
            mean_rating=self.mean_rating,
        )
        (folder / FILES[1]).write_text(
            json.dumps(
                {"item_ids": self.item_ids, "global_mean": self.global_mean,
                 "titles": self.titles, "genres": self.genres, "summary": self.summary},
                indent=0,
            )
        )  # fmt: skip

    @classmethod
    def load(cls, folder: Path | str) -> ItemKnowledge:
        folder = Path(folder)
        arrays = np.load(folder / FILES[0])
        meta = json.loads((folder / FILES[1]).read_text())
        return cls(
            item_ids=list(meta["item_ids"]),
            factors=arrays["factors"],
            popularity=arrays["popularity"],
            mean_rating=arrays["mean_rating"],
            global_mean=float(meta["global_mean"]),
            titles=list(meta.get("titles", [])),
            genres=list(meta.get("genres", [])),
            summary=dict(meta.get("summary", {})),
        )


def training_interactions(con, dataset: str, split: SplitSettings) -> tuple[pd.DataFrame, int]:
    """Interactions of every user the seeded split puts in `train` (eligible for task samples or
    not; the split depends on the user id alone), and how many of those users task_samples holds
    as calibration or test users (must be 0)."""
    from lettingo_dagster.data.samples import assign_split

    users = [r[0] for r in con.execute(
        "SELECT DISTINCT user_id FROM interactions WHERE dataset = ? ORDER BY 1", [dataset]
    ).fetchall()]  # fmt: skip
    uncapped = split.model_copy(update={"max_users_per_split": None})
    assigned = assign_split(users, uncapped)
    train = assigned.loc[assigned["split"] == "train", ["user_id"]]
    con.register("_knowledge_users", train)
    try:
        frame = con.execute(
            """SELECT i.user_id, i.item_id, i.rating FROM interactions i
               JOIN _knowledge_users u USING (user_id) WHERE i.dataset = ?""",
            [dataset],
        ).df()
        leaked = con.execute(
            """SELECT count(DISTINCT s.user_id) FROM task_samples s
               JOIN _knowledge_users u USING (user_id)
               WHERE s.dataset = ? AND s.split <> 'train'""",
            [dataset],
        ).fetchall()[0][0]
    finally:
        con.unregister("_knowledge_users")
    return frame, int(leaked)


def fit_item_knowledge(
    interactions: pd.DataFrame, catalog: pd.DataFrame, settings: KnowledgeSettings
) -> ItemKnowledge:
    """Factors, popularity and mean ratings from `interactions` (user_id, item_id, rating) of the
    training users; `catalog` (item_id, title, genres) lists every item, so coverage can be
    stated and profiles can be read against the titles."""
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD

    if interactions.empty:
        raise ValueError("no training interactions to learn item knowledge from")
    catalog = catalog.assign(item_id=catalog["item_id"].astype(str)).drop_duplicates("item_id")
    items = sorted(set(catalog["item_id"]) | set(interactions["item_id"].astype(str)))
    item_row = {item: row for row, item in enumerate(items)}
    users = sorted(interactions["user_id"].astype(str).unique())
    user_row = {user: row for row, user in enumerate(users)}
    rows = interactions["user_id"].astype(str).map(user_row).to_numpy()
    cols = interactions["item_id"].astype(str).map(item_row).to_numpy()
    # Implicit feedback: who rated what. On MovieLens-100K held-out targets this ranks better
    # than rating-weighted or popularity-normalized matrices (calibration users, HR@1).
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(users), len(items))
    )
    matrix.data[:] = 1.0  # a repeated (user, item) counts once
    counts = np.asarray(matrix.sum(axis=0)).ravel()
    k = min(settings.factors, min(matrix.shape) - 1)
    svd = TruncatedSVD(n_components=k, random_state=settings.seed).fit(matrix)
    factors = (svd.components_.T * np.sqrt(svd.singular_values_)).astype(np.float32)
    factors[counts < settings.min_item_users] = 0.0
    ratings = interactions.assign(item_id=interactions["item_id"].astype(str))
    global_mean = float(ratings["rating"].mean())
    sums = ratings.groupby("item_id")["rating"].agg(["sum", "count"])
    sums = sums.reindex(items, fill_value=0.0)
    mean_rating = ((sums["sum"] + _SHRINK * global_mean) / (sums["count"] + _SHRINK)).to_numpy()
    known = int((counts >= settings.min_item_users).sum())
    summary = {
        "training_users": len(users),
        "interactions": int(len(interactions)),
        "catalog_items": int(len(catalog)),
        "items_with_factors": known,
        "catalog_coverage": round(known / max(1, len(items)), 4),
        "factors": k,
        "explained_variance": round(float(svd.explained_variance_ratio_.sum()), 4),
    }
    meta = catalog.set_index("item_id").reindex(items)
    return ItemKnowledge(
        titles=meta["title"].fillna("").astype(str).tolist(),
        genres=meta["genres"].fillna("").astype(str).tolist(),
        item_ids=items,
        factors=factors,
        popularity=np.log1p(counts).astype(np.float32),
        mean_rating=mean_rating.astype(np.float32),
        global_mean=global_mean,
        summary=summary,
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


_READERS: dict[str, ProfileReader] = {}


@dataclass(frozen=True)
class _Mentioned:
    """The items a profile names, in item factors (None: it names no liked item)."""

    polarity_mean: np.ndarray  # (F,) the named items' factors times their polarity, averaged
    liked_mean: np.ndarray | None  # (F,) the liked ones' mean
    liked_units: np.ndarray | None  # (L, F) the liked ones, unit length


# Profiles whose named items are kept in factor form (a few hundred bytes each).
_MENTIONED_CACHE_SIZE = 8192


@dataclass(frozen=True)
class KnowledgeContext:
    """The knowledge block's profile-independent parts for one example and candidate list."""

    candidate_ids: list[str]
    cand: np.ndarray
    stats: np.ndarray
    recent_block: np.ndarray
    oracle_blocks: list[np.ndarray]


class KnowledgeFeatures:
    """The recommender's knowledge block: how each candidate relates, through item factors, to
    the recent window and to what the profile says (items named, genres liked or disliked, a
    stated average). With `oracle`, the long window itself is read as a perfect profile would
    be (its items with their ratings, its genre means): the information ceiling."""

    WIDTH = 5 + 10

    def __init__(self, knowledge: ItemKnowledge, *, oracle: bool = False) -> None:
        from lettingo_dagster.evaluation.mentions import ProfileReader

        self.knowledge = knowledge
        self.oracle = oracle
        # One reader (and its cache of profiles read) per catalog in the process: the oracle
        # study fits fifteen recommenders on the same profiles.
        reader = _READERS.get(knowledge.fingerprint)
        if reader is None:
            genre_names = sorted({g for joined in knowledge.genres for g in joined.split("|") if g})
            reader = ProfileReader(knowledge.item_ids, knowledge.titles, genre_names)
            if len(_READERS) >= 4:
                _READERS.pop(next(iter(_READERS)))
            _READERS[knowledge.fingerprint] = reader
        self.reader = reader
        self._genres = {i: set(g.split("|")) - {""} for i, g in zip(
            knowledge.item_ids, knowledge.genres, strict=True)}  # fmt: skip
        self._mentioned_cache: dict[tuple[tuple[str, float], ...], _Mentioned] = {}

    @property
    def width(self) -> int:
        return self.WIDTH + (6 if self.oracle else 0)

    def _window(self, cand: np.ndarray, ids: list[str], ratings: np.ndarray) -> np.ndarray:
        vecs = self.knowledge.vectors(ids)
        if not len(ids):
            return np.zeros((len(cand), 3))
        centred = ratings - ratings.mean()
        return np.column_stack(
            [
                cand @ vecs.mean(axis=0),
                cand @ (centred[:, None] * vecs).mean(axis=0),
                (_unit(cand) @ _unit(vecs).T).max(axis=1),
            ]
        )

    def _genre_scores(self, candidate_ids: list[str], genres: dict[str, float]) -> np.ndarray:
        out = np.zeros((len(candidate_ids), 3))
        if not genres:
            return out
        for row, item in enumerate(candidate_ids):
            stated = [genres[g] for g in self._genres.get(item, ()) if g in genres]
            if stated:
                # sum / len rather than np.mean: the same value for an item's few genres, without
                # numpy's per-call cost on a list (this runs for every candidate of every row).
                out[row] = (sum(stated) / len(stated), max(stated), min(stated))
        return out

    def _mentioned(self, items: tuple[tuple[str, float], ...]) -> _Mentioned:
        """What the items a profile names add up to, computed once per profile: the features
        relate it to every candidate list the profile is scored with."""
        mentioned = self._mentioned_cache.get(items)
        if mentioned is None:
            polarity = np.array([p for _, p in items])
            vecs = self.knowledge.vectors([i for i, _ in items])
            positive = polarity > 0
            mentioned = _Mentioned(
                polarity_mean=(polarity[:, None] * vecs).mean(axis=0),
                liked_mean=vecs[positive].mean(axis=0) if positive.any() else None,
                liked_units=_unit(vecs[positive]) if positive.any() else None,
            )
            if len(self._mentioned_cache) >= _MENTIONED_CACHE_SIZE:
                self._mentioned_cache.pop(next(iter(self._mentioned_cache)))
            self._mentioned_cache[items] = mentioned
        return mentioned

    def _mentions(self, cand: np.ndarray, items: tuple[tuple[str, float], ...]) -> np.ndarray:
        out = np.zeros((len(cand), 4))
        if not items:
            return out
        mentioned = self._mentioned(items)
        out[:, 0] = np.log1p(len(items))
        out[:, 1] = cand @ mentioned.polarity_mean
        if mentioned.liked_mean is not None:
            out[:, 2] = cand @ mentioned.liked_mean
            out[:, 3] = (_unit(cand) @ mentioned.liked_units.T).max(axis=1)
        return out

    def context(self, example, candidates) -> KnowledgeContext:
        """The part of the block that does not depend on the profile."""
        candidate_ids = [c.item_id for c in candidates]
        cand = self.knowledge.vectors(candidate_ids)
        recent = example.recent
        recent_block = self._window(
            cand, [i.item_id for i in recent], np.array([i.rating for i in recent], dtype=float)
        )
        oracle_blocks: list[np.ndarray] = []
        if self.oracle:
            long = example.long_window
            ratings = np.array([i.rating for i in long], dtype=float)
            oracle_blocks.append(self._window(cand, [i.item_id for i in long], ratings))
            means: dict[str, list[float]] = {}
            for item in long:
                for genre in item.genres:
                    means.setdefault(genre, []).append(item.rating)
            overall = float(ratings.mean()) if len(ratings) else 0.0
            genre_polarity = {
                g: max(-1.0, min(1.0, float(np.mean(r)) - overall))
                for g, r in means.items()
                if len(r) >= 2
            }
            oracle_blocks.append(self._genre_scores(candidate_ids, genre_polarity))
        return KnowledgeContext(
            candidate_ids=candidate_ids,
            cand=cand,
            stats=self.knowledge.item_stats(candidate_ids),
            recent_block=recent_block,
            oracle_blocks=oracle_blocks,
        )

    def block(self, context: KnowledgeContext, profile: str | None) -> np.ndarray:
        cand, stats = context.cand, context.stats
        reading = self.reader.read(profile)
        stated = 0.0 if reading.stated_mean is None else reading.stated_mean - 3.5
        blocks = [
            context.recent_block,
            stats,
            self._mentions(cand, reading.items),
            self._genre_scores(context.candidate_ids, reading.genres),
            np.column_stack([np.full(len(cand), stated), stated * stats[:, 1],
                             np.full(len(cand), float(reading.stated_mean is not None))]),
            *context.oracle_blocks,
        ]  # fmt: skip
        return np.hstack(blocks)
