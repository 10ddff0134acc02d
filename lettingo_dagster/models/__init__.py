"""Model backends behind one small interface: local transformers models and
OpenAI-compatible chat endpoints."""
