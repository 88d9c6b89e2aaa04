"""Chaos: a fit with BackupAndRestore killed with SIGKILL at random points
(in steps and in checkpoint writes) and started again until it completes
ends with the same weights, bit for bit, as a run never interrupted, and
leaves no temporary files (issue 15)."""
import os
import random
import subprocess
import sys
import time

import numpy as np

from pynn import io

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "chaos_worker.py")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # the installed pynn


def run_to_completion(folder, kills, rng):
    """Start the worker again and again, the first ``kills`` times killing it
    (SIGKILL) 1 to 3 steps after it starts training plus 0-50 ms (in the next
    step or checkpoint write); returns how many starts were killed midway."""
    killed = 0
    for attempt in range(kills + 1):
        p = subprocess.Popen([sys.executable, WORKER, str(folder)], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if attempt < kills:
            steps = rng.randint(1, 3)
            while steps and p.stdout.readline() == "step\n":
                steps -= 1
            if steps == 0:
                time.sleep(rng.uniform(0.0, 0.05))
                p.kill()
                p.wait()
                p.stdout.close()
                p.stderr.close()
                killed += 1
                continue
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        return killed
    raise AssertionError("never completed")


def weights(path):
    arrays, _ = io.read(str(path))
    return arrays


def test_killed_and_resumed_fit_equals_an_uninterrupted_one(tmp_path):
    rng = random.Random(int(os.environ.get("PYNN_CHAOS_SEED", "15")))
    ref, chaos = tmp_path / "ref", tmp_path / "chaos"
    run_to_completion(ref, 0, rng)
    t0 = time.monotonic()
    killed = run_to_completion(chaos, 5, rng)
    assert killed == 5              # every kill landed before the end
    a, b = weights(ref / "final.npz"), weights(chaos / "final.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert sorted(os.listdir(chaos)) == ["final.npz"], os.listdir(chaos)
    assert time.monotonic() - t0 < 60
