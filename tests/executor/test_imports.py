"""Which warm pool a one-call run takes (`imports.needs_heavy`): code importing only the standard
library goes to the bare template's, anything else (and whatever the scan cannot judge) to the main one."""

from __future__ import annotations

import pytest

from services.executor.imports import SCAN_CHARS, needs_heavy


@pytest.mark.parametrize(
    "code",
    [
        "print(1)",
        "import os\nprint(os.getpid())",
        "import os as o, sys",
        "from os.path import join",
        "import xml.etree.ElementTree as ET",
        "from __future__ import annotations",
        "from . import sibling",  # relative: nothing to load from the environment
        "importer = 1\nfrom_ = 2",  # names that start like the keywords
        "# import pandas\nimport json",  # a comment is no import
    ],
)
def test_code_importing_only_the_standard_library_can_take_the_bare_pool(code: str) -> None:
    assert not needs_heavy(code)


@pytest.mark.parametrize(
    "code",
    [
        "import pandas as pd",
        "import os, numpy",
        "from matplotlib import pyplot",
        "x = 1; import scipy.stats",
        "def f():\n    import sklearn\n    return sklearn",
        "try:\n    import polars\nexcept ImportError:\n    pass",
        "__import__('pandas')",  # dynamic: the target is unknown, so the pool where pandas is loaded
        "import importlib\nimportlib.import_module('json')",
        "import os\n" + "x = 1\n" * (SCAN_CHARS // 6),  # too long to scan
    ],
)
def test_code_importing_anything_else_takes_the_main_pool(code: str) -> None:
    assert needs_heavy(code)
