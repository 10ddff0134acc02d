"""The planted-taste world: a synthetic MovieLens-like dataset whose answer is known.

It is a positive control for the learning loop. Every user has a stable long-term taste (two
liked genres, two disliked ones, a rating bias, a few favourite items) that drives months of
interactions; chronologically last comes a short distractor session of neutral-genre items rated
within one hour. With held-out targets (a random sample of a user's history), the recent window
is mostly that distractor session while the targets follow the taste, so what predicts them sits
in the long window by construction. Items are chosen by genre, so items of a genre co-occur
across users and item factors learned from interactions recover the genres.

The files are RecBole atomic files (the `movielens-atomic` format), plus a sidecar with each
user's planted taste, so a written profile can be checked against the truth. Generation is
seeded and offline: the same parameters give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

DATASET_NAME = "planted-taste"
INTERACTIONS_FILE = f"{DATASET_NAME}.inter"
ITEMS_FILE = f"{DATASET_NAME}.item"
TRUTH_FILE = f"{DATASET_NAME}.truth.json"
# Bump when the generator's algorithm changes, so a cached world made by older code is
# regenerated rather than trusted.
GENERATOR_VERSION = 1

INTERACTIONS_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEMS_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"

# The 18 MovieLens genres, in MovieLens order. The weights make some genres common (more items,
# more fans) and some rare, as in MovieLens, without letting one genre take over the catalog.
GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
GENRE_WEIGHTS: tuple[float, ...] = (
    1.2, 1.0, 0.6, 0.8, 1.5, 1.0, 0.5, 1.6,
    0.6, 0.4, 0.9, 0.6, 0.7, 1.1, 0.9, 1.2,
    0.7, 0.5,
)  # fmt: skip
# Share of items with 1, 2 and 3 genres.
GENRE_COUNT_SHARES: tuple[float, ...] = (0.45, 0.35, 0.20)

_ADJECTIVES = (
    "Silent", "Broken", "Golden", "Hidden", "Last", "Burning", "Frozen", "Crimson", "Distant",
    "Hollow", "Wandering", "Secret", "Scarlet", "Forgotten", "Restless", "Midnight", "Iron",
    "Velvet", "Quiet", "Shattered", "Savage", "Gentle", "Bitter", "Endless", "Lonely", "Electric",
    "Painted", "Wicked", "Sleeping", "Falling", "Northern", "Southern", "Eastern",
    "Emerald", "Silver", "Ancient", "Fading", "Howling", "Bright", "Dark", "Lost", "Stolen",
    "Hungry", "Tender", "Reckless", "Glass", "Copper", "Paper", "Stone", "Winter", "Summer",
    "Autumn", "Spring", "Wild", "Pale", "Final", "Sacred", "Cursed", "Drifting",
    "Shining", "Twisted", "Brave", "Little", "Great", "Crooked", "Salt", "Amber", "Ivory",
)  # fmt: skip
_NOUNS = (
    "Harbor", "River", "Kingdom", "Shadow", "Garden", "Highway", "Mirror", "Orchard", "Lantern",
    "Tower", "Island", "Desert", "Carnival", "Frontier", "Compass", "Lighthouse", "Canyon",
    "Empire", "Voyage", "Signal", "Horizon", "Forest", "Station", "Bridge", "Crown", "Circus",
    "Hunter", "Stranger", "Witness", "Dancer", "Prophet", "Outlaw", "Sailor", "Detective",
    "Orphan", "Pilot", "Soldier", "Widow", "Gambler", "Painter", "Engine", "Storm", "Thunder",
    "Ember", "Meadow", "Valley", "Summit", "Tide", "Echo", "Whisper", "Promise", "Secret",
    "Letter", "Melody", "Ballad", "Requiem", "Journey", "Fortune", "Labyrinth", "Citadel",
    "Monastery", "Cathedral", "Parade", "Masquerade", "Rebellion", "Harvest", "Eclipse",
    "Comet", "Galaxy", "Orbit", "Reef", "Glacier", "Volcano", "Serpent", "Falcon", "Wolf",
    "Raven", "Tiger", "Stallion", "Dragon", "Giant", "Ghost", "Queen", "King", "Saint",
    "Thief", "Doctor", "Captain", "Judge", "Poet", "Clockmaker", "Locksmith", "Ferryman",
)  # fmt: skip
_PLACES = (
    "Avalon", "Marrakesh", "Brooklyn", "Tangier", "Lisbon", "Yukon", "Sierra Vista", "Kensington",
    "Montego", "Calder Bay", "Ravenmoor", "Ashford", "Port Royal", "Dunmore", "Eldridge",
    "Santa Lucia", "Kingsbridge", "Wolf Creek", "Blackwater", "Highgate", "Valparaiso",
    "Samarkand", "Timbuktu", "Oxbow", "Granite Falls", "Tamarack", "Bellhaven", "Copperhill",
    "Saint Clair", "Mesa Verde", "Larkspur", "Windermere", "Zanzibar", "Cordova", "Pinehurst",
)  # fmt: skip
# Title patterns; each yields a distinct set of content words, which is what must be unique.
_PATTERNS = (
    "The {adj} {noun}",
    "The {noun} of {place}",
    "{adj} {noun}",
    "{noun} of the {nouns2}",
    "A {noun} in {place}",
    "{noun} and {noun2}",
    "The {adj} {noun} of {place}",
)
_ARTICLES = {"the", "a", "an", "of", "and", "in"}


class PlantedWorldError(ValueError):
    """The parameters cannot produce a world (e.g. too few items for the histories asked)."""


@dataclass(frozen=True)
class PlantedParams:
    """What the generator does; every default is the value the ceiling bench was measured at.

    Sizes
        n_items: catalog size (default 1,000). n_users: users (default 600).
    Histories
        history_min / history_max: taste-driven interactions per user (80-150), spread over
        history_days_min..history_days_max days (90-540), starting at a user's own date within
        two years of `start` (unix seconds; 2015-01-01).
        liked_share / disliked_share: expected share of taste items from the liked / disliked
        genres (0.65 / 0.20; the remaining 0.15 from neutral genres). An item belongs to the
        liked pool when it has a liked genre and no disliked one, and the other way round;
        items with both are never drawn. favourites_min / favourites_max: favourite items per
        user (3-5), liked-pool items always rated 5.
    Ratings (1-5 stars, rounded, clipped)
        base_rating 3.3 + the user's bias (normal, sd bias_sd 0.35, clipped at 2 sd) + the
        item's shift (liked_shift +1.1, neutral_shift -0.1, disliked_shift -1.6) + noise (sd
        noise_sd 0.5).
    Distractor session (chronologically last)
        session_min..session_max items (12-15) from neutral genres, all within one hour, 1-30
        days after the last taste interaction, rated around the user's mean rating with noise
        (sd session_noise_sd 0.7): it says little about the taste.
    Popularity
        items are drawn with Zipf weights rank**-popularity_exponent (0.3) over a random
        ranking of the catalog: popular items recur (the most rated item reaches about 48% of
        users, the median about 12%), but taste decides which genres are drawn.

    With 0.15 disliked and noise 0.6 the sentiment task's long-window gain was about +7
    points; 0.20 and 0.5 put both tasks' gains above +10. A popularity exponent of 0.5 let the
    project's recommender rank well from popularity alone and left the `planted` preset's
    ceiling at +11.2 on calibration users; 0.3 gives +14.4 (docs/planted-taste.md).
    """

    seed: int = 7
    n_items: int = 1000
    n_users: int = 600
    history_min: int = 80
    history_max: int = 150
    history_days_min: int = 90
    history_days_max: int = 540
    start: int = 1_420_070_400
    liked_share: float = 0.65
    disliked_share: float = 0.20
    favourites_min: int = 3
    favourites_max: int = 5
    base_rating: float = 3.3
    bias_sd: float = 0.35
    liked_shift: float = 1.1
    neutral_shift: float = -0.1
    disliked_shift: float = -1.6
    noise_sd: float = 0.5
    session_min: int = 12
    session_max: int = 15
    session_noise_sd: float = 0.7
    popularity_exponent: float = 0.3

    def __post_init__(self) -> None:
        problems = []
        if self.n_items < 20 or self.n_users < 1:
            problems.append("need at least 20 items and 1 user")
        if not 1 <= self.history_min <= self.history_max:
            problems.append("need 1 <= history_min <= history_max")
        if not 1 <= self.favourites_min <= self.favourites_max <= self.history_min:
            problems.append("need 1 <= favourites_min <= favourites_max <= history_min")
        if not 2 <= self.session_min <= self.session_max <= 60:
            problems.append("need 2 <= session_min <= session_max <= 60 (one hour)")
        if not 1 <= self.history_days_min <= self.history_days_max:
            problems.append("need 1 <= history_days_min <= history_days_max")
        if min(self.liked_share, self.disliked_share) < 0 or (
            self.liked_share + self.disliked_share > 1
        ):
            problems.append("liked_share and disliked_share must be >= 0 and sum to <= 1")
        # Every user must keep unrated items for a ranking task's negatives.
        if self.history_max + self.session_max > self.n_items // 2:
            problems.append("history_max + session_max must be at most half of n_items")
        if problems:
            raise PlantedWorldError("; ".join(problems))

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> PlantedParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})  # type: ignore[arg-type]


@dataclass(frozen=True)
class PlantedTaste:
    user_id: str
    liked_genres: tuple[str, ...]
    disliked_genres: tuple[str, ...]
    bias: float
    favourites: tuple[str, ...]  # item ids


@dataclass(frozen=True)
class PlantedItem:
    item_id: str
    title: str
    year: int
    genres: tuple[str, ...]


@dataclass(frozen=True)
class PlantedWorld:
    """A generated world. Interactions are columns sorted by (user, timestamp); `user` and
    `item` are 0-based indexes (ids are index + 1), `session` marks distractor-session rows."""

    params: PlantedParams
    items: tuple[PlantedItem, ...]
    item_genres: np.ndarray  # (n_items, 18) bool
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    session: np.ndarray
    truth: dict[str, PlantedTaste]

    @property
    def n_interactions(self) -> int:
        return len(self.user)


@dataclass(frozen=True)
class PlantedWriteResult:
    folder: Path
    files: list[Path]
    written: bool  # False when a complete world with these parameters was already there
    users: int
    items: int
    interactions: int


def user_id(index: int) -> str:
    return str(index + 1)


def item_id(index: int) -> str:
    return str(index + 1)


def normalize_title(title: str) -> str:
    """Lower case, letters and digits only, no articles or joining words: the matching key."""
    words = re.findall(r"[a-z0-9]+", title.lower())
    return " ".join(word for word in words if word not in _ARTICLES)


# ---------------------------------------------------------------------------------------------
# Generation


def _titles(n: int, rng: np.random.Generator) -> list[str]:
    """n titles of which no two share more than one word (a place name counts as one word, a
    plural as its noun), so each title differs from every other in all but at most one word and
    fuzzy matching on a title, or most of one, finds exactly one item."""
    titles: list[str] = []
    used_pairs: set[frozenset[str]] = set()
    attempts = 0
    while len(titles) < n:
        attempts += 1
        if attempts > 200 * n:
            raise PlantedWorldError(f"cannot make {n} distinct titles from the word lists")
        pattern = _PATTERNS[rng.integers(len(_PATTERNS))]
        noun, noun2 = rng.choice(len(_NOUNS), size=2, replace=False)
        words = {
            "adj": _ADJECTIVES[rng.integers(len(_ADJECTIVES))],
            "noun": _NOUNS[noun],
            "noun2": _NOUNS[noun2],
            "place": _PLACES[rng.integers(len(_PLACES))],
        }
        used = [words[field] for field in ("adj", "noun", "noun2", "place") if field in pattern]
        units = {word.lower() for word in used}
        if "{nouns2}" in pattern:
            units.add(words["noun2"].lower())
        pairs = {frozenset((a, b)) for a in units for b in units if a < b}
        # "The Secret Secret" repeats a word; a shared pair would make two titles near twins.
        if len(units) < len(used) + ("{nouns2}" in pattern) or pairs & used_pairs:
            continue
        used_pairs |= pairs
        titles.append(pattern.format(nouns2=_plural(words["noun2"]), **words))
    return titles


def _plural(noun: str) -> str:
    if noun.endswith("f"):
        return noun[:-1] + "ves"  # Wolf, Thief
    if noun.endswith(("s", "x", "ch", "sh", "o")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


def _catalog(
    params: PlantedParams, rng: np.random.Generator
) -> tuple[list[PlantedItem], np.ndarray, np.ndarray]:
    n = params.n_items
    titles = _titles(n, rng)
    years = rng.integers(1950, 2021, size=n)
    weights = np.asarray(GENRE_WEIGHTS) / sum(GENRE_WEIGHTS)
    counts = rng.choice(len(GENRE_COUNT_SHARES), size=n, p=GENRE_COUNT_SHARES) + 1
    item_genres = np.zeros((n, len(GENRES)), dtype=bool)
    for index, count in enumerate(counts):
        item_genres[index, rng.choice(len(GENRES), size=count, replace=False, p=weights)] = True
    # Zipf weights over a random ranking, so popularity is independent of genre and id.
    ranks = rng.permutation(n) + 1
    popularity = ranks.astype(float) ** -params.popularity_exponent
    items = [
        PlantedItem(
            item_id=item_id(index),
            title=titles[index],
            year=int(years[index]),
            genres=tuple(GENRES[g] for g in np.flatnonzero(item_genres[index])),
        )
        for index in range(n)
    ]
    return items, item_genres, popularity


def _draw(
    rng: np.random.Generator, pool: np.ndarray, popularity: np.ndarray, size: int
) -> np.ndarray:
    """`size` distinct items of `pool`, popularity-weighted (all of it when it is smaller)."""
    size = min(size, len(pool))
    if size == 0:
        return pool[:0]
    p = popularity[pool] / popularity[pool].sum()
    return rng.choice(pool, size=size, replace=False, p=p)


def _user(
    params: PlantedParams,
    index: int,
    item_genres: np.ndarray,
    popularity: np.ndarray,
) -> tuple[PlantedTaste, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One user's taste and interactions: (taste, items, ratings, timestamps, session flags)."""
    rng = np.random.default_rng([params.seed, 1, index])
    weights = np.asarray(GENRE_WEIGHTS) / sum(GENRE_WEIGHTS)
    # Popular genres have more fans; dislikes are drawn uniformly from the other genres.
    liked = np.sort(rng.choice(len(GENRES), size=2, replace=False, p=weights))
    others = np.setdiff1d(np.arange(len(GENRES)), liked)
    disliked = np.sort(rng.choice(others, size=2, replace=False))
    bias = float(np.clip(rng.normal(0.0, params.bias_sd), -2 * params.bias_sd, 2 * params.bias_sd))

    has_liked = item_genres[:, liked].any(axis=1)
    has_disliked = item_genres[:, disliked].any(axis=1)
    # Items with both a liked and a disliked genre belong to no pool: their rating would be
    # ambiguous, and leaving them out keeps the planted signal clean.
    liked_pool = np.flatnonzero(has_liked & ~has_disliked)
    disliked_pool = np.flatnonzero(has_disliked & ~has_liked)
    neutral_pool = np.flatnonzero(~has_liked & ~has_disliked)

    n_history = int(rng.integers(params.history_min, params.history_max + 1))
    n_favourites = int(rng.integers(params.favourites_min, params.favourites_max + 1))
    neutral_share = 1.0 - params.liked_share - params.disliked_share
    n_liked, n_neutral, n_disliked = rng.multinomial(
        n_history, [params.liked_share, neutral_share, params.disliked_share]
    )
    n_liked = max(int(n_liked), n_favourites)
    favourites = _draw(rng, liked_pool, popularity, n_favourites)
    liked_items = _draw(
        rng, np.setdiff1d(liked_pool, favourites), popularity, n_liked - len(favourites)
    )
    disliked_items = _draw(rng, disliked_pool, popularity, int(n_disliked))
    # A small pool that runs out is made up from neutral genres, so history lengths hold.
    shortfall = (n_liked - len(favourites) - len(liked_items)) + (n_disliked - len(disliked_items))
    neutral_items = _draw(rng, neutral_pool, popularity, int(n_neutral) + int(shortfall))

    shifts = np.concatenate([
        np.full(len(liked_items), params.liked_shift),
        np.full(len(neutral_items), params.neutral_shift),
        np.full(len(disliked_items), params.disliked_shift),
    ])  # fmt: skip
    noisy = params.base_rating + bias + shifts + rng.normal(0.0, params.noise_sd, len(shifts))
    taste_items = np.concatenate([favourites, liked_items, neutral_items, disliked_items])
    taste_ratings = np.concatenate([np.full(len(favourites), 5), _stars(noisy)])
    order = rng.permutation(len(taste_items))
    taste_items, taste_ratings = taste_items[order], taste_ratings[order]

    first = params.start + int(rng.integers(0, 730 * 86_400))
    span_days = int(rng.integers(params.history_days_min, params.history_days_max + 1))
    offsets = np.sort(rng.integers(0, span_days * 86_400, size=len(taste_items)))
    # Strictly increasing times, so the order of a user's history is never a tie.
    offsets = np.maximum.accumulate(offsets - np.arange(len(offsets))) + np.arange(len(offsets))
    taste_times = first + offsets

    # The distractor session: neutral-genre items the user has not rated, rated around the
    # user's own mean within one hour, one to thirty days after the last taste interaction.
    n_session = int(rng.integers(params.session_min, params.session_max + 1))
    unrated = np.setdiff1d(neutral_pool, taste_items)
    session_items = _draw(rng, unrated, popularity, n_session)
    mean = float(taste_ratings.mean())
    session_ratings = _stars(mean + rng.normal(0.0, params.session_noise_sd, len(session_items)))
    max_step = 3_300 // max(1, params.session_max - 1)
    steps = rng.integers(30, max_step + 1, size=len(session_items))
    steps[0] = int(rng.integers(1, 31)) * 86_400
    session_times = taste_times[-1] + np.cumsum(steps)

    taste = PlantedTaste(
        user_id=user_id(index),
        liked_genres=tuple(GENRES[g] for g in liked),
        disliked_genres=tuple(GENRES[g] for g in disliked),
        bias=round(bias, 4),
        favourites=tuple(item_id(int(i)) for i in np.sort(favourites)),
    )
    return (
        taste,
        np.concatenate([taste_items, session_items]),
        np.concatenate([taste_ratings, session_ratings]),
        np.concatenate([taste_times, session_times]),
        np.concatenate([np.zeros(len(taste_items), bool), np.ones(len(session_items), bool)]),
    )


