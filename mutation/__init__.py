"""Mutation testing of the modules that carry the defences: `make mutation` (docs/mutation.md)."""
