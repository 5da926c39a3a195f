"""Fault injection for tests/test_reliability.py (issue 33), kept out of the package.

A process started with this folder on PYTHONPATH and FEEDALIGN_TEST_TEAR_ALIGNMENT_AT=N set
tears its alignment log for real: the first time it appends the measurement of step N or
later to ``alignment.jsonl``, it writes the first half of those bytes, flushes them to the
file, and SIGKILLs itself, leaving exactly what a kill in the middle of an append leaves.
"""
import os
import signal

_TEAR_AT = os.environ.get("FEEDALIGN_TEST_TEAR_ALIGNMENT_AT")
if _TEAR_AT:
    import builtins
    import json
    from pathlib import Path

    from feedalign.diagnostics import callback

    class _TearingFile:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def writelines(self, lines):
            data = "".join(lines)
            if json.loads(lines[0])["step"] >= int(_TEAR_AT):
                self.f.write(data[:len(data) // 2])
                self.f.flush()
                os.fsync(self.f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            self.f.write(data)

    def _open(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return _TearingFile(f) if Path(path).name == callback.FILE_NAME and "a" in mode else f

    callback.open = _open  # the module's own name `open`, looked up before the builtin's
