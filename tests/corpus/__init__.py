"""The malformed-input corpus: generated at test time by generate.py, never committed."""
