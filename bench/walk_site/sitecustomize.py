"""Loaded by every mesh process `python -m bench.walk` starts (it puts this folder on PYTHONPATH).

SIGUSR1 starts recording which of the repository's files the main thread is in, SIGUSR2 stops and
writes the record to `$TOOLSCORE_WALK_DIR/<pid>.json`. Each time the innermost repository frame
changes file it notes (monotonic ns, file, origin, entered): origin is the task's outermost
repository frame (whose work this is), entered whether a call (not a return or a resumed
coroutine) brought it there. Nothing here runs unless that variable is set.
"""

import json
import os
import signal
import sys
import time

_DIR = os.environ.get("TOOLSCORE_WALK_DIR")
_ROOT = os.environ.get("TOOLSCORE_WALK_ROOT", "")
# Not the mesh's own code, or (process.py) the frame that runs the event loop under every task.
# Where the event loop calls into a task or a callback: the climb to a task's first frame stops there.
_LOOP_FILES = ("asyncio/runners.py", "asyncio/events.py", "asyncio/base_events.py")
_SKIP = ("/generated/", "/bench/", "/.venv/", "/site-packages/", "services/common/process.py")


def _install() -> None:
    record: list[tuple[int, str | None, str | None]] = []
    last: list[str | None] = [None]

    def repo_frame(frame):  # type: ignore[no-untyped-def]
        """The innermost frame of the mesh's code in the running task or callback, if any."""
        while frame is not None:
            name = frame.f_code.co_filename
            if name.endswith(_LOOP_FILES):
                return None
            if name.startswith(_ROOT) and not any(x in name for x in _SKIP):
                return frame
            frame = frame.f_back
        return None

    seen: dict[int, object] = {}  # frames met in this record (kept alive, so ids stay theirs)

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call":
            f = repo_frame(frame)
            # a call, or a coroutine resumed (its frame was met before): only a call enters a file
            entered = f is frame and id(frame) not in seen
            seen[id(frame)] = frame
        elif event == "return":
            f = repo_frame(frame.f_back)
            entered = False
        else:
            return
        name = f.f_code.co_filename[len(_ROOT) :] if f is not None else None
        if name != last[0]:
            last[0] = name
            origin = None
            while f is not None and not f.f_code.co_filename.endswith(_LOOP_FILES):
                # the outermost repository frame under the loop: which task's work this is
                path = f.f_code.co_filename
                if path.startswith(_ROOT) and not any(x in path for x in _SKIP):
                    origin = f"{path[len(_ROOT) :]}:{f.f_code.co_name}"
                f = f.f_back
            record.append((time.monotonic_ns(), name, origin, entered))

    def start(*_):  # type: ignore[no-untyped-def]
        record.clear()
        seen.clear()
        last[0] = None
        sys.setprofile(profile)

    def stop(*_):  # type: ignore[no-untyped-def]
        sys.setprofile(None)
        seen.clear()
        path = os.path.join(_DIR, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as fh:
            json.dump({"argv": sys.argv, "record": record}, fh)
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


if _DIR:
    _install()
