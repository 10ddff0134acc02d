"""Data quality rules as Great Expectations 1.x suites, run on pandas frames.

`dagster-ge` only supports GX < 1.0, so the project bridges GX itself: a `CheckRule` is a named
group of expectations; `validate_rules` runs each group as a suite and returns plain outcomes
that the Dagster layer turns into asset check results (with the failing expectation and example
rows). GX is imported lazily because importing it costs seconds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pandas as pd

MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Expect:
    """One GX expectation by class name and keyword arguments."""

    type: str
    kwargs: Mapping[str, Any]


def expect(expectation_type: str, **kwargs: Any) -> Expect:
    """expect("ExpectColumnValuesToNotBeNull", column="user_id")"""
    return Expect(expectation_type, kwargs)


@dataclass(frozen=True)
class CheckRule:
    name: str  # the Dagster asset check name
    description: str
    frame: str  # which of the frames passed to validate_rules it runs on
    expectations: tuple[Expect, ...]
    blocking: bool = True


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    element_count: int | None
    unexpected_count: int | None
    observed: Any
    examples: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        text = f"{self.expectation}({args})"
        if self.error:
            return f"{text}: raised {self.error}"
        if self.unexpected_count is not None:
            return f"{text}: {self.unexpected_count} of {self.element_count} rows unexpected"
        return f"{text}: observed {self.observed!r}"


@dataclass(frozen=True)
class RuleOutcome:
    rule: CheckRule
    expectations: list[ExpectationOutcome]

    @property
    def passed(self) -> bool:
        return all(outcome.success for outcome in self.expectations)

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [outcome for outcome in self.expectations if not outcome.success]

    def summary(self) -> str:
        if self.passed:
            return f"{self.rule.name}: all {len(self.expectations)} expectations met"
        return "; ".join(outcome.describe() for outcome in self.failures)


@lru_cache(maxsize=1)
def _pandas_batch_definition() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("lettingo")
    return source.add_dataframe_asset("frame").add_batch_definition_whole_dataframe("whole")


def _to_jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and value != value:  # NaN is not valid JSON
        return None
    return value


def _observed(details: Mapping[str, Any]) -> Any:
    """GX's observed value, or for set expectations (which leave it empty) what was missing."""
    if details.get("observed_value") is not None:
        return _to_jsonable(details["observed_value"])
    extra = {
        key: _to_jsonable(value)
        for key, value in details.items()
        if key != "observed_value" and "unexpected" not in key and key != "element_count"
    }
    return extra or None


def _examples(frame: pd.DataFrame, indexes: Sequence[Any] | None) -> list[dict[str, Any]]:
    if not indexes:
        return []
    rows = frame.loc[list(indexes)[:MAX_EXAMPLES]]
    return [
        {column: _to_jsonable(value) for column, value in record.items()}
        for record in rows.to_dict(orient="records")
    ]


def validate_rules(
    frames: Mapping[str, pd.DataFrame], rules: Sequence[CheckRule]
) -> list[RuleOutcome]:
    """Run each rule's expectations as one GX suite on its frame."""
    import great_expectations as gx

    batch_definition = _pandas_batch_definition()
    outcomes: list[RuleOutcome] = []
    for rule in rules:
        frame = frames[rule.frame].reset_index(drop=True)
        suite = gx.ExpectationSuite(name=rule.name)
        for expect in rule.expectations:
            suite.add_expectation(getattr(gx.expectations, expect.type)(**expect.kwargs))
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format="COMPLETE")
        expectation_outcomes: list[ExpectationOutcome] = []
        for expect, item in zip(rule.expectations, result.results, strict=True):
            details = item.result or {}
            raised = (item.exception_info or {}).get("raised_exception")
            expectation_outcomes.append(
                ExpectationOutcome(
                    expectation=expect.type,
                    kwargs=dict(expect.kwargs),
                    success=bool(item.success),
                    element_count=details.get("element_count"),
                    unexpected_count=details.get("unexpected_count"),
                    observed=_observed(details),
                    examples=_examples(frame, details.get("unexpected_index_list")),
                    error=(item.exception_info or {}).get("exception_message") if raised else None,
                )
            )
        outcomes.append(RuleOutcome(rule=rule, expectations=expectation_outcomes))
    return outcomes
