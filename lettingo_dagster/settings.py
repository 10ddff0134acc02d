"""Presets: named, versioned bundles of settings under `assets/presets/<name>.yaml`.

`LETTINGO_PRESET=NAME` selects one for every entry point (UI, CLI, sensors). Every setting has a
description (shown by `lettingo preset show`); unknown keys and bad values are errors that name
the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lettingo_dagster.constants import TargetProtocol
from lettingo_dagster.paths import PRESETS_DIR, expand_home

DEFAULT_PRESET = "default"
# The deterministic writers' styles (lettingo_dagster.exploration.writers.WRITERS); a writers
# explorer without `styles` writes the default ones. genre_share, another reading of the genres
# than genre_affinity's, and genre_focus, its shorter form, are written only where a preset
# names them (the planted world's).
DEFAULT_WRITER_STYLES = (
    "genre_affinity", "eras", "rating_tendency", "favourites", "palr_keywords", "rlmrec_summary",
)  # fmt: skip
WRITER_STYLES = (*DEFAULT_WRITER_STYLES, "genre_share", "genre_focus")


def check_styles(styles: Sequence[str]) -> None:
    """Every name is a writer style, or a ValueError naming the unknown ones and the known."""
    unknown = [style for style in styles if style not in WRITER_STYLES]
    if unknown:
        raise ValueError(f"unknown writer style(s) {unknown}; known: {', '.join(WRITER_STYLES)}")


class PresetError(ValueError):
    """A preset file is missing, unreadable, or has an unknown key or a bad value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitSettings(_Section):
    seed: int = Field(
        17, description="Seed of the user-id hash that assigns train / calibration / test."
    )
    calibration_fraction: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="Share of users in the calibration split (choices and tuning).",
    )
    test_fraction: float = Field(
        0.25, gt=0, lt=1, description="Share of users held out for the evaluation report only."
    )
    max_users_per_split: int | None = Field(
        None,
        ge=1,
        description="Keep at most this many users per split (those with the smallest hash), "
        "for quick presets; null keeps all.",
    )

    @model_validator(mode="after")
    def _fractions_leave_training_users(self) -> SplitSettings:
        if self.calibration_fraction + self.test_fraction >= 1:
            raise ValueError("calibration_fraction + test_fraction must be below 1")
        return self


class TaskSettings(_Section):
    recent_window: int = Field(
        10,
        ge=1,
        le=200,
        description="K: raw recent interactions before each target (the paper's 10H).",
    )
    long_window: int = Field(
        30,
        ge=1,
        le=1000,
        description="L: older interactions given to the profile generator (30, 50 or 70 in the paper).",
    )
    targets: TargetProtocol = Field(
        "heldout",
        description="next: the user's last T interactions are targets, each with its own recent "
        "window (the paper's protocol); heldout: a seeded random sample of T interactions, the "
        "recent window is the K latest remaining ones and the long window the L before them.",
    )
    targets_per_user: int | Literal["all"] = Field(
        10,
        description="T targets per user (1 with `next` = the paper's last-item setting); `all` "
        "(heldout only): every interaction outside the two windows is a target.",
    )
    target_seed: int = Field(29, description="Seed of the held-out targets' sample.")
    like_threshold: float = Field(4.0, description="A rating at or above this is labelled 'like'.")
    dislike_threshold: float = Field(
        2.0, description="A rating at or below this is labelled 'dislike'; between is 'neutral'."
    )
    negatives_per_target: int = Field(
        19,
        ge=1,
        le=1000,
        description="N: seeded items the user never rated, ranked against each target (ranking task).",
    )
    negative_seed: int = Field(23, description="Seed for drawing negatives.")
    split: SplitSettings = Field(default_factory=SplitSettings, description="User split.")

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> TaskSettings:
        if self.dislike_threshold >= self.like_threshold:
            raise ValueError("dislike_threshold must be below like_threshold")
        if isinstance(self.targets_per_user, int) and not 1 <= self.targets_per_user <= 1000:
            raise ValueError("targets_per_user must be between 1 and 1000, or 'all'")
        if self.targets_per_user == "all" and self.targets != "heldout":
            raise ValueError("targets_per_user 'all' needs targets: heldout")
        return self

    @property
    def min_targets(self) -> int:
        """Targets a user must have: T, or at least one with `all`."""
        return 1 if self.targets_per_user == "all" else int(self.targets_per_user)

    @property
    def min_interactions(self) -> int:
        """A user needs T targets, K recent items and a full long window."""
        return self.min_targets + self.recent_window + self.long_window


