"""Data-parallel scaling of training: ranks x threads (``python -m bench.scaling``).

For every (ranks, threads) combination with ranks * threads <= cores (default
here: 1x1, 1x2, 2x1, ...), trains the default CNN (``pynn.zoo.cnn``, SGD with
momentum 0.9; ``--model mlp``: the 784-512-512-10 MLP with Adam, as
``pynn train`` does) on synthetic 28x28 images at ``--batch`` (128) images per
rank, ``--warmup`` steps not timed, then ``--steps`` timed steps, and reports

- images/s of the whole job (global batch x steps / wall time of the timed
  steps on rank 0; every step ends in the gradient allreduce, so the ranks
  stay in lock-step),
- per step, the time blocked in the gradient reduction after backward (what
  ``pynn.distributed`` counts) and its share of the step, split from the
  per-rank, per-step trace into
  * the wait for the slower rank: max over ranks of the compute time (all but
    the blocked time) minus the rank's own, averaged over ranks and steps;
    the price of synchronous data parallelism on a machine whose cores do
    not run at a steady speed, not of communication;
  * the exposed communication: step time minus the slowest rank's compute
    time, i.e. what the reduction costs once every rank has arrived (the
    part of it that overlapping with backward did not hide),
- the allreduce of the whole buffer timed alone (best and median of 20,
  after a barrier: the pure communication cost),
- speedup vs 1 rank x 1 thread and efficiency = speedup / (ranks x threads).

Every configuration runs ``--repeats`` times (default 3), interleaved
(1x1, 1x2, 2x1, 1x1, ...), so a slow phase of the shared machine does not hit
one configuration only; the table shows the run with the most images/s of
each configuration and the range over all runs (the JSON has every run).
``--overlap off`` sets ``PYNN_MPI_OVERLAP=0`` (one blocking allreduce after
backward); ``--overlap both`` runs every multi-rank configuration both ways.

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
    x = rng.random((n, 28, 28, 1) if args.model == "cnn" else (n, 784), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    model = pynn.zoo.MODELS[args.model]()
    model.compile(optimizer=pynn.zoo.make_optimizer(*pynn.zoo.DEFAULT_OPTIMIZER[args.model]),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    dist.attach(model)
    dist.stats.keep_trace()

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
    trace = np.array(dist.stats.trace or [(0.0, 0.0)], dtype=np.float64).reshape(-1, 2)
    res = {"ranks": dist.size, "threads": threads, "batch_per_rank": args.batch,
           "overlap": bool(getattr(dist, "overlap", False)),
           "steps": steps, "warmup": warm, "wall_s": wall,
           "images_per_s": args.batch * dist.size * steps / wall,
           "step_ms": 1e3 * wall / steps,
           "allreduce_ms_per_step": 1e3 * st["allreduce_s"] / steps,   # rank 0; all ranks below
           "metrics_allreduce_ms_per_step": 1e3 * st["scalars_s"] / steps,
           "allreduce_calls": st["allreduce_calls"],
           "overlapped_bytes_per_step": st["overlapped_bytes"] / max(1, st["allreduce_calls"]),
           "gradient_bytes": int(model._grads.nbytes),
           "params": int(model._params.size),
           "other_load_cores": other,
           "loss": float(model.history.history["loss"][-1])}
    res["allreduce_share"] = res["allreduce_ms_per_step"] / res["step_ms"]
    res["wait_ms_per_step"] = res["exposed_comm_ms_per_step"] = 0.0
    if dist.active:
        traces = dist.allgather(trace)
        k = min(len(t) for t in traces)
        busy = np.stack([t[:k, 0] for t in traces])         # ranks x steps
        blocked = np.stack([t[:k, 1] for t in traces])
        slowest = busy.max(axis=0)
        res["allreduce_ms_per_step"] = 1e3 * float(blocked.mean())      # mean over the ranks
        res["allreduce_share"] = res["allreduce_ms_per_step"] / res["step_ms"]
        res["wait_ms_per_step"] = 1e3 * float((slowest - busy).mean())
        res["exposed_comm_ms_per_step"] = 1e3 * float((busy + blocked - slowest).mean())
        res["exposed_comm_share"] = res["exposed_comm_ms_per_step"] / res["step_ms"]
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


def label(r, t, overlap):
    return f"{r}x{t}" + ("" if overlap or r == 1 else " no-overlap")


def run_config(r, t, overlap, args, tmp):
    out = os.path.join(tmp, f"r{r}t{t}o{int(overlap)}.json")
    cmd = [sys.executable, "-m", "bench.scaling", "--worker", "--threads", str(t),
           "--model", args.model,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--json", out]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env["PYNN_MPI_OVERLAP"] = "1" if overlap else "0"
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
    labels = [r["label"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.bar(labels, [r["images_per_s"] for r in rows], color="tab:blue")
    ax.set_ylabel("images/s (whole job, best run)")
    ax.set_xlabel("ranks x threads")
    ax.set_title(f"{data['model']}, batch {data['batch_per_rank']}/rank")
    ax.tick_params(axis="x", labelrotation=20)
    ax = axes[1]
    wait = [r["wait_ms_per_step"] for r in rows]
    comm = [r["exposed_comm_ms_per_step"] for r in rows]
    comp = [r["step_ms"] - w - c for r, w, c in zip(rows, wait, comm)]
    ax.bar(labels, comp, label="compute + rest")
    ax.bar(labels, wait, bottom=comp, label="wait for the slower rank")
    ax.bar(labels, comm, bottom=[a + b for a, b in zip(comp, wait)], label="exposed allreduce")
    ax.set_ylabel("ms per step")
    ax.set_xlabel("ranks x threads")
    ax.tick_params(axis="x", labelrotation=20)
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
    p.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    p.add_argument("--batch", type=int, default=128, help="images per rank and step")
    p.add_argument("--steps", type=int, default=60, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of every configuration, interleaved; the best is reported")
    p.add_argument("--overlap", choices=("on", "off", "both"), default="on",
                   help="overlap the gradient allreduce with backward (PYNN_MPI_OVERLAP)")
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
    from pynn import zoo
    cores = C.all_cores()
    modes = {"on": (True,), "off": (False,), "both": (True, False)}[args.overlap]
    cfgs = [(r, t, o) for r, t in configs(cores, args.configs) for o in modes
            if r > 1 or o == modes[0]]
    waited, load = C.wait_quiet(max_wait=10)
    runs = {label(*c): [] for c in cfgs}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for r, t, o in cfgs:
                res = run_config(r, t, o, args, tmp)
                res["label"] = label(r, t, o)
                res["repeat"] = rep
                runs[res["label"]].append(res)
                print(f"  run {rep + 1}/{args.repeats} {res['label']}: "
                      f"{res['images_per_s']:.0f} images/s, {res['step_ms']:.1f} ms/step, "
                      f"blocked in allreduce {res['allreduce_ms_per_step']:.2f} ms/step "
                      f"(wait {res['wait_ms_per_step']:.2f}, exposed comm "
                      f"{res['exposed_comm_ms_per_step']:.2f})", flush=True)
    results = []
    for lab, rs in runs.items():
        best = dict(max(rs, key=lambda x: x["images_per_s"]))
        best["images_per_s_all_runs"] = [x["images_per_s"] for x in rs]
        results.append(best)
    base = next((x for x in results if x["label"] == "1x1"), None)
    for x in results:
        x["speedup_vs_1x1"] = x["images_per_s"] / base["images_per_s"] if base else None
        x["efficiency"] = x["speedup_vs_1x1"] / (x["ranks"] * x["threads"]) if base else None
    data = {"benchmark": "scaling", "model": f"pynn.zoo.{args.model}",
            "optimizer": "{} lr {}".format(*zoo.DEFAULT_OPTIMIZER[args.model]),
            "batch_per_rank": args.batch, "steps": args.steps, "warmup": args.warmup,
            "repeats": args.repeats, "overlap": args.overlap,
            "cores": cores, "other_load_cores_at_start": load, "machine": C.machine_info(),
            "results": results, "all_runs": [x for rs in runs.values() for x in rs]}
    by = {x["label"]: x for x in results}
    if "2x1" in by and "1x2" in by:
        data["ratio_2x1_over_1x2"] = by["2x1"]["images_per_s"] / by["1x2"]["images_per_s"]
    stamp = C.timestamp()
    path = C.write_json(data, args.out, f"scaling-{stamp}.json")
    png = plot(data, os.path.join(args.out, f"scaling-{stamp}.png"))
    print()
    print(f"best of {args.repeats} interleaved runs of {args.steps} steps each; blocked = time "
          "blocked in the gradient reduction = wait for the slower rank + exposed comm")
    print(f"{'ranks x threads':>18} {'images/s':>9} {'(all runs)':>17} {'ms/step':>8} "
          f"{'blocked':>8} {'share':>6} {'wait':>6} {'comm':>6} {'share':>6} {'alone':>6} "
          f"{'speedup':>8} {'eff.':>5} {'load':>5}")
    for x in results:
        alone = x.get("allreduce_alone_ms", {}).get("median")
        allr = x["images_per_s_all_runs"]
        rng = f"{min(allr):.0f}-{max(allr):.0f}"
        print(f"{x['label']:>18} {x['images_per_s']:>9.0f} {rng:>17} {x['step_ms']:>8.1f} "
              f"{x['allreduce_ms_per_step']:>8.2f} {100 * x['allreduce_share']:>5.1f}% "
              f"{x['wait_ms_per_step']:>6.2f} {x['exposed_comm_ms_per_step']:>6.2f} "
              f"{100 * x.get('exposed_comm_share', 0.0):>5.1f}% "
              f"{'-' if alone is None else f'{alone:.2f}':>6} "
              f"{x['speedup_vs_1x1'] or float('nan'):>8.2f} {x['efficiency'] or float('nan'):>5.2f} "
              f"{x['other_load_cores']:>5.2f}")
    print("(ms per step; alone = the whole buffer's Allreduce timed by itself, median of 20; "
          "load = other processes' cores)")
    if "ratio_2x1_over_1x2" in data:
        print(f"2 ranks x 1 thread / 1 rank x 2 threads: {data['ratio_2x1_over_1x2']:.2f}")
    print(f"wrote {path}" + (f" and {png}" if png else " (no PNG: pip install matplotlib)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
