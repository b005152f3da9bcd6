"""Built-in function tools, served inside the hub process."""