class DataSettings(_Section):
    datasets: list[str] | None = Field(
        None,
        description="Registry names this preset works on (the UI still lists every registered "
        "dataset); null means all. `lettingo run` materializes these.",
    )


class DecodingSettings(_Section):
    temperature: float = Field(1.0, ge=0, le=5, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(96, ge=1, le=4096, description="Longest profile, in tokens.")
    seed: int = Field(
        0, description="Base seed of the samples (sample j of a prompt uses seed + j)."
    )


class BaseGeneratorSettings(_Section):
    """The project's own small causal LM, pretrained on writer profiles."""

    prompt_template: str = Field(
        "exploration_compact",
        description="Template under assets/prompts/ the generator is trained and sampled with.",
    )
    vocab_size: int = Field(
        4000, ge=300, le=65536, description="BPE vocabulary trained on the dataset's text."
    )
    hidden_size: int = Field(128, ge=16, le=4096, description="Model width.")
    num_layers: int = Field(4, ge=1, le=64, description="Transformer blocks.")
    num_heads: int = Field(8, ge=1, le=64, description="Attention heads (must divide hidden_size).")
    intermediate_size: int = Field(384, ge=16, le=16384, description="MLP width.")
    max_positions: int = Field(
        1024, ge=64, le=32768, description="Longest prompt plus profile, in tokens."
    )
    epochs: float = Field(
        6, gt=0, le=100, description="Pretraining epochs over the writer profiles."
    )
    learning_rate: float = Field(3e-3, gt=0, le=1, description="Peak AdamW learning rate.")
    batch_size: int = Field(6, ge=1, le=1024, description="Examples per optimizer step.")
    max_train_users: int | None = Field(
        None, ge=1, description="Pretrain on at most this many training users (null: all)."
    )
    styles: list[str] | None = Field(
        None, description="Writer styles to pretrain on (null: the six default ones)."
    )
    window_views: int = Field(
        1,
        ge=1,
        le=64,
        description="Prompts per training user: the long window, then seeded subsets of it "
        "(each item kept with probability view_keep), each with its own writer profiles.",
    )
    view_keep: float = Field(
        0.75, gt=0, le=1, description="Share of the long window's items a subset view keeps."
    )
    permute_genres: bool = Field(
        False,
        description="Rename the genres of every subset view by a seeded permutation, so the "
        "generator must copy genres from its prompt instead of learning which are common.",
    )
    genre_figures: bool = Field(
        True,
        description="false: pretrain on genre_affinity without each genre's count and mean "
        "(a profile of genre names, which a small model learns to copy from a digest).",
    )
    prompt_loss: bool = Field(
        False,
        description="Train on the prompt's tokens as well as the profile's (language modelling "
        "of the whole sequence, so the loss it reports covers both): more signal from the same "
        "forward passes. On the planted world the generator then learns to copy genre names "
        "from its prompt within budget, where on profiles alone it often did not.",
    )
    copy_warmup_steps: int = Field(
        0,
        ge=0,
        le=100_000,
        description="A copying curriculum before the writers' profiles: at most this many steps "
        "in which each prompt's completion is the prompt's own first line, verbatim (no loss on "
        "the prompt). A small model learns in-context copying there, then copies genre names "
        "into profiles within a few hundred steps; from profiles alone it often never did "
        "(docs/planted-taste.md). 0: none.",
    )
    copy_warmup_loss: float = Field(
        0.3,
        gt=0,
        description="The curriculum ends early once its smoothed loss is below this: copying "
        "has been learned (it arrives as a sudden drop, at a step that varies with the seed).",
    )
    seed: int = Field(0, description="Seed of initialization, data order and window views.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> BaseGeneratorSettings:
        if self.hidden_size % self.num_heads:
            raise ValueError("num_heads must divide hidden_size")
        check_styles(self.styles or ())
        return self


class ExplorerSettings(_Section):
    """One explorer of stage 1: a model or the deterministic writers."""

    name: str = Field(description="Name shown in tables and metadata (unique).")
    kind: Literal["base_generator", "writers", "local", "openai"] = Field(
        description="base_generator: the project's own model; writers: the rule-based styles; "
        "local: a transformers model folder or id; openai: an OpenAI-compatible chat endpoint."
    )
    samples_per_user: int = Field(
        1, ge=1, le=64, description="Candidates per user (writers: per style)."
    )
    styles: list[str] | None = Field(
        None, description="Writer styles (writers only; null: the six default ones)."
    )
    splits: list[Literal["train", "calibration"]] | None = Field(
        None,
        description="The users this explorer profiles (null: all of exploration.splits). "
        "Calibration users' profiles fit the recommender; training users' make the pairs, so "
        "an explorer that cannot be in any pair (pairs.scope: policy) may skip them.",
    )
    prompt_template: str | None = Field(
        None,
        description="Template under assets/prompts/ (default: the base generator's for "
        "base_generator, 'exploration' otherwise).",
    )
    path: str | None = Field(
        None,
        description="Model folder or id (local); `$LETTINGO_HOME`, other environment variables "
        "and `~` are expanded when the model is loaded.",
    )
    adapter: str | None = Field(
        None, description="LoRA adapter folder (local); expanded like `path`."
    )
    base_url: str | None = Field(
        None, description="Endpoint base URL, e.g. http://127.0.0.1:8000/v1 (openai)."
    )
    model: str | None = Field(None, description="Model name at the endpoint (openai).")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (openai)."
    )
    max_concurrency: int = Field(
        4,
        ge=1,
        le=256,
        description="Parallel requests (openai); the most a kill can lose. Halves while the "
        "server keeps answering 429, and climbs back as answers come.",
    )
    timeout_s: float = Field(60, gt=0, description="Per-request timeout in seconds (openai).")
    max_retries: int = Field(
        4,
        ge=0,
        le=20,
        description="Retries of one request (openai) after 429, 5xx, a timeout, a dropped "
        "connection or a malformed reply; 4 means at most 5 attempts.",
    )
    retry_backoff_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="First retry's wait (openai); retry k waits about this times 2**k, at "
        "most 20 s, or the server's Retry-After.",
    )
    max_failed_call_share: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Share of this explorer's calls that may still fail after their retries "
        "(openai) without failing the step: their users lack this explorer's samples, each is "
        "listed in the model_call_failures table, and the next run asks again.",
    )
    batch_size: int = Field(
        32, ge=1, le=1024, description="Prompts per generate call (local models)."
    )
    decoding: DecodingSettings = Field(default_factory=DecodingSettings, description="Sampling.")

    def model_path(self) -> str | None:
        """`path` with `$LETTINGO_HOME`, other variables and `~` expanded."""
        return (
            None if self.path is None else expand_home(self.path, f"explorer {self.name!r}: path")
        )

    def adapter_path(self) -> str | None:
        if self.adapter is None:
            return None
        return expand_home(self.adapter, f"explorer {self.name!r}: adapter")

    @model_validator(mode="after")
    def _required_per_kind(self) -> ExplorerSettings:
        needs = {"local": ("path",), "openai": ("base_url", "model")}.get(self.kind, ())
        missing = [key for key in needs if not getattr(self, key)]
        if missing:
            raise ValueError(
                f"explorer {self.name!r} of kind {self.kind} needs {', '.join(missing)}"
            )
        check_styles(self.styles or ())
        return self


