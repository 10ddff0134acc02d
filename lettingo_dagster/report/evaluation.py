"""The evaluation protocol as plain functions: every method's outputs on the held-out
test users, the results table with bootstrap intervals over users, paired differences (DPO minus
base, the null check, the oracle ceiling), profile statistics (length, diversity, style mix) and
confusion matrices.

Methods (stable names, in report order):

- `recent_only`: the K recent items only (10H), no profile;
- `raw_long_window`: 10H plus the long window written out as the profile's text;
- `oracle_ceiling`: an oracle recommender that reads the long window as features (the information
  ceiling of the long window for this recommender);
- `rlmrec_like`, `palr_like`: 10H plus the deterministic writers' `rlmrec_summary` /
  `palr_keywords` profiles of the long window (the paper's baselines);
- `base_generator`, `dpo_generator`: 10H plus the generators' sampled profiles;
- `base_generator_null`: the base generator sampled again with another seed (the null check: its
  difference against `base_generator` must straddle 0).

Output conventions follow `evaluation.oracle`: for `sentiment` each row is [true label index,
predicted label index] (indices into `LABELS`); for `ranking` each row is [1-based rank of the
target among its candidates]. Every row carries its user id so intervals resample users (a
resampled user keeps all of their targets, and for generator methods all of their samples).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import confusion_matrix
from sklearn.metrics.pairwise import cosine_similarity

from lettingo_dagster.data.samples import LABELS
from lettingo_dagster.evaluation import metrics
from lettingo_dagster.evaluation.examples import TargetExample, long_window_text
from lettingo_dagster.evaluation.protocol import (  # noqa: F401  (one set of names, re-exported)
    BASE_GENERATOR,
    BASE_GENERATOR_NULL,
    BASELINE,
    CHAMPION_GENERATOR,
    DPO_GENERATOR,
    FIXED_METHODS,
    GENERATOR_METHODS,
    ITEM_KNN,
    METHODS,
    ORACLE_CEILING,
    PALR_LIKE,
    POPULARITY,
    RANKING_METRICS,
    RAW_LONG_WINDOW,
    RECENT_ONLY,
    RLMREC_LIKE,
    SENTIMENT_METRICS,
    WRITER_METHODS,
    fast_weighted_f1,
    task_metrics,
    weighted_f1_statistic,
)
from lettingo_dagster.evaluation.recommender import TASKS, Recommender
from lettingo_dagster.exploration.profile_quality import distinct_n, words
from lettingo_dagster.exploration.writers import WRITERS, write_profiles

RANK_BUCKETS = ("1", "2-5", "6-10", "11+")
_BUCKET_EDGES = (2, 6, 11)  # np.digitize edges: rank 1 | 2-5 | 6-10 | 11+
UNASSIGNED = "unassigned"


# ---- metrics -------------------------------------------------------------------------------


TABLE_COLUMNS = [
    "method",
    "metric",
    "value",
    "low",
    "high",
    "diff_vs_recent_only",
    "diff_low",
    "diff_high",
    "users",
    "rows",
]

_MLFLOW_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")


def mlflow_metric_name(name: str) -> str:
    """A metric name MLflow accepts: '@' becomes '_at_' ('hit_rate@5' -> 'hit_rate_at_5') and any
    other character outside letters, digits, '_', '-', '.', '/' and ' ' becomes '_'."""
    return _MLFLOW_UNSAFE.sub("_", name.replace("@", "_at_"))


def mlflow_metrics(
    table: pd.DataFrame, differences: Sequence[Mapping[str, Any]] = ()
) -> dict[str, float]:
    """Flat MLflow metrics from `results_table` (keys `method/metric`, `method/metric_low`, ...,
    `method/metric_diff`) and from `paired_difference` results (keys `a_minus_b/metric`, ...).
    NaN values are left out (MLflow rejects them on some stores)."""
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[mlflow_metric_name(key)] = float(value)

    for row in table.itertuples(index=False):
        key = f"{row.method}/{row.metric}"
        put(key, row.value)
        put(f"{key}_low", row.low)
        put(f"{key}_high", row.high)
        if row.method != BASELINE:
            put(f"{key}_diff", row.diff_vs_recent_only)
            put(f"{key}_diff_low", row.diff_low)
            put(f"{key}_diff_high", row.diff_high)
    for diff in differences:
        key = f"{diff['method_a']}_minus_{diff['method_b']}/{diff['metric']}"
        put(key, diff["estimate"])
        put(f"{key}_low", diff["low"])
        put(f"{key}_high", diff["high"])
    return out


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


# ---- method outputs ------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodOutputs:
    """One method's rows and the user of each row.

    `rows`: for `sentiment` an (n, 2) int array [true label index, predicted label index]; for
    `ranking` an (n, 1) int array [target rank]. `users`: (n,) user ids aligned with `rows`.
    """

    rows: np.ndarray
    users: np.ndarray

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.users):
            raise ValueError(f"{len(self.rows)} rows but {len(self.users)} user ids")

    def by_user(self) -> dict[str, np.ndarray]:
        """Each user's rows (users in order of first appearance), for the bootstrap helpers."""
        order: dict[str, list[int]] = {}
        for index, user in enumerate(self.users.tolist()):
            order.setdefault(str(user), []).append(index)
        return {user: self.rows[np.asarray(idx)] for user, idx in order.items()}

    @property
    def n_users(self) -> int:
        return len(set(self.users.tolist()))


