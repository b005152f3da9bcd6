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

# The chart program. What it draws is what pandas' `DataFrame.plot` draws (a line chart of numeric
# columns is drawn with matplotlib directly: the same artists, pixel for pixel, without pandas'
# plotting machinery, a fifth of the chart's CPU). It lays the figure out once and draws it once:
# `tight_layout` leaves a placeholder layout engine behind, which would make `savefig` draw the
# figure twice, so the engine is dropped and the canvas is drawn and encoded here. The PNG is the
# canvas' pixels, as savefig writes them, but RGB when every pixel is opaque (a figure's white
# background always is): a quarter less to filter and compress, and a file about a tenth smaller.
# In an interpreter forked from the executor's template, `_toolscore_template.blank_figure` hands
# over a figure of this size that the template built ahead (its own copy: every call gets one).
_PLOT = """\
import matplotlib
matplotlib.use("Agg")
import numpy as np
import PIL.Image
import PIL.PngImagePlugin
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
kind, title, x, y = {kind!r}, {title!r}, {x!r}, {y!r}
try:
    from _toolscore_template import blank_figure
except ImportError:
    fig = None
else:
    fig = blank_figure((8, 5), 100)
if fig is None:
    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    fig.add_subplot()
ax = fig.axes[0]
num = df.select_dtypes("number")
xcol = x if x in df.columns else (df.columns[0] if len(df.columns) > 1 else None)
if xcol is None and kind == "scatter":
    df = df.reset_index()
    xcol = "index"
ycols = [y] if y in df.columns else [c for c in num.columns if c != xcol] or list(num.columns)
numeric_x = xcol in num.columns if xcol is not None else isinstance(df.index, pd.RangeIndex)
if kind == "line" and numeric_x and ycols and xcol not in ycols and all(c in num.columns for c in ycols):
    xs = (df[xcol] if xcol is not None else df.index).to_numpy()
    for c in ycols:
        ax.plot(xs, df[c].to_numpy(), label=str(c))
    if xcol is not None:
        ax.set_xlabel(str(xcol))
    ax.legend(loc="best")
elif kind == "hist":
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
fig.set_layout_engine(None)
fig.canvas.draw()
rgba = np.asarray(fig.canvas.buffer_rgba())
image = PIL.Image.frombuffer("RGBA", (rgba.shape[1], rgba.shape[0]), rgba, "raw", "RGBA", 0, 1)
if rgba[..., 3].min() == 255:
    image = image.convert("RGB")
info = PIL.PngImagePlugin.PngInfo()
info.add_text("Software", f"Matplotlib version{{matplotlib.__version__}}, https://matplotlib.org/")
image.save("chart.png", format="png", pnginfo=info, dpi=(fig.dpi, fig.dpi))
"""


def analyze_code(data: Any, operation: str) -> str:
    return _LOAD.format(data=json.dumps(data)) + _ANALYZE.format(op=operation, result=RESULT_FILE)


def visualize_code(data: Any, plot_type: str, title: str, x: str | None, y: str | None) -> str:
    return _LOAD.format(data=json.dumps(data)) + _PLOT.format(kind=plot_type, title=title, x=x, y=y)
