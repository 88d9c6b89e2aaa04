"""Metric names accepted by compile(metrics=[...]).

The accuracy is counted inside the loss kernel (argmax of the output against
the label: sparse/categorical; output > 0.5 against target > 0.5: binary),
so it costs no extra pass.  "accuracy"/"acc" mean the accuracy that fits
the loss, as in Keras."""


class Metric:
    def __init__(self, name):
        self.name = name


def SparseCategoricalAccuracy(name="sparse_categorical_accuracy"):
    return Metric(name)


def CategoricalAccuracy(name="categorical_accuracy"):
    return Metric(name)


def BinaryAccuracy(name="binary_accuracy"):
    return Metric(name)


def Accuracy(name="accuracy"):
    return Metric(name)
