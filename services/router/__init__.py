"""The call router: resolves a tool, validates arguments and dispatches along the fastest path.

Used by the hub's ExecuteTool and by the edge's direct data path alike.
"""
