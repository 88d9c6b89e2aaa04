"""ONNX export: ``model.export("m.onnx", format="onnx")`` and
``pynn export-onnx MODEL_FILE OUT.onnx``.

The model's graph (nested models inlined) becomes one ONNX graph of
standard ops, opset 17, in the model's dtype, with a dynamic batch
dimension ("batch") and the model's NHWC layout; inputs and outputs keep
the names of the model's input and output layers.  Inference semantics:
Dropout and the noise layers are identities, BatchNormalization uses its
moving statistics.  The layer mapping is in _onnx_layers.py; the written
model passes onnx.checker.
"""
import os

INSTALL_HINT = ("ONNX export needs the onnx package: pip install onnx (or the [onnx] extra: "
                "pip install 'nnkernels[onnx]', which also brings onnxruntime to run the file)")


def _import_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return onnx


def _emit_plan(b, model, input_names, prefix):
    """Translate ``model``'s graph with its inputs bound to ``input_names``;
    returns its output names."""
    from . import _onnx_layers
    names = {id(t): n for t, n in zip(model._inputs, input_names)}
    for node in model._plan.nodes:
        layer = node.layer
        ins = [names[id(t)] for t in node.input_tensors]
        shapes = [tuple(t.shape) for t in node.input_tensors]
        h = f"{prefix}{layer.name}"
        if getattr(layer, "is_model", False):
            layer._ensure_graph()
            outs = _emit_plan(b, layer, ins, prefix=f"{h}/")
        else:
            outs = _onnx_layers.convert(b, layer, ins, shapes, h)
        if len(outs) != len(node.output_tensors):
            raise RuntimeError(f"ONNX export: layer {layer.name!r} gave {len(outs)} outputs, "
                               f"the graph has {len(node.output_tensors)}")
        for t, o in zip(node.output_tensors, outs):
            names[id(t)] = o
    return [names[id(t)] for t in model._outputs]


def to_onnx(model):
    """The model as an onnx.ModelProto (checked by onnx.checker)."""
    onnx = _import_onnx()
    from ._onnx_builder import Builder
    model._ensure_graph()
    model._ensure_allocated()
    b = Builder(model._dtype)
    in_names = [b.fresh(n) for n in model.input_names]
    # the outputs' names (the output layers') are reserved before any other
    out_names = [b.fresh(n if n not in in_names else f"{n}_output") for n in model.output_names]
    outs = _emit_plan(b, model, in_names, prefix="")
    for name, got in zip(out_names, outs):
        b.nodes.append(onnx.helper.make_node("Identity", [got], [name], name=b.fresh(f"{name}/out")))
    inputs = [b.value_info(n, t.shape) for n, t in zip(in_names, model._inputs)]
    outputs = [b.value_info(n, t.shape) for n, t in zip(out_names, model._outputs)]
    proto = b.model(model.name, inputs, outputs)
    onnx.checker.check_model(proto)
    return proto


def export_onnx(model, filepath, verbose=False):
    """Write ``model`` to ``filepath`` as an ONNX file; returns the path."""
    onnx = _import_onnx()
    proto = to_onnx(model)
    filepath = os.fspath(filepath)
    from .. import io
    data = proto.SerializeToString()
    io.atomic_write(filepath, lambda f: f.write(data))
    if verbose:
        print(f"Saved the ONNX model (opset {proto.opset_import[0].version}) to {filepath}")
    return filepath


FORMATS = ("onnx",)


def export(model, filepath, format="tf_saved_model", verbose=True, input_signature=None,
           **kwargs):
    """Keras 3's Model.export: format="onnx" is supported."""
    if format != "onnx":
        raise NotImplementedError(
            f"Model.export(format={format!r}) is not supported: pynn exports format='onnx' "
            "(model.export('model.onnx', format='onnx'))")
    if input_signature is not None:
        raise NotImplementedError("Model.export(input_signature=...) is not supported: the ONNX "
                                  "inputs are the model's, with a dynamic batch dimension")
    if kwargs:
        raise TypeError(f"Model.export: unexpected argument(s) {sorted(kwargs)}")
    return export_onnx(model, filepath, verbose=bool(verbose))
