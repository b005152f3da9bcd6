"""The tool library: registry of tools, their health and usage, and the change feed."""
