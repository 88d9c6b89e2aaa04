"""Data-parallel scaling of training: ranks x threads (``python -m bench.scaling``).

For every (ranks, threads) combination with ranks * threads <= cores (default
here: 1x1, 1x2, 2x1, ...), trains the default CNN (``pynn.zoo.cnn``, SGD with
momentum 0.9) on synthetic 28x28x1 images at ``--batch`` (128) images per
rank, ``--warmup`` steps not timed, then ``--steps`` timed steps, and reports

- images/s of the whole job (global batch x steps / wall time of the timed
  steps on rank 0; every step ends in the gradient allreduce, so the ranks
  stay in lock-step),
- the time per step spent in the gradient ``Allreduce`` (counted by
  ``pynn.distributed``: it includes waiting for the slowest rank) and its
  share of the step, plus the allreduce of the same buffer timed alone
  (best and median of 20, after a barrier: the pure communication cost),
- speedup vs 1 rank x 1 thread and efficiency = speedup / (ranks x threads).

A configuration with several ranks runs under ``mpiexec -n R`` with each rank
bound to ``threads`` cores (Open MPI: ``--map-by slot:PE=T --bind-to core``;
``--mpiexec-args`` replaces that for another MPI).  Writes
``bench/results/scaling-<time>.json`` and ``.png`` (with matplotlib).
The machine should be quiet: the load of other processes is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import _common as C


# --------------------------------------------------------------- worker --
def worker(args):
    import pynn
    from pynn import distributed

    dist = distributed.init(threads=args.threads)
    import nnkernels
    threads = nnkernels.get_num_threads()
    pynn.utils.set_random_seed(0)
    steps, warm = args.steps, args.warmup
    n = args.batch * dist.size * (steps + warm)
    rng = np.random.default_rng(dist.rank)        # the data values do not matter for speed
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    model = pynn.zoo.cnn()
    model.compile(optimizer=pynn.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    dist.attach(model)

    class Clock(pynn.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == warm:
                dist.stats.reset()
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.t1 = time.perf_counter()

    clock = Clock()
    load = C.OtherLoad().start()
    c0, w0 = sum(os.times()[:2]), time.perf_counter()
    model.fit(x, y, batch_size=args.batch, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
    other = load.cores()          # minus this rank's CPU time only: subtract the other ranks'
    own = (sum(os.times()[:2]) - c0) / (time.perf_counter() - w0)
    other -= sum(dist.allgather(own)) - own
    wall = clock.t1 - clock.t0
    st = dist.stats.as_dict()
    res = {"ranks": dist.size, "threads": threads, "batch_per_rank": args.batch,
           "steps": steps, "warmup": warm, "wall_s": wall,
           "images_per_s": args.batch * dist.size * steps / wall,
           "step_ms": 1e3 * wall / steps,
           "allreduce_ms_per_step": 1e3 * st["allreduce_s"] / steps,
           "metrics_allreduce_ms_per_step": 1e3 * st["scalars_s"] / steps,
           "allreduce_calls": st["allreduce_calls"],
           "gradient_bytes": int(model._grads.nbytes),
           "params": int(model._params.size),
           "other_load_cores": other,
           "loss": float(model.history.history["loss"][-1])}
    res["allreduce_share"] = res["allreduce_ms_per_step"] / res["step_ms"]
    if dist.active:
        times = []
        g = model._grads
        for _ in range(20):
            dist.barrier()
            t0 = time.perf_counter()
            dist.allreduce_sum_(g)
            times.append(time.perf_counter() - t0)
        res["allreduce_alone_ms"] = {"best": 1e3 * min(times),
                                     "median": 1e3 * float(np.median(times))}
        res["mpi"] = distributed.describe()
        per_rank = dist.allgather({"rank": dist.rank, "threads": threads,
                                   "affinity": sorted(os.sched_getaffinity(0))})
        res["per_rank"] = per_rank
    if dist.rank == 0:
        with open(args.json, "w") as f:
            json.dump(res, f)


# --------------------------------------------------------------- driver --
def configs(cores, spec):
    if spec:
        out = []
        for item in spec.split(","):
            r, t = item.lower().split("x")
            out.append((int(r), int(t)))
        return out
    pw = [1]
    while pw[-1] * 2 <= cores:
        pw.append(pw[-1] * 2)
    return [(r, t) for r in pw for t in pw if r * t <= cores]


def find_mpiexec():
    for d in (os.path.dirname(sys.executable), None):
        exe = shutil.which("mpiexec", path=d)
        if exe:
            return exe
    return None


def run_config(r, t, args, tmp):
    out = os.path.join(tmp, f"r{r}t{t}.json")
    cmd = [sys.executable, "-m", "bench.scaling", "--worker", "--threads", str(t),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--json", out]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if r > 1:
        mpiexec = find_mpiexec()
        if mpiexec is None:
            raise SystemExit("no mpiexec found: pip install '.[mpi]'")
        extra = (args.mpiexec_args.split() if args.mpiexec_args is not None
                 else ["--map-by", f"slot:PE={t}", "--bind-to", "core"])
        cmd = [mpiexec, "-n", str(r)] + extra + cmd
        if os.geteuid() == 0:
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    with open(out) as f:
        return json.load(f)


def plot(data, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = data["results"]
    labels = [f"{r['ranks']}x{r['threads']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    ax.bar(labels, [r["images_per_s"] for r in rows], color="tab:blue")
    ax.set_ylabel("images/s (whole job)")
    ax.set_xlabel("ranks x threads")
    ax.set_title(f"default CNN, batch {data['batch_per_rank']}/rank")
    ax = axes[1]
    comp = [r["step_ms"] - r["allreduce_ms_per_step"] for r in rows]
    ar = [r["allreduce_ms_per_step"] for r in rows]
    ax.bar(labels, comp, label="compute + rest")
    ax.bar(labels, ar, bottom=comp, label="gradient allreduce")
    ax.set_ylabel("ms per step")
    ax.set_xlabel("ranks x threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=None,
                   help="e.g. 1x1,1x2,2x1 (ranks x threads; default: powers of 2 with "
                        "ranks*threads <= cores)")
    p.add_argument("--batch", type=int, default=128, help="images per rank and step")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mpiexec-args", default=None,
                   help="launcher options instead of Open MPI's '--map-by slot:PE=T --bind-to core'")
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--out", default=C.default_out_dir())
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    cores = C.all_cores()
    cfgs = configs(cores, args.configs)
    waited, load = C.wait_quiet(max_wait=10)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for r, t in cfgs:
            res = run_config(r, t, args, tmp)
            results.append(res)
            print(f"  {r}x{t}: {res['images_per_s']:.0f} images/s, {res['step_ms']:.1f} ms/step, "
                  f"allreduce {res['allreduce_ms_per_step']:.2f} ms/step", flush=True)
    base = next((x for x in results if x["ranks"] == 1 and x["threads"] == 1), None)
    for x in results:
        x["speedup_vs_1x1"] = x["images_per_s"] / base["images_per_s"] if base else None
        x["efficiency"] = x["speedup_vs_1x1"] / (x["ranks"] * x["threads"]) if base else None
    data = {"benchmark": "scaling", "model": "pynn.zoo.cnn", "optimizer": "SGD(0.01, momentum=0.9)",
            "batch_per_rank": args.batch, "steps": args.steps, "warmup": args.warmup,
            "cores": cores, "other_load_cores_at_start": load, "machine": C.machine_info(),
            "results": results}
    by = {(x["ranks"], x["threads"]): x for x in results}
    if (2, 1) in by and (1, 2) in by:
        data["ratio_2x1_over_1x2"] = by[(2, 1)]["images_per_s"] / by[(1, 2)]["images_per_s"]
    stamp = C.timestamp()
    path = C.write_json(data, args.out, f"scaling-{stamp}.json")
    png = plot(data, os.path.join(args.out, f"scaling-{stamp}.png"))
    print()
    print(f"{'ranks x threads':>16} {'images/s':>10} {'ms/step':>9} {'allreduce ms':>13} "
          f"{'share':>6} {'alone ms':>9} {'speedup':>8} {'eff.':>6} {'other load':>10}")
    for x in results:
        alone = x.get("allreduce_alone_ms", {}).get("median")
        print(f"{x['ranks']:>8} x {x['threads']:<5} {x['images_per_s']:>10.0f} {x['step_ms']:>9.1f} "
              f"{x['allreduce_ms_per_step']:>13.2f} {100 * x['allreduce_share']:>5.1f}% "
              f"{'-' if alone is None else f'{alone:.2f}':>9} "
              f"{x['speedup_vs_1x1'] or float('nan'):>8.2f} {x['efficiency'] or float('nan'):>6.2f} "
              f"{x['other_load_cores']:>10.2f}")
    if "ratio_2x1_over_1x2" in data:
        print(f"2 ranks x 1 thread / 1 rank x 2 threads: {data['ratio_2x1_over_1x2']:.2f}")
    print(f"wrote {path}" + (f" and {png}" if png else " (no PNG: pip install matplotlib)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
