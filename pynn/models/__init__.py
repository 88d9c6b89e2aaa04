"""keras.models: Model (functional API), Sequential, load_model, clone_model.

- functional.py: the Model class (the graph, the flat weight buffers, running
  the plan, a model as a layer of another);
- graph.py: map_graph (Keras' layer order) and the execution Plan;
- training.py: compile / fit / evaluate / predict (one engine for all models);
- saving.py: files, checkpoints and resume, load_model, clone_model;
- sequential.py: Sequential (a chain); summary.py: the summary table.
"""
from .functional import Model
from .saving import clone_model, load_model
from .sequential import Sequential

__all__ = ["Model", "Sequential", "load_model", "clone_model"]
