"""The lab's certificate authority: root, SPIFFE leaves, the issued registry, node authorization."""

from lab.ca.authority import DEFAULT_TTL, LabCA, renewal_time
from lab.ca.authorizer import NodeAuthorizer
from lab.ca.foreign import foreign_ca, remove_foreign_ca
from lab.ca.registry import IssuedCert, IssuedRegistry

__all__ = ["DEFAULT_TTL", "IssuedCert", "IssuedRegistry", "LabCA", "NodeAuthorizer", "foreign_ca", "remove_foreign_ca",
           "renewal_time"]
