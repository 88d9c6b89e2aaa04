"""keras.utils.model_to_dot / plot_model: the layer graph as Graphviz DOT.

The DOT text is written here (:func:`dot_source`, no dependency); turning it
into a ``pydot.Dot`` needs pydot, and drawing it to a file needs Graphviz's
``dot`` program: both are optional, and a clear ImportError says what to
install when one is missing.
"""
import os
import shutil

_INSTALL = ("pip install pydot, and install Graphviz (apt-get install graphviz, brew install "
            "graphviz, conda install graphviz, or https://graphviz.org/download)")


def _q(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shape(t):
    return "(" + ", ".join("None" if d is None else str(d) for d in t.shape) + \
        ("," if len(t.shape) == 1 else "") + ")"


def _graph(model):
    """(layers in order, edges (source layer, target layer)) of a built model."""
    if not getattr(model, "_graph_built", False):
        raise ValueError("the model is not built yet: give it an input shape (input_shape=, "
                         "pynn.Input) or call build / fit before plotting it")
    kept = set(model._plan.nodes)
    layers, edges, seen = [], [], set()

    def add(layer):
        if id(layer) not in seen:
            seen.add(id(layer))
            layers.append(layer)
    for t in model._inputs:
        add(t._keras_history[0])
    for layer in model.layers:
        add(layer)
        for n in layer._inbound_nodes:
            if n in kept:
                for t in n.input_tensors:
                    src = t._keras_history[0]
                    add(src)
                    edges.append((src, layer))
    return layers, edges


def _label(layer, show_shapes, show_dtype, show_layer_names, show_layer_activations,
           show_trainable):
    kind = type(layer).__name__
    lines = [f"{layer.name} ({kind})" if show_layer_names else kind]
    node = layer._inbound_nodes[0] if layer._inbound_nodes else None
    if show_shapes and node is not None:
        ins = [_shape(t) for t in node.input_tensors]
        outs = [_shape(t) for t in node.output_tensors]
        if ins:
            lines.append("input: " + ", ".join(ins))
        lines.append("output: " + ", ".join(outs))
    if show_dtype:
        dt = getattr(layer, "_dtype", None) or getattr(layer, "dtype", None)
        lines.append(f"dtype: {getattr(dt, 'name', dt)}")
    act = getattr(layer, "activation", None)
    if show_layer_activations and isinstance(act, str):
        lines.append(f"activation: {act}")
    if show_trainable:
        lines.append(f"trainable: {bool(getattr(layer, 'trainable', True))}")
    return "\\n".join(s.replace("\\", "\\\\").replace('"', '\\"') for s in lines)


def dot_source(model, show_shapes=False, show_dtype=False, show_layer_names=True, rankdir="TB",
               expand_nested=False, dpi=200, show_layer_activations=False, show_trainable=False):
    """The DOT text of the model's layer graph: one box per layer, one edge
    per connection, in Keras' layer order."""
    if rankdir not in ("TB", "LR"):
        raise ValueError(f"rankdir must be 'TB' or 'LR', got {rankdir!r}")
    layers, edges = _graph(model)
    if expand_nested and any(getattr(l, "is_model", False) for l in layers):
        raise NotImplementedError("expand_nested=True is not supported: a nested model is drawn "
                                  "as one box (plot it on its own to see its layers)")
    out = [f"digraph {_q(model.name)} {{", f"  graph [rankdir={rankdir}, dpi={int(dpi)}];",
           "  node [shape=box];"]
    ids = {id(l): f"layer_{i}" for i, l in enumerate(layers)}
    for l in layers:
        lab = _label(l, show_shapes, show_dtype, show_layer_names, show_layer_activations,
                     show_trainable)
        out.append(f'  {ids[id(l)]} [label="{lab}"];')
    for a, b in edges:
        out.append(f"  {ids[id(a)]} -> {ids[id(b)]};")
    out.append("}")
    return "\n".join(out) + "\n"


def _pydot(what):
    try:
        import pydot
    except ImportError:
        raise ImportError(f"{what} needs pydot and Graphviz: {_INSTALL}") from None
    return pydot


def model_to_dot(model, show_shapes=False, show_dtype=False, show_layer_names=True, rankdir="TB",
                 expand_nested=False, dpi=200, subgraph=False, show_layer_activations=False,
                 show_trainable=False, **kwargs):
    """A ``pydot.Dot`` of the model (needs pydot)."""
    if kwargs:
        raise TypeError(f"model_to_dot: unexpected keyword argument(s) {sorted(kwargs)}")
    if subgraph:
        raise NotImplementedError("model_to_dot(subgraph=True) is not supported")
    pydot = _pydot("model_to_dot")
    src = dot_source(model, show_shapes, show_dtype, show_layer_names, rankdir, expand_nested,
                     dpi, show_layer_activations, show_trainable)
    graphs = pydot.graph_from_dot_data(src)
    if not graphs:
        raise RuntimeError("pydot could not parse the generated DOT text")
    return graphs[0]


def plot_model(model, to_file="model.png", show_shapes=False, show_dtype=False,
               show_layer_names=False, rankdir="TB", expand_nested=False, dpi=200,
               show_layer_activations=False, show_trainable=False, **kwargs):
    """Draw the model to ``to_file`` (the format from its extension: png,
    svg, pdf, ...) with pydot and Graphviz's dot program.  A ``.dot`` file
    is written as DOT text without either."""
    if kwargs:
        raise TypeError(f"plot_model: unexpected keyword argument(s) {sorted(kwargs)}")
    path = os.fspath(to_file)
    ext = os.path.splitext(path)[1][1:].lower() or "png"
    if ext in ("dot", "gv"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(dot_source(model, show_shapes, show_dtype, show_layer_names, rankdir,
                               expand_nested, dpi, show_layer_activations, show_trainable))
        return None
    dot = model_to_dot(model, show_shapes, show_dtype, show_layer_names, rankdir, expand_nested,
                       dpi, False, show_layer_activations, show_trainable)
    if shutil.which("dot") is None:
        raise ImportError(f"plot_model needs Graphviz's dot program on PATH: {_INSTALL}")
    dot.write(path, format=ext)
    return None
