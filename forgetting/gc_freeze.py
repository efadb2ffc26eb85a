"""A command's process keeps Python's garbage collector off the objects of its imports, and off all at exit.

torch, TorchDynamo (which every optimiser step imports) and pandas leave about 350,000 objects that live as
long as the process. Python's full collections walk all of them: a few during a run (0.1 to 0.2 s each) and
several more while the interpreter shuts down, 0.7 to 1.5 s of CPU in all, a quarter of a small run's
process and a large share of the test suite's time, which starts some 150 such processes. ``gc.freeze`` moves the
objects alive at that moment into a generation the collector never scans: called once the process has
imported what it needs, and again at exit, it skips that work and nothing else. Atexit handlers still run,
an object still goes as its last reference does (a file is closed and flushed), and the memory goes back to
the system with the process; only objects caught in reference cycles are not finalised at exit, which
CPython never promises (the data model's ``__del__`` note).

Only a process that is the command's calls this (``main()`` without arguments, the console scripts and
``python -m``; a sweep's worker): a caller of ``main([...])`` in its own long-lived process keeps its
collector as it was.
"""

from __future__ import annotations

import atexit
import gc

_frozen = False


def freeze_after_imports() -> None:
    """Freeze what this process has imported (once per process) and everything alive at its exit."""
    global _frozen
    if _frozen:  # a worker that runs several runs: the later runs' garbage is collected as usual
        return
    _frozen = True
    gc.freeze()
    atexit.register(gc.freeze)
