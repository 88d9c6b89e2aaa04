"""GEMM benchmark: nnkernels vs NumPy (OpenBLAS) vs torch, float32.

Run from the repository root (with the environment you want measured; this
script never changes environment variables)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python -m bench.gemm
    python bench/gemm.py --quick --threads 1

What is measured, at 1 thread and at all cores (same count for every library,
set with nk.set_num_threads, threadpoolctl for NumPy's BLAS, and
torch.set_num_threads):

* the FMA peak of each ISA path (``nk.fma_peak``); "% peak" is relative to the
  best ISA's peak at that thread count;
* ``C = A @ B`` on square and NN-layer shapes: ``nk.gemm(a, b, out=out)``,
  ``np.matmul(a, b, out=out)``, ``torch.mm(a, b, out=out)``;
* the fused dense forward ``relu(x @ w + b)`` on the NN shapes:
  ``nk.dense_forward(x, w, b, "relu", out=out)``, NumPy in place
  (matmul into out, add bias, maximum in place) and
  ``torch.addmm(b, x, w, out=out); torch.relu_(out)``.

FLOPs are counted as 2*M*N*K for every case (the bias/relu epilogue is not
counted).  Timing is best of N repeats, each repeat running enough calls to
take >= --min-time seconds, libraries interleaved within each round.  After
timing, a checksum of a few output elements of every library is compared
with a float64 reference (rtol 1e-3 relative to sum |a||b| of those
elements), so no library can skip work unnoticed.

Writes bench/results/gemm-<timestamp>.json and .png (see --out).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # `python bench/gemm.py`: make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

import nnkernels as nk
from bench import _common as C

SQUARE = [64, 128, 256, 512, 1024, 2048]
NN = [(32, 784, 128), (128, 784, 128), (128, 9216, 128), (1024, 9216, 128),
      (256, 3136, 256), (128, 128, 10)]
QUICK_SQUARE = [64, 256, 1024]
QUICK_NN = [(32, 784, 128), (128, 9216, 128), (128, 128, 10)]

LIBS = ("ours", "numpy", "torch")
LIB_LABEL = {"ours": "nnkernels", "numpy": "NumPy/OpenBLAS", "torch": "torch"}
RTOL = 1e-3


def make_cases(quick: bool) -> list[dict]:
    sq = QUICK_SQUARE if quick else SQUARE
    nn = QUICK_NN if quick else NN
    cases = [dict(kind="gemm", M=n, K=n, N=n) for n in sq]
    cases += [dict(kind="gemm", M=m, K=k, N=n) for m, k, n in nn]
    cases += [dict(kind="dense", M=m, K=k, N=n) for m, k, n in nn]
    for c in cases:
        c["label"] = f"{c['kind']} {c['M']}x{c['K']}x{c['N']}"
        c["flops"] = 2.0 * c["M"] * c["K"] * c["N"]
    return cases


def build(case: dict, torch, seed: int = 0):
    """Inputs, the functions to time ({lib: fn}), their outputs, and the
    float64 reference for the checked elements."""
    M, K, N = case["M"], case["K"], case["N"]
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32) if case["kind"] == "dense" else None
    outs = {lib: np.empty((M, N), np.float32) for lib in ("ours", "numpy")}
    fns = {}
    if case["kind"] == "gemm":
        o1, o2 = outs["ours"], outs["numpy"]
        fns["ours"] = lambda: nk.gemm(a, b, out=o1)
        fns["numpy"] = lambda: np.matmul(a, b, out=o2)
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            o3 = outs["torch"] = torch.empty((M, N), dtype=torch.float32)
            fns["torch"] = lambda: torch.mm(ta, tb, out=o3)
    else:
        o1, o2 = outs["ours"], outs["numpy"]
        fns["ours"] = lambda: nk.dense_forward(a, b, bias, "relu", out=o1)

        def np_dense():
            np.matmul(a, b, out=o2)
            np.add(o2, bias, out=o2)
            np.maximum(o2, 0, out=o2)
        fns["numpy"] = np_dense
        if torch is not None:
            ta, tb, tbias = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(bias)
            o3 = outs["torch"] = torch.empty((M, N), dtype=torch.float32)

            def torch_dense():
                torch.addmm(tbias, ta, tb, out=o3)
                torch.relu_(o3)
            fns["torch"] = torch_dense

    # float64 reference of the checked elements, and their error scale
    idx = C.flat_check_indices(M * N)
    rows, cols = np.divmod(idx, N)
    a64, b64 = a[rows].astype(np.float64), b[:, cols].T.astype(np.float64)
    ref = (a64 * b64).sum(axis=1)
    if bias is not None:
        ref = np.maximum(ref + bias[cols], 0.0)
    scale = float((np.abs(a64) * np.abs(b64)).sum())
    check = {"idx": idx, "ref": float(ref.sum()), "scale": scale}
    return fns, outs, check


def full_compare(outs: dict) -> dict:
    """Max |x - numpy| / max|numpy| over the whole output, per library."""
    ref = outs["numpy"]
    den = float(np.abs(ref).max()) or 1.0
    res = {}
    for lib, o in outs.items():
        if lib == "numpy":
            continue
        o = o if isinstance(o, np.ndarray) else o.numpy()
        res[lib] = float(np.abs(o - ref).max()) / den
    return res


def run_case(case, torch, repeats, min_time):
    fns, outs, check = build(case, torch)
    for fn in fns.values():  # one call each, then compare whole outputs
        fn()
    full = full_compare(outs)
    mon = C.OtherLoad()
    t0 = time.perf_counter()
    timings = C.bench_interleaved(fns, repeats=repeats, min_time=min_time)
    wall, other = time.perf_counter() - t0, mon.cores()
    res = {"kind": case["kind"], "label": case["label"], "M": case["M"],
           "K": case["K"], "N": case["N"], "flops": case["flops"],
           "check": {"ref_checksum": check["ref"], "scale": check["scale"],
                     "rtol": RTOL, "n_elements": int(len(check["idx"])),
                     "full_max_rel_diff_vs_numpy": full},
           "wall_s": wall, "other_load_cores": other, "libs": {}}
    ok_all = all(d < RTOL for d in full.values())
    for lib, tm in timings.items():
        cs = C.checksum(outs[lib], check["idx"])  # output of the last timed call
        ok = bool(np.isclose(cs, check["ref"], rtol=RTOL, atol=RTOL * check["scale"]))
        ok_all &= ok
        d = tm.as_dict(case["flops"])
        d.update(checksum=cs, checksum_ok=ok)
        res["libs"][lib] = d
    res["check"]["ok"] = bool(ok_all)
    return res


class Contention:
    """Waits for a quiet machine before each case and re-runs a case that
    other processes disturbed, within a total time budget (seconds).

    With `threads` of `cores` in use, other processes may use the idle
    cores: a case counts as disturbed when they use more than
    ``threshold + (cores - threads)`` cores."""

    def __init__(self, threshold: float, budget: float, retries: int, cores: int):
        self.threshold, self.budget, self.retries = threshold, budget, retries
        self.cores = cores
        self.limit = threshold  # set per thread count by set_threads()
        self.waited = 0.0
        self.reruns = 0

    def set_threads(self, threads: int):
        self.limit = self.threshold + max(0, self.cores - threads)

    def wait(self):
        waited, load = C.wait_quiet(self.limit, max(0.0, self.budget))
        self.budget -= waited
        self.waited += waited
        return waited, load

    def run(self, case, torch, repeats, min_time):
        w, before = self.wait()
        r = run_case(case, torch, repeats, min_time)
        attempts = [{"other_load_cores": r["other_load_cores"], "wall_s": r["wall_s"],
                     "waited_before_s": w, "other_load_before": before}]
        for _ in range(self.retries):
            if not r["other_load_cores"] > self.limit or self.budget <= r["wall_s"]:
                break
            w, before = self.wait()
            r2 = run_case(case, torch, repeats, min_time)
            self.budget -= r2["wall_s"]
            self.reruns += 1
            attempts.append({"other_load_cores": r2["other_load_cores"], "wall_s": r2["wall_s"],
                             "waited_before_s": w, "other_load_before": before})
            if r2["other_load_cores"] < r["other_load_cores"]:
                r = r2  # keep the least disturbed run
        r["attempts"] = attempts
        r["busy_limit_cores"] = self.limit
        r["disturbed"] = bool(r["other_load_cores"] > self.limit)
        return r


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------
def fmt(x, spec):
    return format(x, spec) if x is not None and x == x else "-"


def print_table(tres: dict, peak: float, peak_isa: str):
    t = tres["threads"]
    eff = tres["effective_threads"]
    blas = eff.get("numpy_blas")
    blas_s = (",".join(str(b["num_threads"]) for b in blas) if blas else
              "NOT controlled")
    print(f"\n== threads={t}  (nnkernels {eff['nnkernels']}, NumPy BLAS {blas_s}, "
          f"torch {eff.get('torch', '-')})  FMA peak {peak:.1f} GFLOP/s [{peak_isa}]")
    hdr = (f"{'shape (MxKxN)':<24}{'ours GF/s':>10}{'%peak':>7}{'NumPy GF/s':>11}"
           f"{'torch GF/s':>11}{'ours/NumPy':>11}{'ours/torch':>11}  check  busy")
    print(hdr)
    print("-" * len(hdr))
    for r in tres["results"]:
        g = {lib: r["libs"][lib]["gflops_best"] if lib in r["libs"] else None
             for lib in LIBS}
        rn = g["ours"] / g["numpy"] if g["numpy"] else None
        rt = g["ours"] / g["torch"] if g["torch"] else None
        print(f"{r['label']:<24}{fmt(g['ours'], '10.1f')}{fmt(r['libs']['ours']['pct_peak'], '7.1f')}"
              f"{fmt(g['numpy'], '11.1f')}{fmt(g['torch'], '11.1f')}"
              f"{fmt(rn, '11.2f')}{fmt(rt, '11.2f')}  {'ok   ' if r['check']['ok'] else 'WRONG'}"
              f"  {fmt(r['other_load_cores'], '.2f')}{' *' if r.get('disturbed') else ''}")


def plot(data: dict, path: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # pragma: no cover - depends on the environment
        return f"no plot: matplotlib not importable ({e})"
    runs = data["runs"]
    labels = [r["label"] for r in runs[0]["results"]]
    libs = [lib for lib in LIBS if lib in runs[0]["results"][0]["libs"]]
    x = np.arange(len(labels))
    w = 0.8 / len(libs)
    fig, axes = plt.subplots(len(runs), 1, figsize=(max(10, 0.75 * len(labels)), 4.2 * len(runs)),
                             squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        top = 0.0
        for i, lib in enumerate(libs):
            vals = [r["libs"][lib]["gflops_best"] for r in run["results"]]
            top = max(top, max(vals))
            ax.bar(x + (i - (len(libs) - 1) / 2) * w, vals, w, label=LIB_LABEL[lib])
        for j, r in enumerate(run["results"]):
            if r.get("disturbed"):
                ax.text(j, 0, "busy", ha="center", va="bottom", fontsize=7, color="r")
        peak = run["peak_gflops"]
        ax.axhline(peak, color="k", ls="--", lw=1)
        ax.text(len(labels) - 0.5, peak, f"FMA peak {peak:.0f} ({run['peak_isa']})",
                ha="right", va="bottom", fontsize=8)
        ax.set_title(f"float32 GEMM / dense forward (relu(x@w+b)), threads={run['threads']}")
        ax.set_ylabel("GFLOP/s (2MNK / best time)")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, max(peak, top) * 1.25)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", ncol=len(libs))
    fig.suptitle(data["machine"]["cpu_model"] or "", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="fewer shapes and repeats (smoke test)")
    p.add_argument("--threads", default=None,
                   help="comma-separated thread counts (default: 1,<all cores>)")
    p.add_argument("--repeats", type=int, default=None,
                   help="best-of-N repeats (default 10, --quick 3)")
    p.add_argument("--min-time", type=float, default=0.05,
                   help="seconds per repeat, at least (default 0.05)")
    p.add_argument("--out", default=C.default_out_dir(),
                   help="directory for the JSON and PNG (default bench/results)")
    p.add_argument("--busy-threshold", type=float, default=0.25,
                   help="CPU cores used by other processes above which the "
                        "machine counts as busy (default 0.25)")
    p.add_argument("--max-wait", type=float, default=None,
                   help="total seconds to spend waiting for a quiet machine and "
                        "re-running disturbed cases (default 90, --quick 20; 0: never)")
    p.add_argument("--retries", type=int, default=1,
                   help="re-runs of a case disturbed by other processes (default 1)")
    p.add_argument("--no-torch", action="store_true", help="skip torch")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 10)
    threads_list = C.parse_threads(args.threads)
    t_start = time.perf_counter()

    torch, torch_note = (None, "disabled by --no-torch") if args.no_torch else C.optional_torch()
    tc = C.ThreadControl(torch)
    machine = C.machine_info(torch, torch_note)
    env = machine["env"]
    print(f"CPU: {machine['cpu_model']}  cores (affinity): {machine['affinity_cores']}  "
          f"nnkernels ISA: {nk.get_isa()}  numpy {np.__version__}"
          f"  torch {torch.__version__ if torch else '-'}")
    if env["openblas_overrides_set"]:
        print("WARNING: " + ", ".join(f"{k}={v}" for k, v in env["openblas_overrides"].items()
                                      if v is not None)
              + " is set; NumPy's OpenBLAS may run a slower kernel "
              "(measure with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE ...`)")
    if tc.note:
        print("NOTE: " + tc.note)
    if torch_note:
        print("NOTE: " + torch_note)

    max_wait = args.max_wait if args.max_wait is not None else (20.0 if args.quick else 90.0)
    guard = Contention(args.busy_threshold, max_wait, args.retries, C.all_cores())
    guard.wait()
    # The peak is measured before and after the GEMMs; the larger figure is
    # used (another process can only lower a measured peak).
    peaks_before = C.measure_peaks(threads_list, dtype="float32")
    for t in threads_list:
        row = peaks_before["per_isa"][str(t)]
        print(f"FMA peak float32, {t} thread(s): "
              + ", ".join(f"{isa} {g:.1f}" for isa, g in row.items()) + " GFLOP/s"
              + f"   (busy {peaks_before['other_load_cores'][str(t)]:.2f})")

    cases = make_cases(args.quick)
    runs = []
    for t in threads_list:
        guard.set_threads(t)
        t_block = time.perf_counter()
        with tc.limit(t) as eff:
            results = []
            for i, case in enumerate(cases):
                if sys.stderr.isatty():  # a progress line on terminals only
                    print(f"  threads={t}: {i + 1}/{len(cases)} {case['label']:<24}",
                          end="\r", file=sys.stderr, flush=True)
                results.append(guard.run(case, torch, repeats, args.min_time))
        print(f"  threads={t}: {len(cases)} cases in {time.perf_counter() - t_block:.0f} s"
              + " " * 20, file=sys.stderr, flush=True)
        runs.append({"threads": t, "effective_threads": eff, "results": results})

    guard.set_threads(max(threads_list))
    guard.wait()
    peaks_after = C.measure_peaks(threads_list, dtype="float32")
    peaks = {"dtype": "float32", "before": peaks_before, "after": peaks_after,
             "per_isa": {}, "best": {}}
    peaks["disturbed"] = {}
    for t in map(str, threads_list):
        row = {isa: max(peaks_before["per_isa"][t][isa], peaks_after["per_isa"][t][isa])
               for isa in peaks_before["per_isa"][t]}
        top = max(row, key=row.get)
        peaks["per_isa"][t], peaks["best"][t] = row, {"isa": top, "gflops": row[top]}
        guard.set_threads(int(t))
        peaks["disturbed"][t] = bool(min(peaks_before["other_load_cores"][t],
                                         peaks_after["other_load_cores"][t]) > guard.limit)
    print("FMA peak float32 after the run: " + "; ".join(
        f"{t} thread(s) best {peaks_after['best'][str(t)]['isa']} "
        f"{peaks_after['best'][str(t)]['gflops']:.1f} GFLOP/s "
        f"(busy {peaks_after['other_load_cores'][str(t)]:.2f})" for t in threads_list)
        + "; % peak uses the larger of before/after")
    for t, bad in peaks["disturbed"].items():
        if bad:
            print(f"WARNING: the {t}-thread FMA peak was measured on a busy machine both "
                  "times: it is too low and its % peak figures are overstated")

    for run in runs:
        best = peaks["best"][str(run["threads"])]
        run["peak_gflops"], run["peak_isa"] = best["gflops"], best["isa"]
        for r in run["results"]:
            for d in r["libs"].values():
                d["pct_peak"] = 100.0 * d["gflops_best"] / best["gflops"]
        print_table(run, best["gflops"], best["isa"])

    stamp = C.timestamp()
    data = {
        "benchmark": "gemm",
        "dtype": "float32",
        "command": sys.argv,
        "settings": {"quick": args.quick, "threads": threads_list, "repeats": repeats,
                     "min_time_s": args.min_time, "warmup_calls": 2,
                     "timer": "time.perf_counter", "statistic": "best of repeats",
                     "flops": "2*M*N*K per call (bias/relu epilogue not counted)",
                     "pct_peak": "vs best ISA's measured FMA peak at the same thread "
                                 "count (max of the measurements before and after)",
                     "numpy_threads_controlled": tc.blas_controlled,
                     "busy_threshold_cores": args.busy_threshold,
                     "disturbed": "other processes used > busy_threshold + "
                                  "(cores - threads) cores while the case was timed",
                     "max_wait_s": max_wait, "retries": args.retries,
                     "other_load": "CPU cores used by other processes while a case "
                                   "was timed (/proc/stat minus own CPU time)",
                     "notes": [n for n in (tc.note, torch_note) if n]},
        "machine": machine,
        "peaks": peaks,
        "runs": runs,
        "all_checks_ok": all(r["check"]["ok"] for run in runs for r in run["results"]),
        "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "elapsed_s": None,
    }
    png = os.path.join(args.out, f"gemm-{stamp}.png")
    if not args.no_plot:
        os.makedirs(args.out, exist_ok=True)
        err = plot(data, png)
        if err:
            print(err)
            png = None
    else:
        png = None
    data["plot"] = png
    data["elapsed_s"] = time.perf_counter() - t_start
    n_dist = sum(r["disturbed"] for run in runs for r in run["results"])
    data["n_disturbed"] = n_dist
    data["waited_for_quiet_s"] = guard.waited
    data["reruns"] = guard.reruns
    path = C.write_json(data, args.out, f"gemm-{stamp}.json")
    print(f"\nall checksums ok: {data['all_checks_ok']}   elapsed {data['elapsed_s']:.0f} s"
          f"   waited for quiet {guard.waited:.0f} s, re-ran {guard.reruns} case(s)")
    print("busy = CPU cores used by other processes while the case was timed"
          + (f"; {n_dist} case(s) marked * ran on a busy machine (> {args.busy_threshold} "
             "+ idle cores): treat them as unreliable" if n_dist else ""))
    print(f"wrote {path}" + (f"\nwrote {png}" if png else ""))
    return 0 if data["all_checks_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