def writer_profiles_by_user(
    examples: Sequence[TargetExample],
    styles: tuple[str, ...] | None = None,
    *,
    genre_figures: bool = True,
) -> dict[str, dict[str, str]]:
    """Each user's deterministic writer profiles of their long window (the six default styles
    unless named; genre_affinity's brief form with `genre_figures=False`), once per user."""
    out: dict[str, dict[str, str]] = {}
    for example in examples:
        if example.user_id not in out:
            out[example.user_id] = write_profiles(
                example.history(), styles, genre_figures=genre_figures
            )
    return out


def _group_examples(examples: Sequence[TargetExample]) -> dict[str, list[TargetExample]]:
    grouped: dict[str, list[TargetExample]] = {}
    for example in examples:
        grouped.setdefault(example.user_id, []).append(example)
    return grouped


def _score(
    recommender: Recommender,
    task: str,
    examples: Sequence[TargetExample],
    profiles: Sequence[str | None],
) -> np.ndarray:
    """One batched recommender call; rows in the module's output conventions."""
    if task == "sentiment":
        probabilities = np.asarray(recommender.predict_sentiment(examples, profiles))
        if probabilities.shape != (len(examples), len(LABELS)):
            raise ValueError(
                f"{type(recommender).__name__}.predict_sentiment returned shape "
                f"{probabilities.shape}, expected {(len(examples), len(LABELS))}"
            )
        truth = np.array([LABELS.index(e.label) for e in examples], dtype=int)
        return np.column_stack([truth, probabilities.argmax(axis=1)]).astype(int)
    ranks = metrics.target_ranks(recommender.score_candidates(examples, profiles))
    return ranks.reshape(-1, 1).astype(int)


