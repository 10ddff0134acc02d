"""Stage report: the evaluation protocol of DESIGN §6 (every method on the held-out test users,
bootstrap intervals over users, paired differences, profile statistics, confusion matrices),
its plots, and the Markdown / HTML renderings. Plain Python; the Dagster asset wraps it."""
