"""Stage report: the evaluation protocol (every method on the held-out test users,
bootstrap intervals over users, paired differences, profile statistics, confusion matrices),
its plots, and the Markdown / HTML renderings. Plain Python; the Dagster asset wraps it."""
