"""Turning GX rule outcomes into Dagster asset checks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import dagster as dg

from lettingo_dagster.quality import CheckRule, RuleOutcome


def check_specs(asset: str, rules: Sequence[CheckRule]) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            name=rule.name,
            asset=asset,
            description=rule.description + (" Blocks downstream assets." if rule.blocking else ""),
            blocking=rule.blocking,
        )
        for rule in rules
    ]


def check_results(outcomes: Sequence[RuleOutcome]) -> Iterator[dg.AssetCheckResult]:
    for outcome in outcomes:
        rule = outcome.rule
        metadata: dict[str, dg.MetadataValue] = {
            "expectations": dg.MetadataValue.json(
                [
                    {
                        "expectation": item.expectation,
                        "kwargs": item.kwargs,
                        "success": item.success,
                        "unexpected_count": item.unexpected_count,
                        "element_count": item.element_count,
                        "observed": item.observed,
                        **({"error": item.error} if item.error else {}),
                    }
                    for item in outcome.expectations
                ]
            )
        }
        # A number, so the UI plots each check's failures over time.
        metadata["unexpected_rows"] = dg.MetadataValue.int(
            sum(item.unexpected_count or 0 for item in outcome.expectations)
        )
        examples = [example for item in outcome.failures for example in item.examples]
        if examples:
            metadata["failing_examples"] = dg.MetadataValue.json(examples[:10])
        yield dg.AssetCheckResult(
            check_name=rule.name,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.ERROR if rule.blocking else dg.AssetCheckSeverity.WARN,
            description=outcome.summary(),
            metadata=metadata,
        )