class ExplorationSettings(_Section):
    explorers: list[ExplorerSettings] = Field(
        default_factory=lambda: [
            ExplorerSettings(name="base-generator", kind="base_generator", samples_per_user=4),
            ExplorerSettings(name="writers", kind="writers"),
        ],
        description="The explorers whose candidates make up sampled_profiles.",
    )
    splits: list[Literal["train", "calibration"]] = Field(
        default_factory=lambda: ["train", "calibration"],
        description="Users to sample profiles for (test users only ever get held-out profiles).",
    )
    chunk_size: int = Field(
        64,
        ge=1,
        le=100000,
        description="Prompts per cache chunk of a local model (a crash loses one chunk; an "
        "endpoint's answers are kept one by one).",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> ExplorationSettings:
        names = [explorer.name for explorer in self.explorers]
        if len(names) != len(set(names)):
            raise ValueError(f"explorer names must be unique: {names}")
        for explorer in self.explorers:
            outside = set(explorer.splits or ()) - set(self.splits)
            if outside:
                raise ValueError(
                    f"explorer {explorer.name!r} profiles splits {sorted(outside)} that "
                    f"exploration.splits {self.splits} does not sample"
                )
        return self


class ComputeSettings(_Section):
    """Where model work runs; read by every stage."""

    torch_threads: int = Field(
        2,
        ge=1,
        le=256,
        description="torch CPU threads per process (oversubscribing 2 cores slows generation 7x).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="cuda when present (auto), or force one."
    )


class KnowledgeSettings(_Section):
    """What the recommender knows about items, learned from training users' interactions only."""

    factors: int = Field(32, ge=2, le=1024, description="Item factors (truncated SVD rank).")
    min_item_users: int = Field(
        2, ge=1, description="Items rated by fewer training users get no factors."
    )
    seed: int = Field(0, description="Seed of the SVD's random start.")


class RecommenderTrialSettings(_Section):
    """An LLM recommender candidate, measured on calibration users' sentiment targets against
    the majority label and the offline recommender before it may serve (asset
    recommender_trial)."""

    model: ExplorerSettings = Field(
        description="The candidate's model: an explorer-style entry (kind local or openai)."
    )
    users: int = Field(5, ge=1, le=10_000, description="Calibration users measured (all targets).")
    train_users: int = Field(
        60, ge=1, le=100_000, description="Training users the offline recommender is fit on."
    )
    profile_style: str = Field(
        "genre_affinity", description="The writer profile shown beside no profile."
    )
    prompt_template: str = Field("recommender", description="The candidate's prompt template.")

    @field_validator("profile_style")
    @classmethod
    def _known_style(cls, value: str) -> str:
        check_styles((value,))
        return value


class RecommenderSettings(_Section):
    """Stage 2: the frozen recommender that scores profiles."""

    kind: Literal["offline", "llm"] = Field(
        "offline",
        description="offline: MiniLM features and a small head fit on calibration users' writer "
        "profiles; llm: the paper's LLM recommender (label probabilities in one forward pass).",
    )
    task: Literal["sentiment", "ranking"] = Field(
        "ranking",
        description="sentiment: like / neutral / dislike of the target (the paper's); "
        "ranking: the target among its N negatives.",
    )
    use_item_stats: bool = Field(
        False,
        description="Give the offline recommender the item's mean rating and count from the "
        "fit users' windows (superseded by use_item_knowledge).",
    )
    use_item_knowledge: bool = Field(
        True,
        description="The offline recommender knows the items as an LLM knows films: item "
        "factors and popularity from training users (asset item_knowledge) relate the recent "
        "window, and the items and genres a profile names, to each candidate.",
    )
    knowledge: KnowledgeSettings = Field(
        default_factory=KnowledgeSettings, description="Item knowledge (asset item_knowledge)."
    )
    encoder_precision: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="The offline recommender's MiniLM encoder: float32, or bfloat16 autocast "
        "(2-3x faster encoding on CPUs with AMX or AVX512-BF16, slower elsewhere; embeddings "
        "within a cosine of 0.9999 of float32's, so scores move in their last digits).",
    )
    reward: Literal["continuous", "binary"] = Field(
        "continuous",
        description="continuous: per target the log-probability of the truth (sentiment) or "
        "the target's log-softmax among its candidates (ranking), minus the same user's "
        "no-profile score on that target, averaged over targets; binary: the paper's fraction "
        "of targets right.",
    )
    model: ExplorerSettings | None = Field(
        None,
        description="The LLM recommender's model (kind llm): an explorer-style entry of kind "
        "local, openai or base_generator.",
    )
    prompt_template: str = Field(
        "recommender", description="The LLM recommender's prompt template."
    )
    chunk_size: int = Field(512, ge=1, description="(profile, target) scores per cache chunk.")
    seed: int = Field(0, description="Seed of the offline recommender's fit.")
    trial: RecommenderTrialSettings | None = Field(
        None,
        description="An LLM recommender candidate to measure before it may serve (asset "
        "recommender_trial; null: nothing to measure).",
    )

    @model_validator(mode="after")
    def _llm_needs_model(self) -> RecommenderSettings:
        if self.kind == "llm" and self.model is None:
            raise ValueError("kind llm needs a model entry")
        return self