def method_outputs(
    recommender: Recommender,
    oracle_recommender: Recommender | None,
    task: str,
    examples: Sequence[TargetExample],
    generated: Mapping[str, Mapping[str, Sequence[str]]],
    baselines: Mapping[str, Recommender] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, MethodOutputs]:
    """Score every method on the same examples with the same recommender (one batched call per
    method) and return their outputs by method, in `METHODS` order; `log` hears of each method
    as it is scored.

    `generated[method][user_id]` is that user's list of sampled profiles for a generator method
    (`base_generator`, `dpo_generator`, `base_generator_null`; further generator methods, e.g.
    an SFT ablation, are accepted and come last). Each sample is scored on all of the user's
    targets and the rows stack: a user with T targets and S samples contributes T x S rows
    (sample-major within the user). Generator methods absent from `generated` are skipped, and
    so is `oracle_ceiling` when `oracle_recommender` is None. The raw-window and writer profiles
    are computed here from the examples' long windows.

    Raises ValueError when a generator method lacks profiles (or has an empty list) for a user
    of the examples.
    """
    _check_task(task)
    if not examples:
        raise ValueError("no examples to evaluate")
    clashing = [m for m in generated if m in FIXED_METHODS]
    if clashing:
        raise ValueError(f"{clashing} are computed here, not generator methods")
    by_user = _group_examples(examples)
    users = np.array([e.user_id for e in examples], dtype=object)
    outputs: dict[str, MethodOutputs] = {}

    def run(
        method: str,
        model: Recommender,
        chosen: Sequence[TargetExample],
        profiles: Sequence[str | None],
        row_users: Sequence[str] | np.ndarray,
    ) -> None:
        started = time.perf_counter()
        rows = _score(model, task, chosen, profiles)
        outputs[method] = MethodOutputs(rows=rows, users=np.asarray(row_users, dtype=object))
        if log is not None:
            log(f"scored {method}: {len(rows)} rows in {time.perf_counter() - started:.1f} s")

    run(RECENT_ONLY, recommender, examples, [None] * len(examples), users)
    for method, baseline in (baselines or {}).items():
        run(method, baseline, examples, [None] * len(examples), users)
    raw = {user: long_window_text(group[0].long_window) for user, group in by_user.items()}
    run(RAW_LONG_WINDOW, recommender, examples, [raw[e.user_id] for e in examples], users)
    if oracle_recommender is not None:
        run(ORACLE_CEILING, oracle_recommender, examples, [None] * len(examples), users)
    writers = writer_profiles_by_user(examples, tuple(WRITER_METHODS.values()))
    for method, style in WRITER_METHODS.items():
        profiles = [writers[e.user_id][style] for e in examples]
        run(method, recommender, examples, profiles, users)

    extra = [m for m in generated if m not in GENERATOR_METHODS]
    for method in [*(m for m in GENERATOR_METHODS if m in generated), *extra]:
        samples_by_user = generated[method]
        chosen: list[TargetExample] = []
        profiles: list[str | None] = []
        row_users: list[str] = []
        for user, group in by_user.items():
            samples = samples_by_user.get(user)
            if not samples:
                raise ValueError(
                    f"method {method!r} has no generated profiles for user {user!r} "
                    f"({len(samples_by_user)} users have profiles)"
                )
            for sample in samples:
                chosen.extend(group)
                profiles.extend([sample] * len(group))
                row_users.extend([user] * len(group))
        run(method, recommender, chosen, profiles, row_users)
    return outputs


# ---- the results table and paired differences ----------------------------------------------


