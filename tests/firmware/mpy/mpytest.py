"""A tiny test runner for scripts that run under MicroPython (and CPython).

``run(globals())`` calls every ``test_*`` function, prints PASS/FAIL lines
and raises AssertionError at the end if any failed, so the Node runner exits 1.
"""

import sys

MICROPYTHON = sys.implementation.name == "micropython"


def tmp_file(name):
    """A fresh path for a scratch file (emscripten /tmp on MicroPython)."""
    if MICROPYTHON:
        base = "/tmp"
    else:
        import tempfile

        base = tempfile.mkdtemp()
    path = base + "/" + name
    try:
        import os

        os.remove(path)
    except OSError:
        pass
    return path


def raises(kind, func, *args):
    """Call func(*args); return the exception of type ``kind`` it must raise."""
    try:
        func(*args)
    except kind as err:
        return err
    raise AssertionError("expected " + kind.__name__ + " from " + repr(func))


def run(scope):
    names = sorted(name for name in scope if name.startswith("test_"))
    failed = []
    for name in names:
        try:
            scope[name]()
            print("PASS", name)
        except Exception as err:
            failed.append(name)
            print("FAIL", name)
            sys.print_exception(err) if MICROPYTHON else __import__("traceback").print_exc()
    print("implementation:", sys.implementation.name, "tests:", len(names), "failed:", len(failed))
    if failed:
        raise AssertionError("failed: " + ", ".join(failed))
    print("ALL PASS")
