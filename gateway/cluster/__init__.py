"""Several gateway instances joined by a bus (docs/scaling.md): the cluster room and the fleet map."""

from gateway.cluster.cluster import DASH, PRESENCE, REGISTRY, TAKEOVER, Cluster
from gateway.cluster.fleet import FleetMap

__all__ = ["DASH", "PRESENCE", "REGISTRY", "TAKEOVER", "Cluster", "FleetMap"]
