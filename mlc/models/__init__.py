"""The five variants behind one interface: ``create_model(name, classes=..., backbone=..., ...)``."""
from mlc.models.backbones import Backbone, BackboneError, create_backbone
from mlc.models.base import CheckpointError, ModelOutput, MultiLabelModel, load_model
from mlc.models.registry import create_model, list_models, register_model

# importing the variants registers them
from mlc.models import baseline, ggnn, mlgcn, ssgrl  # noqa: E402,F401  isort:skip

__all__ = [
    "Backbone", "BackboneError", "CheckpointError", "ModelOutput", "MultiLabelModel",
    "create_backbone", "create_model", "list_models", "load_model", "register_model",
]
