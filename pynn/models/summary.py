"""``model.summary()``: Keras' table (name (type), output shape, parameter
count, and for graph models the layers each one is connected to)."""


def _fmt_shape(shape):
    if isinstance(shape, list):
        return ", ".join(_fmt_shape(s) for s in shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + \
        ("," if len(shape) == 1 else "") + ")"


def print_summary(model, line_length=None, print_fn=None):
    from .sequential import Sequential
    p = print_fn or print
    graph = not isinstance(model, Sequential)
    layers = [l for l in model.layers]
    rows = []
    kept = set(model._plan.nodes)
    for layer in layers:
        nodes = [n for n in layer._inbound_nodes if n in kept or n.is_input]
        shapes = [t.shape for n in nodes[:1] for t in n.output_tensors]
        shape = shapes[0] if len(shapes) == 1 else shapes
        conn = []
        for n in nodes:
            for t in n.input_tensors:
                lay, ni, ti = t._keras_history
                conn.append(f"{lay.name}[{ni}][{ti}]")
        rows.append((f" {layer.name} ({type(layer).__name__})", _fmt_shape(shape),
                     f"{layer.count_params():,}", conn))
    first = max([29] + [len(r[0]) + 2 for r in rows])
    second = max([26] + [len(r[1]) + 2 for r in rows])
    third = 12
    if graph:
        fourth = max([20] + [len(c) + 2 for r in rows for c in r[3]])
        widths = [first, second, third, fourth]
    else:
        widths = [first, second, max(12, (line_length or 0) - first - second)]
    w = max(line_length or 0, sum(widths))

    def row(fields):
        out = ""
        for f, wd in zip(fields, widths):
            f = str(f)
            out += (f[:wd - 1] + " ") if len(f) >= wd else f.ljust(wd)
        return out.rstrip()

    p(f'Model: "{model.name}"')
    p("_" * w)
    p(row([" Layer (type)", "Output Shape", "Param #"] + (["Connected to"] if graph else [])))
    p("=" * w)
    for i, (name, shape, count, conn) in enumerate(rows):
        if graph:
            p(row([name, shape, count, conn[0] if conn else ""]))
            for c in conn[1:]:
                p(row(["", "", "", c]))
        else:
            p(row([name, shape, count]))
        p("=" * w if i == len(rows) - 1 else "")
    leaves = model._leaves()
    eff = model._effective_trainable()
    total = sum(l.count_params() for l in leaves)
    trainable = sum(s.size for l in leaves for s in l.specs if s.trainable and eff[l])
    isz = model._dtype.itemsize

    def mb(k):
        b = k * isz
        return f"{b / 2**20:.2f} MB" if b >= 2**20 else (f"{b / 2**10:.2f} KB" if b >= 2**10
                                                         else f"{b:.2f} B")
    p(f"Total params: {total:,} ({mb(total)})")
    p(f"Trainable params: {trainable:,} ({mb(trainable)})")
    p(f"Non-trainable params: {total - trainable:,} ({mb(total - trainable)})")
    p("_" * w)
