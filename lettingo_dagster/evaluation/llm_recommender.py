"""The paper's recommender: an LLM prompted with the recent window, the profile and the target,
whose label probabilities are read in one forward pass (`TextModel.score_options`).

Works with any local causal LM and with OpenAI-compatible endpoints. An endpoint that gives no
log-probabilities falls back to a greedy one-word answer parsed strictly: an unparseable answer
is recorded as a row of NaN (counted as wrong by the metrics), never guessed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml

from lettingo_dagster.data.samples import LABELS
from lettingo_dagster.evaluation.examples import ItemText, TargetExample
from lettingo_dagster.evaluation.recommender import Recommender, check_profiles
from lettingo_dagster.exploration.prompts import (
    PROMPTS_DIR,
    PromptError,
    render_item_line,
    sanitize_field,
)
from lettingo_dagster.models.base import ChatPrompt, ModelError, TextModel

NO_PROFILE = "(none)"


class LLMRecommender(Recommender):
    def __init__(
        self, model: TextModel, template: str = "recommender", prompts_dir: Path = PROMPTS_DIR
    ) -> None:
        self.model = model
        self.name = f"llm:{model.name}"
        path = prompts_dir / f"{template}.yaml"
        if not path.is_file():
            raise PromptError(f"{path}: prompt template not found")
        self._template_text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(self._template_text)
        self._system: str | None = raw.get("system")
        self._user: str = raw["user"]
        self._item_line: str = raw["item_line"]

    @cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(
            f"{self.model.fingerprint}:{self._template_text}".encode()
        ).hexdigest()[:16]

    def _special_tokens(self) -> tuple[str, ...]:
        return tuple(getattr(self.model, "special_tokens", ()))

    def prompt(self, example: TargetExample, profile: str | None, item: ItemText) -> ChatPrompt:
        specials = self._special_tokens()
        recent = "\n".join(render_item_line(self._item_line, r, specials) for r in example.recent)
        year = f" ({item.year})" if item.year is not None else ""
        target = sanitize_field(
            f"{item.title}{year}; {', '.join(item.genres) or 'no genre'}", specials
        )
        shown_profile = (
            sanitize_field(profile, specials) if profile and profile.strip() else NO_PROFILE
        )
        user = self._user.format(
            count=len(example.recent), recent=recent, profile=shown_profile, target=target
        )
        return ChatPrompt(user=user, system=self._system)

    def _label_probabilities(self, prompts: Sequence[ChatPrompt]) -> np.ndarray:
        try:
            return np.exp(self.model.score_options(prompts, list(LABELS)))
        except ModelError as error:
            choose = getattr(self.model, "choose_option", None)
            if choose is None or "log-probabilities" not in str(error):
                raise
        probabilities = np.full((len(prompts), len(LABELS)), np.nan)
        for row, answer in enumerate(choose(prompts, list(LABELS))):
            if answer is not None:
                probabilities[row] = [1.0 if label == answer else 0.0 for label in LABELS]
        return probabilities

    def predict_sentiment(
        self, examples: Sequence[TargetExample], profiles: Sequence[str | None]
    ) -> np.ndarray:
        check_profiles(examples, profiles)
        return self._label_probabilities(
            [self.prompt(e, p, e.target) for e, p in zip(examples, profiles, strict=True)]
        )

    def score_candidates(
        self, examples: Sequence[TargetExample], profiles: Sequence[str | None]
    ) -> list[np.ndarray]:
        """Each candidate scored by the log-probability that the user likes it."""
        check_profiles(examples, profiles)
        prompts = [
            self.prompt(e, p, item)
            for e, p in zip(examples, profiles, strict=True)
            for item in e.candidates
        ]
        like = np.log(
            np.clip(self._label_probabilities(prompts)[:, LABELS.index("like")], 1e-12, 1)
        )
        scores, start = [], 0
        for example in examples:
            scores.append(like[start : start + len(example.candidates)])
            start += len(example.candidates)
        return scores