def _stars(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 1, 5).astype(np.int64)


def generate_planted_world(params: PlantedParams | None = None) -> PlantedWorld:
    """The world for `params` (defaults: PlantedParams()), in memory."""
    params = params or PlantedParams()
    # The catalog has its own stream and each user another, so changing the number of users
    # leaves the catalog and every existing user exactly as they were.
    items, item_genres, popularity = _catalog(params, np.random.default_rng([params.seed, 0]))
    truth: dict[str, PlantedTaste] = {}
    columns: list[list[np.ndarray]] = [[], [], [], [], []]
    for index in range(params.n_users):
        taste, *user_columns = _user(params, index, item_genres, popularity)
        truth[taste.user_id] = taste
        columns[0].append(np.full(len(user_columns[0]), index))
        for column, values in zip(columns[1:], user_columns, strict=True):
            column.append(values)
    user, item, rating, timestamp, session = (np.concatenate(c) for c in columns)
    return PlantedWorld(
        params=params,
        items=tuple(items),
        item_genres=item_genres,
        user=user.astype(np.int64),
        item=item.astype(np.int64),
        rating=rating.astype(np.int64),
        timestamp=timestamp.astype(np.int64),
        session=session.astype(bool),
        truth=truth,
    )


# ---------------------------------------------------------------------------------------------
# Files


