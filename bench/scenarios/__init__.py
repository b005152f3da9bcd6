"""Scenario modules, one per section; `bench.registry.load_all` imports them all."""
