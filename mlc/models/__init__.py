"""The five variants behind one interface: ``create_model(name, classes=..., backbone=..., ...)``."""
from mlc.models.backbones import Backbone, BackboneError, create_backbone
from mlc.models.base import CheckpointError, ModelOutput, MultiLabelModel, load_model
from mlc.models.registry import create_model, get_model_class, list_models, reference_model, register_model, unregister_model

# importing the variants registers them
# registration order is the order every table and plot lists them in
from mlc.models import baseline, ggnn, ssgrl, mlgcn  # noqa: E402,F401  isort:skip

__all__ = [
    "Backbone", "BackboneError", "CheckpointError", "ModelOutput", "MultiLabelModel",
    "create_backbone", "create_model", "get_model_class", "list_models", "load_model", "reference_model",
    "register_model", "unregister_model",
]
