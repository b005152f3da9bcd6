"""A small kit for writing tool servers in Python: actions in, ToolExecutorService out.

server.py  ToolServer: ToolExecutorService over plain async actions, and CallStream, which serves
           ExecuteStream (many calls over one bidirectional stream, matched by call_id)
"""

from services.common.jsonvalue import text_result
from services.toolkit.server import Action, CallContext, ToolServer

__all__ = ["Action", "CallContext", "ToolServer", "text_result"]
