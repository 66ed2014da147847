"""The `keras-branch` console script: TensorFlow's own log lines stay out of the user's way.

TensorFlow prints C++ log lines (`I0000 ... port.cc:153] oneDNN ...`,
`E0000 ... cuInit`, the TFLite converter's `W0000 ...` and
`fully_quantize: ...` lines) when it is imported and while it runs, some of
them even with `TF_CPP_MIN_LOG_LEVEL=3` (absl prints everything logged
before `absl::InitializeLog()`). Its variable is read once, at import, and
`keras_branch/__init__.py` imports TensorFlow, so the console script's
target is this module outside the package: it imports nothing of
TensorFlow or keras_branch before it has set the quiet defaults.

Without `--verbose` it:

* sets `TF_CPP_MIN_LOG_LEVEL=3` (unless the variable is set already),
* silences the `tensorflow` and `absl` Python loggers below ERROR (tf.function
  "retracing" warnings) and the `tf.lite.Interpreter is deprecated` warning,
* passes standard error through a small filter process that drops the
  C++ log lines TensorFlow writes past all of that (lines starting
  `I0000 `, `W0000 `, `E0000 ` and their kin; fatal `F` lines pass).

With `--verbose` everything passes unchanged. Errors of keras-branch itself
(one line, exit status 2) and Python tracebacks always pass.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
import warnings

#: A C++ log line of TensorFlow (absl / glog format) below FATAL, or one of
#: the lines TensorFlow and its TFLite converter print without that prefix.
NOISE = re.compile(
    rb"^(?:[IWE]\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow"
    rb"|fully_quantize: \d"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate)"
)


def is_noise(line: bytes) -> bool:
    """True for a line of standard error that `keras-branch` drops without `--verbose`.

    Args:
        line: one line, as bytes.

    Returns:
        Whether the line is TensorFlow's own logging.

    Example:
    >>> is_noise(b"I0000 00:00:1796069921.375523   21728 port.cc:153] oneDNN custom operations are on.")
    True
    >>> is_noise(b"keras-branch train: error: --epochs must be an int >= 1. Received: '0'")
    False
    """
    return NOISE.match(line) is not None


def _filter_stderr() -> tuple[int, int] | None:
    """Sends fd 2 through a forked filter process; returns (saved fd 2, filter pid).

    A process rather than a thread: TensorFlow may write to fd 2 while
    holding the GIL, which a filtering thread would need. Called before
    any thread exists (before TensorFlow is imported), so forking is safe.
    """
    if not hasattr(os, "fork"):
        return None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the filter: real stderr in, lines out until every writer is gone
        os.close(write_end)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C ends the command, then us
        code = 0
        try:
            with os.fdopen(read_end, "rb") as source:
                for line in source:
                    while line and not is_noise(line):
                        line = line[os.write(2, line):]
        except OSError:
            code = 1
        os._exit(code)
    os.close(read_end)
    saved = os.dup(2)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    return saved, pid


def _restore_stderr(saved: int, pid: int) -> None:
    """Gives fd 2 back and waits (briefly) for the filter to write what it still holds."""
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(saved, 2)  # closes our end of the pipe: the filter reads to its end
    os.close(saved)
    deadline = time.monotonic() + 5.0  # a child process may hold the pipe longer
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.01)


def _quiet_python_logging() -> None:
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated")


def main(argv: list[str] | None = None) -> int:
    """Runs `keras-branch` (see `keras_branch.cli.main`), quiet unless `--verbose`.

    Args:
        argv: the arguments (default: `sys.argv[1:]`).

    Returns:
        The exit status.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    redirected = None
    if "--verbose" not in argv:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        _quiet_python_logging()
        redirected = _filter_stderr()
    try:
        # Imported here, after the settings above: TensorFlow reads them once, when it
        # is imported (this is the reason for this module, not an import cycle).
        from keras_branch.cli import main as cli_main

        return cli_main(argv)
    finally:
        if redirected is not None:
            _restore_stderr(*redirected)


if __name__ == "__main__":
    sys.exit(main())
