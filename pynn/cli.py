"""The `pynn` command: `pynn train`, `pynn info` and `pynn export-onnx`."""
import argparse
import json
import os
import sys
import time

import numpy as np


def _add_train_args(p):
    p.add_argument("--model", choices=("cnn", "mlp", "resnet20"), default="cnn",
                   help="cnn: the Keras MNIST CNN (SGD 0.01, momentum 0.9); mlp: Dense 512-512-10 "
                        "(Adam); resnet20: ResNet-20 v1 (SGD 0.01, momentum 0.9; use it with "
                        "--dataset cifar10)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128, help="per process (MPI: per rank)")
    p.add_argument("--optimizer", choices=("sgd", "adam", "rmsprop", "adadelta"), default=None,
                   help="default: sgd (momentum 0.9) for cnn, adam for mlp")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimizer's)")
    p.add_argument("--threads", type=int, default=None,
                   help="kernel threads per process (default: OMP_NUM_THREADS, else the usable "
                        "cores; under MPI the node's usable cores // ranks on the node)")
    p.add_argument("--scale-lr", action="store_true",
                   help="under MPI, multiply the learning rate by the number of ranks (linear "
                        "scaling rule: the global batch is batch-size x ranks)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="folder with the data set's files (default: $PYNN_DATA, then "
                        "/usr/share/datasets/<data set>)")
    p.add_argument("--dataset", choices=("fashion_mnist", "mnist", "cifar10", "cifar100"),
                   default="fashion_mnist",
                   help="cifar10/cifar100: the CIFAR binary version (data_batch_1.bin ...)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="train on the first N images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="gpu: train on the CUDA GPU through CuPy (pip install '.[gpu]' in the checkout)")
    p.add_argument("--precision", choices=("float32", "bf16", "mixed_bfloat16"), default="float32",
                   help="bf16 = mixed_bfloat16: the model's Dense/convolution products take "
                        "bfloat16 operands with float32 accumulation; weights, optimizer and "
                        "files stay float32 (CPU only)")
    p.add_argument("--checkpoint", metavar="PATH", default=None,
                   help="write a checkpoint (weights, optimizer, position) here every epoch "
                        "(or every --save-every steps)")
    p.add_argument("--save-every", type=int, default=None, metavar="STEPS")
    p.add_argument("--resume", action="store_true", help="resume from --checkpoint if it exists")
    p.add_argument("--out", metavar="DIR", default="pynn_out",
                   help="where the trained model (model.npz, for pynn.load_model), history.json, "
                        "curves.png, filters.png and confusion_matrix.png go (default: ./pynn_out)")
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="write TensorBoard event files (DIR/train, DIR/validation; needs "
                        "pip install tensorboard): tensorboard --logdir DIR")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                   help="1: progress bar, 2: one line per epoch (default: 1 on a terminal, else 2)")


