"""Flax Linen score networks: NCSN++/DDPM++ (``NCSNpp``), ``DDPM``, ``NCSNv2`` and ``MLPScoreNet``;
time-dependent classifiers for guidance (``NoiseConditionalWideResNet``, ``ConvClassifier``).

Every network is called as ``module.apply(variables, x, time_labels, class_labels=None, train=False)``
and declares ``prediction``, ``scale_by_sigma`` and ``continuous``, so
``network_score_model(module, sde)`` (or :func:`diffjax.score.score_fn_from_module`) turns it into a
score model with no further arguments. ``get_model(name, **options)`` builds one by name or preset.
"""

from diffjax.models import layers, resample
from diffjax.models.classifier import ConvClassifier, NoiseConditionalWideResNet, classifier_logits_model
from diffjax.models.ddpm import DDPM
from diffjax.models.layers import GaussianFourierProjection, sinusoidal_embedding
from diffjax.models.mlp import MLPFlowMap, MLPScoreNet
from diffjax.models.ncsnpp import NCSNpp
from diffjax.models.ncsnv2 import NCSNv2
from diffjax.models.registry import NETWORKS, PRESETS, get_model, init_params, network_options, network_score_model

__all__ = [
    "ConvClassifier",
    "DDPM",
    "GaussianFourierProjection",
    "MLPFlowMap",
    "MLPScoreNet",
    "NCSNpp",
    "NCSNv2",
    "NETWORKS",
    "NoiseConditionalWideResNet",
    "PRESETS",
    "get_model",
    "classifier_logits_model",
    "init_params",
    "layers",
    "network_options",
    "network_score_model",
    "resample",
    "sinusoidal_embedding",
]
