"""The ToolScore hub: ToolLibraryService + ToolScoreService in one process."""
