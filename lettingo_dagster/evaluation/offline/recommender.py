"""The offline recommender that scores profiles (stage 2): MiniLM features and a head per task,
fit once on calibration users, then frozen.

Fitting reads every calibration example once per writer profile plus once without a profile, so
the same frozen head scores any profile text and no profile at all. `save` writes the heads and
the fitted feature space as arrays (npz) and a JSON config, never a pickle; the fingerprint
covers both.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np

from lettingo_dagster.constants import Task
from lettingo_dagster.data.samples import LABELS, stable_unit_hash
from lettingo_dagster.evaluation import metrics
from lettingo_dagster.evaluation.examples import TargetExample
from lettingo_dagster.evaluation.knowledge import ItemKnowledge, KnowledgeFeatures
from lettingo_dagster.evaluation.offline.encoder import TextEncoder, shared_encoder
from lettingo_dagster.evaluation.offline.features import (
    OfflineConfig,
    _Featurizer,
    _softmax,
    _Space,
)
from lettingo_dagster.evaluation.offline.heads import _fit_head, _fit_listwise, _Head
from lettingo_dagster.evaluation.recommender import Recommender, check_profiles

P = ParamSpec("P")
R = TypeVar("R")
FORMAT_VERSION = 1
NO_PROFILE = "none"


def _single_threaded_blas(method: Callable[P, R]) -> Callable[P, R]:
    """Run numpy/scipy linear algebra on one thread. After torch has run, its OpenMP threads
    keep spinning, and a multi-threaded BLAS on the same cores then runs many times slower
    (docs/architecture.md, "Measured choices"); the featurizer's small products gain nothing
    from threads anyway."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return method(*args, **kwargs)

    return wrapper


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

    Without an `encoder`, the process-wide `shared_encoder()` of the config's precision is used,
    so every recommender in a process shares one MiniLM model and its embedding cache.
    """

    def __init__(
        self,
        config: OfflineConfig | None = None,
        encoder: TextEncoder | None = None,
        knowledge: ItemKnowledge | None = None,
    ) -> None:
        self.config = config or OfflineConfig()
        if encoder is None:
            encoder = shared_encoder(precision=self.config.encoder_precision)
        elif getattr(encoder, "precision", "float32") != self.config.encoder_precision:
            raise ValueError(
                f"the encoder's precision is {getattr(encoder, 'precision', 'float32')}, the "
                f"config's {self.config.encoder_precision}"
            )
        self.encoder = encoder
        self.knowledge = knowledge
        self.name = "offline-minilm" + ("-oracle" if self.config.oracle_long_window else "")
        self._space: _Space | None = None
        self._heads: dict[str, _Head] = {}
        self._fingerprint: str | None = None
        self._scoring: _Featurizer | None = None

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
            "knowledge": self.knowledge.fingerprint
            if self.knowledge is not None and self.config.use_item_knowledge
            else None,
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
        """The scoring featurizer of the fitted space, kept across calls: the reward and report
        steps score a few hundred (profile, target) pairs a call, and its caches of example
        contexts and profile readings then serve every call instead of one."""
        if self._scoring is None or self._scoring.space is not self._space:
            self._scoring = _Featurizer(
                self.encoder, self.config, self._space, self._knowledge_features()
            )
        return self._scoring

    def _knowledge_features(self) -> KnowledgeFeatures | None:
        if not self.config.use_item_knowledge:
            return None
        if self.knowledge is None:
            raise RuntimeError(f"{self.name}: use_item_knowledge needs an ItemKnowledge")
        return KnowledgeFeatures(self.knowledge, oracle=self.config.oracle_long_window)

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
        featurizer = _Featurizer(self.encoder, self.config, None, self._knowledge_features())
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
                probe = OfflineRecommender(self.config, self.encoder, self.knowledge)
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
        if self.knowledge is not None and self.config.use_item_knowledge:
            self.knowledge.save(target / "knowledge")
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
        knowledge = ItemKnowledge.load(folder / "knowledge") if payload.get("knowledge") else None
        recommender = cls(OfflineConfig(**payload["config"]), encoder, knowledge)
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
