"""The pix2tex network: image encoders, the LaTeX decoder and the model that joins them."""

import warnings

with warnings.catch_warnings():
    # x-transformers decorates a helper with torch.jit.script when it is imported, which torch now
    # deprecates with a FutureWarning that users of pix2tex can do nothing about.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    import x_transformers  # noqa: F401

from pix2tex.models.model import Model, ModelOutput, count_parameters, get_model, model_summary
from pix2tex.models.transformer import Generation, TextDecoder

__all__ = ["Generation", "Model", "ModelOutput", "TextDecoder", "count_parameters", "get_model", "model_summary"]
