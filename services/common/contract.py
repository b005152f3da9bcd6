"""Conventions of the gRPC contract that live outside the messages themselves."""

# Initial metadata a tool server sends when it opens ExecuteStream to say it accepts
# coalesced messages (ExecuteStreamRequest.batch); routers never batch otherwise.
BATCHING_KEY = "toolscore-batching"
