"""Which warm pool a one-call run takes: a static, bounded scan of its code's import statements.

With the bare template on (`executor.bare_template`), code that imports only the standard library
runs on an interpreter forked from the bare template (a few MiB to fork); anything else on the main
pool (the heavy template's, with numpy, pandas and matplotlib imported). The scan is a guess that
costs only speed when wrong, never correctness: every interpreter can import everything the
environment has, a bare one just pays for the import itself. So it stays cheap and on the event
loop: code without the word `import` (print(1)) is decided by one substring search, the rest by one
regular expression over at most `SCAN_CHARS` characters (a parse with `ast` costs ~13 ms for 24 KiB
of code on these machines; the expression ~0.5 ms). Imports it cannot see (a backslash-continued
`import a, \\ b`) send the code to the bare pool; ones it sees that are not imports (in a string)
to the main pool; and so does a dynamic import (`__import__`, `importlib.import_module`), whose
target it cannot know, and code longer than `SCAN_CHARS`.
"""

from __future__ import annotations

import re
import sys

STDLIB = frozenset(sys.stdlib_module_names)
SCAN_CHARS = 64 * 1024
# An import statement at the start of a line or after a `;`: `from X import` (X) or `import A, B as c`.
_IMPORT = re.compile(r"(?:^|;)[ \t]*(?:from[ \t]+([\w.]+)[ \t]+import\b|import[ \t]+([\w. \t,]+))", re.M)
_DYNAMIC = ("__import__", "import_module")


def needs_heavy(code: str) -> bool:
    """Whether `code` may import a module outside the standard library (so that it runs faster on
    an interpreter forked from the heavy template); False: the bare template's will do."""
    if "import" not in code:
        return False
    if len(code) > SCAN_CHARS or any(name in code for name in _DYNAMIC):
        return True
    for source, names in _IMPORT.findall(code):
        for name in (source,) if source else names.split(","):
            words = name.split()
            top = words[0].partition(".")[0] if words else ""
            if top and top not in STDLIB:  # "" is a relative import: nothing to load from the env
                return True
    return False
