"""The public plugin API: everything a router or dispatcher plugin needs."""

from moelight.dispatch import Dispatcher, DispatchStats, ExpertParallelContext
from moelight.errors import ConfigError, MoelightError
from moelight.experts import ExpertWeights
from moelight.layer_context import LayerContext
from moelight.registry import dispatchers, routers
from moelight.routing import PluginParams, Router, Routing

__all__ = [
    "ConfigError",
    "DispatchStats",
    "Dispatcher",
    "ExpertParallelContext",
    "ExpertWeights",
    "LayerContext",
    "MoelightError",
    "PluginParams",
    "Router",
    "Routing",
    "dispatchers",
    "routers",
]
