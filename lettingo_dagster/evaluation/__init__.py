"""Stage 2, task-driven evaluation: target examples, the recommenders that score profiles (the
offline MiniLM-based one and the ABC an LLM recommender implements), metrics with bootstrap
intervals over users, and the oracle study that measures how much a profile could add at all."""
