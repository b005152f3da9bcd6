"""The Python executor tool server (`python-executor-mcp-server`)."""
