"""analysis layer of factkeep (see docs in README)."""
