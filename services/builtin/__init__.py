"""Built-in function tools, served inside the hub process.

functions.py  the small functions of the in-process `builtin` tool (see config/toolscore.toml)
"""
