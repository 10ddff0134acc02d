"""LettinGo on Dagster."""
