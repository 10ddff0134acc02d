"""Champion promotion: a registered profile generator becomes the registry's `champion` only when
it beats noise, on the one headline metric fixed before test users were scored.

The rule, in order:

1. The null check (the base generator against itself, resampled with another seed) must not
   move the headline metric: when its 95% interval excludes 0, the evaluation is too noisy to
   decide and nothing is promoted.
2. The candidate is compared with the current champion when there is one (both generators'
   profiles of the same test users, same decoding and seed), else with the base generator: the
   paired difference's lower 95% bound must be above 0,
3. and above `null_margin` times the null check's absolute estimate (what resampling alone
   moves the metric by).

Every decision states its figures and the rule; `apply_promotion` writes them to the registry
version's tags and moves the alias only on a promotion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol


def rule_text(metric: str, null_margin: float) -> str:
    return (
        f"promote only when the paired difference on {metric} (candidate minus the champion, or "
        f"minus the base generator when there is none) has a lower 95% bound above 0 and above "
        f"{null_margin:g} x |null check|, and the null check's own interval contains 0"
    )


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    metric: str
    compared_with: str  # "champion vN" or "base generator"
    estimate: float
    low: float
    high: float
    null_estimate: float
    null_low: float
    null_high: float
    rule: str

    def as_tags(self) -> dict[str, str]:
        return {f"promotion.{k}": str(v) for k, v in asdict(self).items()}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def decide_promotion(
    difference: Mapping[str, float],
    null_check: Mapping[str, float],
    *,
    metric: str,
    compared_with: str,
    null_margin: float = 1.0,
) -> PromotionDecision:
    """`difference` and `null_check` are paired differences (`estimate`, `low`, `high`) on the
    headline metric: candidate minus reference, and base resampled minus base."""
    est, low, high = (float(difference[k]) for k in ("estimate", "low", "high"))
    n_est, n_low, n_high = (float(null_check[k]) for k in ("estimate", "low", "high"))
    figures = (
        f"{metric} candidate minus {compared_with}: {_points(est)} [{_points(low)}, "
        f"{_points(high)}] points; null check {_points(n_est)} [{_points(n_low)}, "
        f"{_points(n_high)}]"
    )
    bar = null_margin * abs(n_est)
    if any(math.isnan(v) for v in (est, low, high, n_est, n_low, n_high)):
        promote, why = False, "refused: a figure is missing"
    elif n_low > 0 or n_high < 0:
        promote, why = False, "refused: the evaluation is too noisy to decide (the null check's "
        why += "interval excludes 0)"
    elif low <= 0:
        promote, why = False, "refused: the lower bound is not above 0"
    elif low <= bar:
        promote, why = (
            False,
            f"refused: the lower bound is not above {null_margin:g} x |null check|",
        )
    else:
        promote, why = True, "promoted: the lower bound clears 0 and the null check"
    return PromotionDecision(
        promote=promote,
        reason=f"{why}; {figures}",
        metric=metric,
        compared_with=compared_with,
        estimate=est,
        low=low,
        high=high,
        null_estimate=n_est,
        null_low=n_low,
        null_high=n_high,
        rule=rule_text(metric, null_margin),
    )


class Registry(Protocol):
    """What promotion needs from the tracking resource (MlflowTracking)."""

    def alias_version(self, name: str, alias: str = "champion") -> str | None: ...

    def set_alias(self, name: str, version: str, alias: str = "champion") -> None: ...

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None: ...


def apply_promotion(
    registry: Registry, name: str, version: str | None, decision: PromotionDecision
) -> str | None:
    """Write the decision to the version's tags and move `champion` to it when promoted.
    Returns the champion version before the decision."""
    if not version:
        return None
    before = registry.alias_version(name)
    for key, value in decision.as_tags().items():
        registry.set_version_tag(name, version, key, value[:5000])
    if decision.promote:
        registry.set_alias(name, version)
    return before
