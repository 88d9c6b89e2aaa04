"""keras.models equivalents."""
from .model import Sequential, load_model  # noqa: F401
