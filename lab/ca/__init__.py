"""The lab's certificate authority: root, SPIFFE leaves, the issued registry, node authorization."""

from lab.ca.authority import DEFAULT_TTL, LabCA, renewal_time
from lab.ca.authorizer import NodeAuthorizer
from lab.ca.registry import IssuedCert, IssuedRegistry

__all__ = ["DEFAULT_TTL", "IssuedCert", "IssuedRegistry", "LabCA", "NodeAuthorizer", "renewal_time"]
