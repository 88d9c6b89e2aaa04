"""A process killed while it writes a file leaves its temporary file; the
next write of that file removes it, but only files of pynn's naming whose
process is gone (issue 15, item 9)."""
import os
import signal
import subprocess
import sys
import time

from pynn import io

SLOW_WRITER = r"""
import sys, time
from pynn import io
def write(f):
    f.write(b"partial")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
io.atomic_write(sys.argv[1], write)
"""


def temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def start_slow_writer(path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(path)], stdout=subprocess.PIPE,
                         env=env, text=True)
    assert p.stdout.readline() == "writing\n"
    return p


def test_killed_write_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    path = tmp_path / "model.npz"
    io.write_text_atomic(path, "old")
    p = start_slow_writer(path)
    try:
        (live,) = temp_files(tmp_path)
        assert live.startswith(".model.npz.") and f".{p.pid}." in live
        io.write_text_atomic(path, "while the other writes")   # its file is in use: kept
        assert temp_files(tmp_path) == [live]
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert path.read_text() == "while the other writes"
    assert temp_files(tmp_path) == [live]                      # the kill leaves it
    # not ours (other names, another host, another file): never touched
    foreign = [".model.npz.abc123.tmp", ".model.npz.otherhost.1234567.abc.tmp",
               ".other.npz." + live.split(".", 3)[3], "model.npz.tmp"]
    for name in foreign:
        (tmp_path / name).write_text("x")
    io.write_text_atomic(path, "new")
    assert path.read_text() == "new"
    assert temp_files(tmp_path) == sorted(foreign)


def test_temp_file_of_a_reused_pid_is_stale(tmp_path):
    # pid 1 runs, but started after this file was last written: not the writer
    path = tmp_path / "w.npz"
    name = f".w.npz.{io._HOST}.1.abcdefgh.tmp"
    (tmp_path / name).write_text("x")
    if io._process_start(1) is None:
        return   # no /proc: only "process gone" can be told
    os.utime(tmp_path / name, (0, 0))
    io.write_text_atomic(path, "new")
    assert temp_files(tmp_path) == []
    # a file newer than pid 1's start is left alone (it could be pid 1's)
    (tmp_path / name).write_text("x")
    io.write_text_atomic(path, "newer")
    assert temp_files(tmp_path) == [name]
