"""A rank that leaves an MPI job early (sys.exit(3), or catching an error and
returning normally) while the others wait for it in a collective call ends
the job within seconds, non-zero; a normal exit, in step or with rank 0
working on alone, is left alone (issue 15, item 6).

The worker imports the installed pynn (``make test`` installs the checkout
first), as the other MPI tests do."""
import os
import sys

import pytest

from test_mpi import needs_mpi, run_mpi

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mpi_leave_worker.py")
ENV = {"PYNN_MPI_LEAVE_GRACE_S": "1"}


def run(mode, tmp_path):
    return run_mpi([sys.executable, WORKER, mode, str(tmp_path)], timeout=40, check=False,
                   env=ENV)


@needs_mpi
@pytest.mark.parametrize("mode", ["exit", "return", "late_collective"])
def test_rank_leaving_early_ends_the_job(tmp_path, mode):
    p = run(mode, tmp_path)
    assert p.returncode != 0, p.stdout + p.stderr
    assert "rank 1 left the job while rank 0" in p.stderr, p.stderr
    # mpiexec itself takes ~2-4 s to start and stop two Python processes on a busy machine
    assert p.elapsed < 10, p.elapsed


@needs_mpi
def test_normal_exits_are_not_aborted(tmp_path):
    p = run("normal", tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "rank 0 done" in p.stdout and "rank 1 done" in p.stdout
    assert "left the job" not in p.stderr
    p = run("late", tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp_path / "late.txt").read_text() == "done\n"
    assert "left the job" not in p.stderr
