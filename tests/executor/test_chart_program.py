"""The chart program of python_visualize (services/executor/tasks.py) draws what the pandas program
it replaced drew: the same pixels for every plot type, with or without the blank figure a template
(services/executor/zygote.py) built ahead, and no text outside the canvas.

The programs run in a child interpreter on the executor environment's site-packages (pandas and
matplotlib are not in the test venv), outside the sandbox: they are the executor's own fixed code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.executor import tasks
from services.executor.sandbox import env_site
from tests.executor.test_features import env_ready  # noqa: F401 (a fixture)

# The chart program as it was before it drew line charts itself and saved the canvas itself: pandas'
# DataFrame.plot on a pyplot figure, tight_layout, savefig.
REFERENCE = """\
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

# Runs each (program, reference, blank) in a fresh directory; prints one JSON line per chart.
RUNNER = """\
import importlib.util, json, os, sys, tempfile
import numpy as np
import PIL.Image

spec = importlib.util.spec_from_file_location("zygote", sys.argv[1])
zygote = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zygote)


def run(code, blank):
    sys.modules.pop("_toolscore_template", None)
    if blank:
        zygote._blank_figure()
    os.chdir(tempfile.mkdtemp(dir=sys.argv[2]))
    ns = {"__name__": "__main__"}
    exec(compile(code, "<cell>", "exec"), ns)
    image = PIL.Image.open("chart.png")
    image.load()
    fig, ax = ns["fig"], ns["ax"]
    renderer = fig.canvas.get_renderer()
    width, height = fig.canvas.get_width_height()
    texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
    texts += [t.label1 for axis in (ax.xaxis, ax.yaxis) for t in axis._update_ticks()]  # those drawn
    texts += ax.get_legend().get_texts() if ax.get_legend() is not None else []
    outside = []
    for t in texts:
        box = t.get_window_extent(renderer)
        if t.get_visible() and t.get_text() and not (
            0 <= box.x0 and box.x1 <= width and 0 <= box.y0 and box.y1 <= height
        ):
            outside.append(t.get_text())
    return np.asarray(image.convert("RGBA")), image, os.path.getsize("chart.png"), outside, ns


for program, reference, blank in json.load(sys.stdin):
    try:
        want, _, want_bytes, _, _ = run(reference, False)
    except Exception as exc:  # no chart: the program must fail the same way
        try:
            run(program, blank)
        except Exception as got_exc:
            print(json.dumps({"failed": [type(exc).__name__, type(got_exc).__name__]}))
        else:
            print(json.dumps({"failed": [type(exc).__name__, None]}))
        continue
    got, image, got_bytes, outside, ns = run(program, blank)
    print(json.dumps({
        "same_pixels": bool(want.shape == got.shape and (want == got).all()),
        "size": list(image.size), "dpi": [round(d) for d in image.info.get("dpi", (0, 0))],
        "software": image.info.get("Software", ""), "bytes": [want_bytes, got_bytes],
        "outside": outside, "blank_taken": blank and "_toolscore_template" in sys.modules
        and sys.modules["_toolscore_template"].blank_figure((8, 5), 100) is None,
    }))
"""

LINE = {"x": [1, 2, 3, 4], "y": [2.0, 4.0, 3.0, 5.0]}
CHARTS: list[tuple[Any, str, str, str | None, str | None]] = [
    (LINE, "line", "bench", None, None),  # the bench's chart
    ({"t": [3, 1, 2, 10], "a": [2, -4, 3, 5], "b": [0.1, 0.2, None, 0.4]}, "line", "two series", None, None),
    ([1, 5, 2, 8, 3], "line", "a list of numbers", None, None),
    ([{"k": 1, "v": 2.5}, {"k": 2, "v": 1e6}], "line", "records, x and y named", "k", "v"),
    ([[1, 2, 3], [4, 5, 6]], "line", "rows of lists", None, None),
    ({"x": ["a", "b", "c"], "y": [1, 2, 3]}, "line", "text on the x axis (pandas draws it)", None, None),
    ({"x": list(range(100)), "y": [i * i for i in range(100)]}, "line", "a long title " * 4, None, None),
    (LINE, "bar", "bar", None, None),
    (LINE, "scatter", "scatter", None, None),
    (LINE, "hist", "hist", None, None),
    ({"x": ["a", "b", "c", "d"], "y": [2.0, 4.0, 3.0, 5.0]}, "pie", "pie", None, None),
    (LINE, "box", "box", None, None),
    ([{"name": "a"}, {"name": "b"}], "line", "nothing numeric to draw", None, None),
]
FAILING = {"nothing numeric to draw"}


@pytest.mark.timeout(900)
def test_every_chart_is_drawn_as_the_pandas_program_drew_it_with_or_without_a_blank_figure(
    env_ready,  # noqa: F811
    tmp_path: Path,
) -> None:
    jobs = []
    for data, kind, title, x, y in CHARTS:
        load = tasks._LOAD.format(data=json.dumps(data))
        program = tasks.visualize_code(data, kind, title, x, y)
        reference = load + REFERENCE.format(kind=kind, title=title, x=x, y=y)
        jobs += [(program, reference, False), (program, reference, True)]
    zygote = Path(tasks.__file__).with_name("zygote.py")
    site = env_site(env_ready.path)
    runner = f"import sys\nsys.path.append({str(site)!r})\n" + RUNNER
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", runner, str(zygote), str(tmp_path)],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=600,
        env={"MPLBACKEND": "Agg", "MPLCONFIGDIR": str(tmp_path), "PATH": "/usr/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(jobs)
    pairs = zip(results[::2], results[1::2], strict=True)
    for (_data, kind, title, *_), pair in zip(CHARTS, pairs, strict=True):
        for result, blank in zip(pair, (False, True), strict=True):
            where = (kind, title, "blank figure" if blank else "new figure", result)
            if title in FAILING:
                assert result["failed"][0] == result["failed"][1] == "TypeError", where
                continue
            assert result["same_pixels"], where
            assert result["size"] == [800, 500] and result["dpi"] == [100, 100], where
            assert result["software"].startswith("Matplotlib version"), where
            assert result["outside"] == [], where  # nothing clipped
            assert result["bytes"][1] <= result["bytes"][0], where  # RGB: never larger than before
            assert result["blank_taken"] == blank, where  # the template's figure was the one drawn on