class OracleSettings(_Section):
    """The oracle study: how much room a profile has, before any generator is trained."""

    protocols: list[TargetProtocol] = Field(
        default_factory=lambda: ["heldout"],
        description="Target protocols compared (the preset's task.targets is always included).",
    )
    tasks: list[Literal["sentiment", "ranking"]] = Field(
        default_factory=lambda: ["ranking"],
        description="Tasks compared (the preset's recommender.task is always included).",
    )
    n_folds: int = Field(3, ge=2, le=20, description="Cross-fitting folds over users.")


class PairSettings(_Section):
    """Stage 3: turning rewards into preference pairs."""

    graded_margin: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Also require the graded reward (probability of the truth) to "
        "differ by this much, in the same direction (0: the binary rule only).",
    )
    max_pairs_per_user: int | None = Field(
        None, ge=1, description="Cap of pairs per user (seeded sample)."
    )
    scope: Literal["all", "within_explorer", "policy"] = Field(
        "all",
        description="all: pairs across explorers (off-policy writers included); "
        "within_explorer: both sides from the same explorer; policy: both sides sampled from "
        "the policy DPO trains (on-policy pairs only).",
    )
    balance_sources: bool = Field(
        False,
        description="Keep as many A-over-B as B-over-A pairs for every two sources, so no "
        "explorer or style wins by its format.",
    )
    min_pairs: int = Field(50, ge=1, description="Fewer pairs than this fails the blocking check.")
    swap_chosen_rejected: bool = Field(
        False,
        description="NEGATIVE CONTROL ONLY: swap every training pair's chosen and rejected "
        "profile (calibration pairs stay true, so held-out preference accuracy falls below "
        "0.5). DPO must then not improve on the base generator (bench/learning_control.py).",
    )
    min_z: float = Field(
        2.0,
        ge=0,
        description="Pair two profiles only when their paired reward difference over the "
        "user's targets exceeds min_z standard errors (0: any difference).",
    )
    seed: int = Field(0, description="Seed of capping and balancing.")


