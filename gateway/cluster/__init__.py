"""Several gateway instances joined by a bus (docs/scaling.md): the cluster room and the fleet map."""

from gateway.cluster.fleet import FleetMap
from gateway.cluster.room import DASH, PRESENCE, REGISTRY, TAKEOVER, Cluster

__all__ = ["DASH", "PRESENCE", "REGISTRY", "TAKEOVER", "Cluster", "FleetMap"]
