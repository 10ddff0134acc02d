"""Stage 1, profile exploration: user histories, prompts, profile writers, the base generator
and the sampled candidate profiles."""