class LoraSettings(_Section):
    """LoRA for DPO: train low-rank adapters instead of every weight."""

    enabled: bool = Field(
        False, description="Train LoRA adapters (true) or fine-tune every weight (false)."
    )
    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r.")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get adapters.",
    )


class DpoSettings(_Section):
    """Stage 3: DPO of the profile generator on preference_pairs (TRL's DPOTrainer)."""

    policy: str = Field(
        "base-generator",
        description="Explorer whose model DPO trains (kind base_generator or local).",
    )
    beta: float = Field(0.1, gt=0, le=10, description="DPO beta: strength of the KL anchor.")
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair"] = (
        Field("sigmoid", description="TRL loss type (sigmoid is the paper's DPO loss).")
    )
    sft_weight: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Weight of a negative log-likelihood term on each pair's chosen profile, "
        "added to the DPO loss (TRL's 'sft' loss; DPO+NLL, as in RPO). It pulls the policy "
        "towards the profiles the recommender rewarded, not only away from the rejected ones; "
        "0: plain DPO.",
    )
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Peak learning rate.")
    epochs: float = Field(1, gt=0, le=100, description="Epochs over the training pairs.")
    batch_size: int = Field(16, ge=1, le=4096, description="Pairs per step and process.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Steps per update.")
    max_length: int = Field(
        1024, ge=32, le=131072, description="Longest prompt plus profile in tokens."
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA or full tuning.")
    precompute_ref_log_probs: bool = Field(
        True,
        description="Score every pair with the reference once before training (no reference "
        "model in memory while training).",
    )
    max_train_pairs: int | None = Field(
        640, ge=1, description="Train on at most this many pairs (seeded sample; null: all)."
    )
    heldout_pairs: int = Field(
        128,
        ge=1,
        description="Calibration users' pairs (at most this many) that measure held-out "
        "preference accuracy.",
    )
    processes: int = Field(
        1,
        ge=1,
        le=1024,
        description="Training processes torchrun starts (gloo on CPU, NCCL on GPU).",
    )
    logging_steps: int = Field(5, ge=1, description="Log the TRL metrics every this many steps.")
    save_steps: int = Field(20, ge=1, description="Checkpoint every this many steps (resume).")
    seed: int = Field(0, description="Seed of data order and initialization.")


class ReportSettings(_Section):
    """The evaluation report on held-out test users."""

    samples_per_user: int = Field(
        2, ge=1, le=64, description="Profiles each generator writes per test user."
    )
    seed: int = Field(1000, description="Sampling seed of both generators on test users.")
    null_seed: int = Field(
        2000, description="The base generator's other seed: the null check (base against base)."
    )
    n_boot: int = Field(1000, ge=100, le=100000, description="Bootstrap resamples over users.")
    headline_metric: str = Field(
        "hit_rate@1",
        description="The one metric every decision uses (DPO beats base, promotion), fixed "
        "before test users are scored; chosen on calibration users by the oracle study. The "
        "other metrics are descriptive.",
    )
    null_margin: float = Field(
        1.0,
        ge=0,
        description="Promotion also needs the candidate's paired lower bound to exceed "
        "null_margin times the null check's absolute estimate (what resampling alone moves).",
    )


class Preset(_Section):
    name: str = Field(description="Preset name (the file's stem).")
    description: str = Field("", description="What this preset is for.")
    data: DataSettings = Field(default_factory=DataSettings, description="Which datasets to use.")
    task: TaskSettings = Field(default_factory=TaskSettings, description="Task construction.")
    base_generator: BaseGeneratorSettings = Field(
        default_factory=BaseGeneratorSettings, description="The project's own small generator."
    )
    compute: ComputeSettings = Field(
        default_factory=ComputeSettings, description="Threads and device for model work."
    )
    exploration: ExplorationSettings = Field(
        default_factory=ExplorationSettings, description="Stage 1: candidate profiles."
    )
    recommender: RecommenderSettings = Field(
        default_factory=RecommenderSettings, description="Stage 2: the recommender."
    )
    oracle: OracleSettings = Field(
        default_factory=OracleSettings, description="The oracle study (calibration users)."
    )
    pairs: PairSettings = Field(
        default_factory=PairSettings, description="Stage 3: preference pairs."
    )
    dpo: DpoSettings = Field(default_factory=DpoSettings, description="Stage 3: DPO training.")
    report: ReportSettings = Field(
        default_factory=ReportSettings, description="The evaluation report on test users."
    )

    @model_validator(mode="after")
    def _policy_is_a_model_explorer(self) -> Preset:
        kinds = {e.name: e.kind for e in self.exploration.explorers}
        if kinds.get(self.dpo.policy) not in ("base_generator", "local"):
            raise ValueError(
                f"dpo.policy {self.dpo.policy!r} must name an explorer of kind base_generator or "
                f"local (explorers: {', '.join(kinds)})"
            )
        return self


def _format_validation_error(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid preset"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown setting")
        else:
            value = item.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"  {key}: {item['msg']}{shown}")
    return "\n".join(lines)