def render_planted_files(world: PlantedWorld) -> dict[str, bytes]:
    """The three files' bytes: interactions, items, and the truth sidecar (which also records
    the parameters and the data files' hashes, so a cached world can be checked)."""
    inter_lines = [INTERACTIONS_HEADER]
    inter_lines += [
        f"{u + 1}\t{i + 1}\t{r}\t{t}"
        for u, i, r, t in zip(
            world.user.tolist(),
            world.item.tolist(),
            world.rating.tolist(),
            world.timestamp.tolist(),
            strict=True,
        )
    ]
    item_lines = [ITEMS_HEADER]
    item_lines += [
        f"{it.item_id}\t{it.title}\t{it.year}\t{' '.join(it.genres)}" for it in world.items
    ]
    files = {
        INTERACTIONS_FILE: ("\n".join(inter_lines) + "\n").encode("utf-8"),
        ITEMS_FILE: ("\n".join(item_lines) + "\n").encode("utf-8"),
    }
    truth = {
        "dataset": DATASET_NAME,
        "generator_version": GENERATOR_VERSION,
        "params": asdict(world.params),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "counts": {
            "users": world.params.n_users,
            "items": world.params.n_items,
            "interactions": world.n_interactions,
        },
        "users": {
            uid: {
                "liked_genres": list(t.liked_genres),
                "disliked_genres": list(t.disliked_genres),
                "bias": t.bias,
                "favourites": list(t.favourites),
            }
            for uid, t in world.truth.items()
        },
    }
    files[TRUTH_FILE] = (json.dumps(truth, indent=1, sort_keys=True) + "\n").encode("utf-8")
    return files


