"""One error hierarchy for the host side; the CLI turns these into messages, never tracebacks."""

from __future__ import annotations


class LabError(Exception):
    """Base of every error meshlab reports to a user."""

    exit_code = 1


class TopologyError(LabError):
    """A topology file is malformed or inconsistent; carries every problem found."""

    exit_code = 2

    def __init__(self, problems: list["Problem"]) -> None:  # noqa: F821 - defined in lab.topology.loader
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ConfigError(LabError):
    """Mesh config (Istio YAML) is malformed or unsupported; carries every problem found."""

    exit_code = 2

    def __init__(self, problems: list["Problem"]) -> None:  # noqa: F821 - defined in lab.yamlsource
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ProvisionError(LabError):
    """A node or process could not be created, started or reached."""


class ProviderNotSupported(LabError):
    """The provider cannot do what was asked (for example a partition on a provider without one)."""


class LabNotFound(LabError):
    """No lab of that name exists under MESHLAB_HOME."""

    exit_code = 3


class CertificateRefused(LabError):
    """The CA refused to issue a certificate (bad CSR, wrong identity, node not authorized)."""
