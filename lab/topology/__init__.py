"""Topology files: the lab-native YAML, its model and its validation."""

from lab.topology.model import Namespace, Node, Run, Service, ServicePort, Topology, Workload

__all__ = ["Namespace", "Node", "Run", "Service", "ServicePort", "Topology", "Workload"]