def _read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / TRUTH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def planted_world_is_current(folder: Path, params: PlantedParams) -> bool:
    """True when `folder` holds a complete world made by this generator with `params`."""
    manifest = _read_manifest(folder)
    if manifest is None:
        return False
    if manifest.get("generator_version") != GENERATOR_VERSION:
        return False
    if manifest.get("params") != asdict(params):
        return False
    hashes = manifest.get("files") or {}
    for name in (INTERACTIONS_FILE, ITEMS_FILE):
        path = folder / name
        if not path.is_file() or hashes.get(name) != hashlib.sha256(path.read_bytes()).hexdigest():
            return False
    return True


def write_planted_world(
    cache_dir: Path,
    params: PlantedParams | None = None,
    *,
    log: Callable[[str], None] = print,
) -> PlantedWriteResult:
    """Write the world into `cache_dir/planted-taste/`; leave a current one alone.

    The files are written into a scratch folder next to the target and swapped in by renaming
    the folder, so readers see the old world or the new one, never a mix, and a failure leaves
    the previous world (or nothing) in place.
    """
    params = params or PlantedParams()
    folder = cache_dir / DATASET_NAME
    paths = [folder / name for name in (INTERACTIONS_FILE, ITEMS_FILE, TRUTH_FILE)]
    if planted_world_is_current(folder, params):
        counts = (_read_manifest(folder) or {}).get("counts", {})
        log(
            f"{DATASET_NAME}: already in {folder} (seed {params.seed}; "
            f"{counts.get('users', 0):,} users, {counts.get('items', 0):,} items, "
            f"{counts.get('interactions', 0):,} interactions; hashes verified)"
        )
        return PlantedWriteResult(
            folder,
            paths,
            written=False,
            users=int(counts.get("users", 0)),
            items=int(counts.get("items", 0)),
            interactions=int(counts.get("interactions", 0)),
        )

    world = generate_planted_world(params)
    files = render_planted_files(world)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DATASET_NAME}-new-", dir=cache_dir))
    retired: Path | None = None
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would otherwise become the folder's mode
        for name, data in files.items():
            (staging / name).write_bytes(data)
        if folder.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{DATASET_NAME}-old-", dir=cache_dir))
            os.replace(folder, retired / DATASET_NAME)
        try:
            os.replace(staging, folder)
        except OSError:
            if retired is not None:
                os.replace(retired / DATASET_NAME, folder)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    log(
        f"{DATASET_NAME}: wrote {params.n_users:,} users, {params.n_items:,} items, "
        f"{world.n_interactions:,} interactions (seed {params.seed}) to {folder}"
    )
    return PlantedWriteResult(
        folder,
        paths,
        written=True,
        users=params.n_users,
        items=params.n_items,
        interactions=world.n_interactions,
    )


def load_planted_truth(folder: str | Path) -> dict[str, PlantedTaste]:
    """Each user's planted taste, by user id, from a world's truth sidecar in `folder`."""
    path = Path(folder) / TRUTH_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        users = manifest["users"]
        return {
            str(uid): PlantedTaste(
                user_id=str(uid),
                liked_genres=tuple(entry["liked_genres"]),
                disliked_genres=tuple(entry["disliked_genres"]),
                bias=float(entry["bias"]),
                favourites=tuple(str(i) for i in entry["favourites"]),
            )
            for uid, entry in users.items()
        }
    except FileNotFoundError:
        raise PlantedWorldError(f"{path}: no planted-taste truth file") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PlantedWorldError(f"{path}: not a planted-taste truth file ({exc!r})") from None
