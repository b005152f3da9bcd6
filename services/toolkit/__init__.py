"""A small kit for writing tool servers in Python: actions in, ToolExecutorService out."""

from services.common.results import text_result
from services.toolkit.server import Action, CallContext, ToolServer

__all__ = ["Action", "CallContext", "ToolServer", "text_result"]
