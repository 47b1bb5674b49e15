"""The seed's module name for the model: :mod:`pix2tex.models.model` holds it now; this keeps
``from pix2tex.models.utils import Model, get_model`` working."""

from pix2tex.models.model import Model, ModelOutput, count_parameters, get_model, model_summary

__all__ = ["Model", "ModelOutput", "count_parameters", "get_model", "model_summary"]