def preset_path(name: str, presets_dir: Path = PRESETS_DIR) -> Path:
    return presets_dir / f"{name}.yaml"


def available_presets(presets_dir: Path = PRESETS_DIR) -> list[str]:
    return sorted(p.stem for p in presets_dir.glob("*.yaml"))


def load_preset(name: str, presets_dir: Path = PRESETS_DIR) -> Preset:
    """Read and validate `<presets_dir>/<name>.yaml`; raise PresetError naming the key at fault."""
    path = preset_path(name, presets_dir)
    if not path.is_file():
        known = ", ".join(available_presets(presets_dir)) or "none"
        raise PresetError(f"{path}: no such preset {name!r} (available: {known})")
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise PresetError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PresetError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    raw.setdefault("name", name)
    try:
        return Preset.model_validate(raw)
    except ValidationError as exc:
        raise PresetError(_format_validation_error(path, exc)) from None


def active_preset_name() -> str:
    return os.environ.get("LETTINGO_PRESET", DEFAULT_PRESET)


@lru_cache(maxsize=16)
def _cached_preset(name: str, presets_dir: str) -> Preset:
    return load_preset(name, Path(presets_dir))


def active_preset() -> Preset:
    """The preset named by LETTINGO_PRESET (default: `default`)."""
    return _cached_preset(active_preset_name(), str(PRESETS_DIR))


def describe_settings(
    model: type[BaseModel] = Preset, prefix: str = ""
) -> list[tuple[str, str, str]]:
    """(key, default, description) for every setting: the configuration reference."""
    from typing import get_args, get_origin

    rows: list[tuple[str, str, str]] = []
    for key, field in model.model_fields.items():
        annotation = field.annotation
        full_key = f"{prefix}{key}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(describe_settings(annotation, prefix=f"{full_key}."))
            continue
        default = (
            "required"
            if field.is_required()
            else repr(field.get_default(call_default_factory=True))
        )
        (item,) = get_args(annotation) if get_origin(annotation) is list else (None,)
        if isinstance(item, type) and issubclass(item, BaseModel):
            rows.append(
                (
                    full_key,
                    f"{len(field.get_default(call_default_factory=True))} entries",
                    field.description or "",
                )
            )
            rows.extend(describe_settings(item, prefix=f"{full_key}[]."))
            continue
        rows.append((full_key, default, field.description or ""))
    return rows
