"""Code for python_analyze and python_visualize: small pandas/matplotlib programs run in the sandbox.

The data travels as a JSON string literal inside the program (never
interpolated as code), the operation and plot type come from fixed lists.
Results come back as files in the scratch dir: `_result.json` and the chart.
"""

from __future__ import annotations

import json
from typing import Any

RESULT_FILE = "_result.json"
OPERATIONS = (
    "describe",
    "mean",
    "median",
    "sum",
    "min",
    "max",
    "std",
    "count",
    "corr",
    "value_counts",
    "head",
    "info",
)
PLOT_TYPES = ("line", "bar", "scatter", "hist", "pie", "box")

_LOAD = """\
import json
import pandas as pd
_raw = json.loads({data!r})
if isinstance(_raw, list) and _raw and not isinstance(_raw[0], (dict, list)):
    df = pd.DataFrame({{"value": _raw}})
else:
    df = pd.DataFrame(_raw)
"""

_ANALYZE = """\
op = {op!r}
num = df.select_dtypes("number")
if op == "describe":
    res = df.describe(include="all")
elif op in ("mean", "median", "sum", "min", "max", "std"):
    res = getattr(num, op)()
elif op == "count":
    res = df.count()
elif op == "corr":
    res = num.corr()
elif op == "value_counts":
    res = {{c: df[c].value_counts().head(50) for c in df.columns}}
elif op == "head":
    res = df.head(10)
else:
    res = pd.Series({{"rows": len(df), "columns": list(df.columns),
                     "dtypes": {{c: str(t) for c, t in df.dtypes.items()}}}})
if isinstance(res, dict):
    out = {{c: json.loads(s.to_json()) for c, s in res.items()}}
    print("\\n\\n".join(f"{{c}}\\n{{s.to_string()}}" for c, s in res.items()))
else:
    out = json.loads(res.to_json(default_handler=str))
    print(res.to_string())
with open({result!r}, "w") as f:
    json.dump(out, f)
"""

_PLOT = """\
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
kind, title, x, y = {kind!r}, {title!r}, {x!r}, {y!r}
fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
num = df.select_dtypes("number")
xcol = x if x in df.columns else (df.columns[0] if len(df.columns) > 1 else None)
if xcol is None and kind == "scatter":
    df = df.reset_index()
    xcol = "index"
ycols = [y] if y in df.columns else [c for c in num.columns if c != xcol] or list(num.columns)
if kind == "hist":
    num[ycols].plot.hist(ax=ax, alpha=0.7)
elif kind == "box":
    num[ycols].plot.box(ax=ax)
elif kind == "pie":
    (df.set_index(xcol) if xcol else df)[ycols[0]].plot.pie(ax=ax, autopct="%1.1f%%")
elif kind == "scatter":
    df.plot.scatter(x=xcol, y=ycols[0], ax=ax)
else:
    df.plot(x=xcol, y=ycols, kind=kind, ax=ax)
ax.set_title(title)
fig.tight_layout()
fig.savefig("chart.png")
"""


def analyze_code(data: Any, operation: str) -> str:
    return _LOAD.format(data=json.dumps(data)) + _ANALYZE.format(op=operation, result=RESULT_FILE)


def visualize_code(data: Any, plot_type: str, title: str, x: str | None, y: str | None) -> str:
    return _LOAD.format(data=json.dumps(data)) + _PLOT.format(kind=plot_type, title=title, x=x, y=y)