_CLASSES = {"fashion_mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}
_POLICY = {"float32": "float32", "bf16": "mixed_bfloat16", "mixed_bfloat16": "mixed_bfloat16"}


def _load(args):
    from . import datasets
    mod = getattr(datasets, args.dataset)
    (x, y), (xt, yt) = mod.load_data(path=args.data)
    y, yt = y.reshape(-1), yt.reshape(-1)
    if args.limit is not None:
        if args.limit < 1:
            raise SystemExit("pynn train: --limit must be >= 1")
        x, y = x[:args.limit], y[:args.limit]

    def prep(a):
        a = a.astype(np.float32)
        a *= np.float32(1.0 / 255.0)
        if args.model == "mlp":
            return a.reshape(len(a), -1)
        return a if a.ndim == 4 else a.reshape(a.shape + (1,))
    return (prep(x), y.astype(np.int32)), (prep(xt), yt.astype(np.int32))


def _write_outputs(out_dir, result, history):
    from . import io
    path = os.path.join(out_dir, "history.json")
    io.write_text_atomic(path, json.dumps(result, indent=2, sort_keys=True) + "\n")
    written = [path]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no curves.png; pip install matplotlib)")
        return written
    h = history
    epochs = np.arange(1, len(h.get("loss", [])) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("loss", "accuracy")):
        if key in h:
            ax.plot(epochs, h[key], "o-", label="train")
        if "val_" + key in h:
            ax.plot(epochs, h["val_" + key], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png = os.path.join(out_dir, "curves.png")
    io.atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    written.append(png)
    return written


def _write_pictures(out_dir, model, matrix, dataset):
    """filters.png (the first convolution's filters, when the model has one)
    and confusion_matrix.png next to curves.png."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    from . import plots
    written = []
    layer, kernel = plots.first_conv_kernel(model)
    if kernel is not None:
        written.append(plots.plot_filters(kernel, os.path.join(out_dir, "filters.png"),
                                          title=f"{layer.name}: {kernel.shape[-1]} filters "
                                                f"{'x'.join(map(str, kernel.shape[:3]))}"))
    written.append(plots.plot_confusion_matrix(matrix, os.path.join(out_dir, "confusion_matrix.png"),
                                               class_names=plots.CLASS_NAMES.get(dataset)))
    return written


class Diverged(RuntimeError):
    """The training loss became NaN or inf."""


def _stop_on_nan():
    """TerminateOnNaN for the command: a non-finite loss ends the run at
    once (raises Diverged), before any later callback of the step (the
    checkpoint) writes the diverged state, and the command exits non-zero."""
    from .callbacks import TerminateOnNaN

    class StopOnNaN(TerminateOnNaN):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not np.isfinite(loss):
                raise Diverged(f"the training loss became {loss} at step {batch + 1} of epoch "
                               f"{self.epoch + 1}: training diverged (try a lower --lr); the "
                               "diverged weights were not written")
    return StopOnNaN()


def cmd_train(args):
    import pynn
    from . import callbacks, zoo
    # under MPI: rank/size, threads per rank, abort-on-exception hook
    dist = pynn.distributed.init(threads=args.threads)
    chief = dist.rank == 0
    pynn.utils.set_random_seed(args.seed)
    (x, y), (xt, yt) = _load(args)
    classes = _CLASSES[args.dataset]
    precision = _POLICY[getattr(args, "precision", "float32")]
    before = pynn.mixed_precision.global_policy()
    pynn.mixed_precision.set_global_policy(precision)   # the policy of the layers built here
    try:
        model = zoo.mlp(x.shape[1], classes) if args.model == "mlp" else \
            zoo.MODELS[args.model](x.shape[1:], classes)
    finally:
        pynn.mixed_precision.set_global_policy(before)
    if getattr(args, "device", "cpu") != "cpu":
        try:
            model.to_device(args.device)
        except (RuntimeError, NotImplementedError) as e:
            raise SystemExit(f"pynn train: --device {args.device}: {e}")
    opt_name = args.optimizer or zoo.DEFAULT_OPTIMIZER[args.model][0]
    lr = args.lr
    if dist.size > 1 and args.scale_lr:
        lr = (lr if lr is not None else zoo.make_optimizer(opt_name).learning_rate) * dist.size
    model.compile(optimizer=zoo.make_optimizer(opt_name, lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    dist.attach(model)
    if chief:
        model.summary()
        import nnkernels
        where = ""
        if dist.size > 1:
            where = (f", {dist.size} MPI ranks on {dist.nodes} node(s), global batch "
                     f"{args.batch_size * dist.size}")
        print(f"{len(x)} training / {len(xt)} test images; batch {args.batch_size}; "
              f"{opt_name} lr {model.optimizer.learning_rate}; {precision}; "
              f"{nnkernels.get_num_threads()} threads ({nnkernels.get_isa()}){where}", flush=True)
    cbs = [_stop_on_nan()]     # first: before the checkpoint writes
    if args.checkpoint:
        cbs.append(callbacks.BackupAndRestore(args.checkpoint, save_freq=args.save_every or "epoch",
                                              delete_checkpoint=False, resume=args.resume))
        if args.resume and not os.path.exists(cbs[-1].path) and chief:
            print(f"(no checkpoint at {cbs[-1].path} yet: starting from scratch)")
    elif args.resume:
        raise SystemExit("pynn train: --resume needs --checkpoint PATH")
    if args.tensorboard:
        try:
            cbs.append(callbacks.TensorBoard(log_dir=args.tensorboard))
        except ImportError as e:
            raise SystemExit(f"pynn train: --tensorboard: {e}")
    verbose = "auto" if args.verbose is None else args.verbose
    if verbose == "auto" and dist.size > 1:
        verbose = 2   # mpiexec gives ranks a pseudo-terminal even when its output is a file
    if not chief:
        verbose = 0
    t0 = time.perf_counter()
    hist = model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=verbose,
                     validation_data=(xt, yt), callbacks=cbs)
    train_s = time.perf_counter() - t0
    h = hist.history
    if h.get("val_loss"):   # the test set was the validation data of the last epoch
        test_loss, test_acc = h["val_loss"][-1], h["val_accuracy"][-1]
    else:                   # e.g. resumed from a checkpoint written after the last epoch
        test_loss, test_acc = model.evaluate(xt, yt, batch_size=1000, verbose=0)
    if chief:
        print(f"test loss {test_loss:.4f} - test accuracy {test_acc:.4f} "
              f"({train_s:.1f} s of training)", flush=True)
        result = {"model": args.model, "args": vars(args), "history": hist.history,
                  "test_loss": test_loss, "test_accuracy": test_acc, "train_seconds": train_s,
                  "threads": pynn.utils.get_num_threads(),
                  "ranks": dist.size, "precision": precision}
        from .plots import confusion_matrix
        matrix = confusion_matrix(yt, model.predict(xt, batch_size=1000, verbose=0), classes)
        result["confusion_matrix"] = matrix.tolist()    # rows: true class, columns: predicted
        model_path = os.path.join(args.out, "model.npz")
        model.save(model_path)
        for p in [model_path] + _write_outputs(args.out, result, hist.history) + \
                _write_pictures(args.out, model, matrix, args.dataset):
            print(f"wrote {p}")
    return 0


def cmd_info(args):
    import nnkernels
    import pynn
    from . import data
    dist = pynn.distributed.init()   # under MPI: this rank's share of the node's cores
    lines = dist.allgather(pynn.distributed.describe())
    if dist.rank != 0:
        return 0
    print(f"pynn {pynn.__version__}")
    for k, v in nnkernels.info().items():
        print(f"  {k}: {v}")
    print(f"  threads: {nnkernels.get_num_threads()}")
    for r, line in enumerate(lines or ()):
        print(f"  mpi: {line}" if r == 0 else f"       {line}")
    for name, folder in (("fashion_mnist", "fashion-mnist"), ("mnist", "mnist")):
        try:
            where = data.find_dataset_dir(args.data, name=folder)
            print(f"  {name}: {where}")
        except FileNotFoundError as e:
            first = str(e).splitlines()[0]
            print(f"  {name}: not found ({first})")
    return 0


def cmd_export_onnx(args):
    """A model file (model.save) -> an ONNX file (pynn/export/onnx.py)."""
    import pynn
    from .export import export_onnx
    try:
        model = pynn.load_model(args.model_file, compile=False)
    except (ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise SystemExit(f"pynn export-onnx: cannot read {args.model_file}: {e}")
    try:
        export_onnx(model, args.out, verbose=True)
    except (ImportError, NotImplementedError) as e:
        raise SystemExit(f"pynn export-onnx: {e}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="pynn", description="Train and inspect pynn models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a default model on (Fashion-)MNIST")
    _add_train_args(t)
    i = sub.add_parser("info", help="kernels, threads, MPI rank/size, data found")
    i.add_argument("--data", metavar="DIR", default=None)
    e = sub.add_parser("export-onnx", help="write a saved model (model.save) as an ONNX file")
    e.add_argument("model_file", metavar="MODEL_FILE", help="a file written by model.save")
    e.add_argument("out", metavar="OUT.onnx")
    args = p.parse_args(argv)
    try:
        rc = {"train": cmd_train, "info": cmd_info,
              "export-onnx": cmd_export_onnx}[args.cmd](args)
    except (OSError, ValueError) as e:
        # a missing or malformed data or model file (FileFormatError, IDXError), a
        # checkpoint of another run, an unwritable --out: one line, not a traceback
        print(f"pynn {args.cmd}: {e}", file=sys.stderr)
        rc = 2
    except Diverged as e:
        print(f"pynn {args.cmd}: {e}", file=sys.stderr)
        rc = 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        rc = 130
    except SystemExit as e:
        rc = e.code
        if rc and not isinstance(rc, int):
            print(rc, file=sys.stderr)
            rc = 1
    _abort_other_ranks(rc)
    return rc


def _abort_other_ranks(rc):
    """Under MPI, a rank that fails must take the others down with it: they
    would otherwise wait forever in their next collective call."""
    if rc:
        import pynn
        pynn.distributed.abort(rc)


if __name__ == "__main__":
    sys.exit(main())