def results_table(
    outputs: Mapping[str, MethodOutputs], task: str, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Per method (in `outputs` order) and metric: the value with its 95% percentile bootstrap
    interval over users, the paired difference against `recent_only` (same user resamples in
    both arms) with its interval, and the users and rows behind it. Without a `recent_only`
    method the difference columns are NaN. Columns: `TABLE_COLUMNS`."""
    statistics = task_metrics(task)
    baseline = outputs[BASELINE].by_user() if BASELINE in outputs else None
    records = []
    for method, output in outputs.items():
        values = output.by_user()
        for name, statistic in statistics.items():
            point = metrics.bootstrap_ci(values, statistic, n_boot, seed)
            if baseline is None:
                diff = metrics.Interval(math.nan, math.nan, math.nan)
            else:
                _check_same_users(values, baseline, method, BASELINE)
                diff = metrics.paired_bootstrap_diff(values, baseline, statistic, n_boot, seed)
            records.append(
                {
                    "method": method,
                    "metric": name,
                    "value": point.estimate,
                    "low": point.low,
                    "high": point.high,
                    "diff_vs_recent_only": diff.estimate,
                    "diff_low": diff.low,
                    "diff_high": diff.high,
                    "users": len(values),
                    "rows": len(output.rows),
                }
            )
    return pd.DataFrame.from_records(records, columns=TABLE_COLUMNS)


def _check_same_users(a: Mapping[str, Any], b: Mapping[str, Any], name_a: str, name_b: str) -> None:
    if set(a) != set(b):
        only_a = sorted(set(a) - set(b))[:5]
        only_b = sorted(set(b) - set(a))[:5]
        raise ValueError(
            f"paired comparison {name_a!r} vs {name_b!r} needs the same users: "
            f"{len(set(a) - set(b))} only in {name_a} (e.g. {only_a}), "
            f"{len(set(b) - set(a))} only in {name_b} (e.g. {only_b})"
        )


def paired_difference(
    outputs: Mapping[str, MethodOutputs],
    a: str,
    b: str,
    task: str,
    metric: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """metric(a) - metric(b) on the same users with a 95% percentile bootstrap interval (both arms
    resample the same users). Used for `dpo_generator` - `base_generator`, for the null check
    (`base_generator_null` - `base_generator`) and for the ceiling (`oracle_ceiling` -
    `recent_only`).

    Returns a dict with `method_a`, `method_b`, `metric`, `estimate`, `low`, `high`, `users` and
    `excludes_zero` (the interval lies strictly on one side of 0). Raises ValueError when the two
    methods' users differ, or for an unknown method or metric."""
    statistics = task_metrics(task)
    if metric not in statistics:
        raise ValueError(f"unknown {task} metric {metric!r}; known: {', '.join(statistics)}")
    for method in (a, b):
        if method not in outputs:
            raise ValueError(f"no outputs for method {method!r}; have {', '.join(outputs)}")
    values_a = outputs[a].by_user()
    values_b = outputs[b].by_user()
    _check_same_users(values_a, values_b, a, b)
    diff = metrics.paired_bootstrap_diff(values_a, values_b, statistics[metric], n_boot, seed)
    return {
        "method_a": a,
        "method_b": b,
        "metric": metric,
        "estimate": diff.estimate,
        "low": diff.low,
        "high": diff.high,
        "users": len(values_a),
        "excludes_zero": bool(diff.low > 0 or diff.high < 0),
    }


def paired_differences(
    outputs: Mapping[str, MethodOutputs],
    a: str,
    b: str,
    task: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """`paired_difference` for every metric of the task, in display order."""
    return [paired_difference(outputs, a, b, task, m, n_boot, seed) for m in task_metrics(task)]


# ---- profile statistics --------------------------------------------------------------------


def _vectorizer() -> TfidfVectorizer:
    # Words and word pairs, one-letter words kept: style markers ("Keywords:", JSON keys,
    # "Rating tendency") are what tells the writer styles apart.
    return TfidfVectorizer(token_pattern=r"(?u)\b\w+(?:'\w+)?\b", ngram_range=(1, 2))


def _within_user_similarity(vectors, owners: Sequence[str]) -> float:
    """Mean over users with at least two samples of the mean pairwise cosine between them."""
    rows_of: dict[str, list[int]] = {}
    for index, user in enumerate(owners):
        rows_of.setdefault(user, []).append(index)
    means = []
    for idx in rows_of.values():
        if len(idx) < 2:
            continue
        sim = cosine_similarity(vectors[idx])
        means.append(float(sim[np.triu_indices(len(idx), k=1)].mean()))
    return float(np.mean(means)) if means else math.nan


def profile_statistics(
    generated: Mapping[str, Mapping[str, Sequence[str]]],
    writer_profiles_by_user: Mapping[str, Mapping[str, str]],
) -> pd.DataFrame:
    """Per generator method: how long, how diverse and in which style its profiles are.

    Columns: `method`, `profiles`, `users`, `mean_words`, `median_words`, `distinct_1`,
    `distinct_2` (over all of the method's profiles), `within_user_similarity` (mean pairwise
    TF-IDF cosine between one user's samples, averaged over users with two or more samples; NaN
    when no user has two), then `share_<style>` for every writer style and `share_unassigned`:
    the share of profiles whose nearest writer profile (TF-IDF cosine against the same user's
    writer profiles; against the style centroids when the user has none) is that style. A
    profile with no word in common with any writer profile is `unassigned`.

    The style mix shows whether a generator won by imitating a style the recommender likes
    rather than by describing the user better.
    """
    styles = list(dict.fromkeys(s for p in writer_profiles_by_user.values() for s in p))
    if not styles:
        styles = list(WRITERS)
    flat: list[tuple[str, str, str]] = [
        (method, user, text)
        for method, by_user in generated.items()
        for user, texts in by_user.items()
        for text in texts
    ]
    writer_flat = [
        (user, style, text)
        for user, by_style in writer_profiles_by_user.items()
        for style, text in by_style.items()
    ]
    corpus = [text for _, _, text in flat] + [text for _, _, text in writer_flat]
    vectorizer = _vectorizer()
    try:
        matrix = vectorizer.fit_transform(corpus) if corpus else None
    except ValueError:  # empty vocabulary: every text is empty or punctuation
        matrix = None
    generated_vectors = matrix[: len(flat)] if matrix is not None else None
    writer_vectors = matrix[len(flat) :] if matrix is not None else None

    writer_rows: dict[str, list[tuple[str, int]]] = {}
    for index, (user, style, _text) in enumerate(writer_flat):
        writer_rows.setdefault(user, []).append((style, index))
    centroids = None
    if writer_vectors is not None and writer_flat:
        rows = []
        for style in styles:  # every style has a writer profile here (styles come from them)
            idx = [i for i, (_, s, _) in enumerate(writer_flat) if s == style]
            rows.append(np.asarray(writer_vectors[idx].mean(axis=0)))
        centroids = np.vstack(rows)

    def nearest_style(index: int, user: str) -> str:
        if generated_vectors is None:
            return UNASSIGNED
        vector = generated_vectors[index]
        if user in writer_rows:
            candidates = writer_rows[user]
            sims = cosine_similarity(vector, writer_vectors[[i for _, i in candidates]])[0]
            names = [style for style, _ in candidates]
        elif centroids is not None:
            sims = cosine_similarity(vector, centroids)[0]
            names = styles
        else:
            return UNASSIGNED
        best = int(np.argmax(sims))
        return names[best] if sims[best] > 0 else UNASSIGNED

    records = []
    offset = 0
    for method, by_user in generated.items():
        texts = [text for texts in by_user.values() for text in texts]
        owners = [user for user, texts in by_user.items() for _ in texts]
        count = len(texts)
        lengths = np.array([len(words(text)) for text in texts], dtype=float)
        span = range(offset, offset + count)
        assigned = [nearest_style(i, owners[i - offset]) for i in span]
        within = (
            _within_user_similarity(generated_vectors[offset : offset + count], owners)
            if generated_vectors is not None and count
            else math.nan
        )
        record: dict[str, Any] = {
            "method": method,
            "profiles": count,
            "users": len(by_user),
            "mean_words": float(lengths.mean()) if count else math.nan,
            "median_words": float(np.median(lengths)) if count else math.nan,
            "distinct_1": distinct_n(texts, 1),
            "distinct_2": distinct_n(texts, 2),
            "within_user_similarity": within,
        }
        for style in [*styles, UNASSIGNED]:
            record[f"share_{style}"] = (
                sum(a == style for a in assigned) / count if count else math.nan
            )
        records.append(record)
        offset += count
    return pd.DataFrame.from_records(records)


def profile_lengths(generated: Mapping[str, Mapping[str, Sequence[str]]]) -> dict[str, np.ndarray]:
    """Each method's profile lengths in words (for the length histogram)."""
    return {
        method: np.array([len(words(t)) for texts in by_user.values() for t in texts], dtype=int)
        for method, by_user in generated.items()
    }


# ---- confusion matrices --------------------------------------------------------------------


def rank_buckets(ranks: np.ndarray) -> np.ndarray:
    """Counts of target ranks in the buckets `RANK_BUCKETS` (1, 2-5, 6-10, 11+)."""
    bucket = np.digitize(np.ravel(ranks), _BUCKET_EDGES)
    return np.bincount(bucket, minlength=len(RANK_BUCKETS))


def confusion_matrices(outputs: Mapping[str, MethodOutputs], task: str) -> dict[str, pd.DataFrame]:
    """Per method: for `sentiment` the 3x3 confusion matrix (rows: true label, columns: predicted
    label, both in `LABELS` order, counts of rows); for `ranking` the rank buckets of the target
    (index `RANK_BUCKETS`, columns `targets` (count) and `share`)."""
    _check_task(task)
    out: dict[str, pd.DataFrame] = {}
    for method, output in outputs.items():
        if task == "sentiment":
            matrix = confusion_matrix(
                output.rows[:, 0], output.rows[:, 1], labels=list(range(len(LABELS)))
            )
            frame = pd.DataFrame(matrix, index=list(LABELS), columns=list(LABELS))
            frame.index.name = "truth"
            frame.columns.name = "predicted"
        else:
            counts = rank_buckets(output.rows)
            total = counts.sum()
            frame = pd.DataFrame(
                {"targets": counts, "share": counts / total if total else counts * 0.0},
                index=list(RANK_BUCKETS),
            )
            frame.index.name = "rank"
        out[method] = frame
    return out


# ---- what the profiles claim ---------------------------------------------------------------


def claim_statistics(
    generated: Mapping[str, Mapping[str, Sequence[str]]],
    examples: Sequence[TargetExample],
    truth: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Per generator method and for the writers' baselines: how faithful the profiles are to the
    long window (shares of titles in it, stated ratings within one point, liked and disliked
    genres its ratings back; `report.faithfulness`), and, on a world whose tastes are known
    (`truth`: user id -> planted taste), the share of stated liked / disliked genres that are
    the user's planted ones and the share of planted liked genres stated."""
    from lettingo_dagster.evaluation.mentions import ProfileReader
    from lettingo_dagster.report.faithfulness import FaithfulnessScorer, summarize

    by_user = _group_examples(examples)
    windows = {user: group[0].long_window for user, group in by_user.items()}
    writers = writer_profiles_by_user(examples, tuple(WRITER_METHODS.values()))
    methods: dict[str, dict[str, list[str]]] = {
        method: {u: [writers[u][style]] for u in writers}
        for method, style in WRITER_METHODS.items()
    }
    methods.update({m: dict(p) for m, p in generated.items()})
    genres = sorted({g for w in windows.values() for item in w for g in item.genres})
    items = {item.item_id: item for w in windows.values() for item in w}
    reader = ProfileReader(list(items), [i.title for i in items.values()], genres)
    scorer = FaithfulnessScorer()
    rows = []
    for method, profiles in methods.items():
        pairs = [(text, u) for u, texts in profiles.items() if u in windows for text in texts]
        summary = summarize(scorer.score_all([t for t, _ in pairs], [windows[u] for _, u in pairs]))
        row: dict[str, Any] = {
            "method": method,
            "titles_in_window": summary.titles.rate,
            "ratings_within_1": summary.ratings.rate,
            "liked_genres_backed": summary.liked_genres.rate,
            "disliked_genres_backed": summary.disliked_genres.rate,
        }
        if truth:
            stated_liked = stated_disliked = hit_liked = hit_disliked = recalled = planted = 0
            for text, user in pairs:
                taste = truth.get(user)
                if taste is None:
                    continue
                polarity = reader.read(text).genres
                liked = {g for g, p in polarity.items() if p > 0}
                disliked = {g for g, p in polarity.items() if p < 0}
                stated_liked += len(liked)
                stated_disliked += len(disliked)
                hit_liked += len(liked & set(taste.liked_genres))
                hit_disliked += len(disliked & set(taste.disliked_genres))
                recalled += len(liked & set(taste.liked_genres))
                planted += len(taste.liked_genres)
            row["planted_liked_precision"] = hit_liked / stated_liked if stated_liked else None
            row["planted_disliked_precision"] = (
                hit_disliked / stated_disliked if stated_disliked else None
            )
            row["planted_liked_recall"] = recalled / planted if planted else None
        rows.append(row)
    return pd.DataFrame(rows)
