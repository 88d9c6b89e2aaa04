"""bench.train --rounds: merging each contender's turns (bench/train.py merge_round,
acceptance).  The benchmark's figures themselves are not asserted anywhere."""
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after site-packages: the installed pynn wins
from bench import train as B  # noqa: E402  (the repository's bench/)


def turn(epoch, steady, predict, minflt=0.0):
    return {"epoch": {"img_per_s": epoch}, "predict": {"img_per_s": predict},
            "steady": {"img_per_s": steady, "minflt_per_step": minflt, "minflt_runs": [0]},
            "info": {"turn": steady}}


def test_best_turn_per_metric_and_every_turn_recorded():
    r = B.merge_round(None, turn(100, 500, 900))
    r = B.merge_round(r, turn(120, 450, 950, minflt=2.0))
    r = B.merge_round(r, turn(90, 520, 800))
    assert [r[k]["img_per_s"] for k in B.METRICS] == [120, 520, 950]
    assert [x["steady"] for x in r["rounds"]] == [500, 450, 520]
    assert [x["minflt_per_step"] for x in r["rounds"]] == [0.0, 2.0, 0.0]
    assert "round_errors" not in r


def test_errors_kept_only_while_no_turn_succeeded():
    err = {"error": "RuntimeError: boom"}
    assert B.merge_round(None, err) is err
    r = B.merge_round(B.merge_round(None, err), turn(1, 2, 3))
    assert r["steady"]["img_per_s"] == 2 and r["round_errors"] == ["RuntimeError: boom"]
    r = B.merge_round(r, {"error": "OSError: later"})
    assert r["round_errors"] == ["RuntimeError: boom", "OSError: later"]
    assert len(r["rounds"]) == 1


def test_page_fault_criterion_takes_the_worst_turn():
    def results(ours):
        return {"bf16": {1: {"resnet20": {"ours": ours}}}}

    clean = B.merge_round(B.merge_round(None, turn(1, 600, 3)), turn(1, 500, 3, minflt=0.1))
    faults = B.merge_round(B.merge_round(None, turn(1, 600, 3)), turn(1, 500, 3, minflt=7.0))
    status = {}
    for name, ours in (("clean", clean), ("faults", faults)):
        checks = B.acceptance(results(ours))
        status[name] = [c for c in checks if "page faults" in c["criterion"]][0]["status"]
    # the fastest turn (600 img/s) had no faults in both: only the other turn differs
    assert status == {"clean": "met", "faults": "not met"}


def test_rounds_must_be_positive(capsys):
    import pytest
    with pytest.raises(SystemExit):
        B.main(["--rounds", "0", "--models", "cnn"])
    assert "--rounds must be at least 1" in capsys.readouterr().err
