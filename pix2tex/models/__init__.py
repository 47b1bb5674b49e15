"""The pix2tex network: image encoders, the LaTeX decoder and the model that joins them."""

from pix2tex.models.transformer import Generation, TextDecoder
from pix2tex.models.utils import Model, ModelOutput, count_parameters, get_model, model_summary

__all__ = ["Generation", "Model", "ModelOutput", "TextDecoder", "count_parameters", "get_model", "model_summary"]
