"""Throwaway CAs the lab does not trust, for the `foreign_ca` fault.

A foreign CA is an ordinary `LabCA` in a folder of its own (`<lab>/ca/foreign/<fault id>/`),
with a root named so that nobody mistakes it for the lab's. Its root is in no trust bundle:
a workload holding one of its leaves is refused by every peer, and trusts only its own
CA in return, as a workload from another mesh would. The folder goes with the fault.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lab.ca.authority import LabCA


def foreign_dir(ca_dir: Path, fault_id: str) -> Path:
    return ca_dir / "foreign" / fault_id


def foreign_ca(ca_dir: Path, fault_id: str, trust_domain: str) -> LabCA:
    """The throwaway CA of one `foreign_ca` fault (made on first use, kept for a control-plane restart)."""
    return LabCA.load_or_create(foreign_dir(ca_dir, fault_id), trust_domain,
                                common_name=f"foreign root {fault_id} (not trusted by the lab)")


def remove_foreign_ca(ca_dir: Path, fault_id: str) -> None:
    shutil.rmtree(foreign_dir(ca_dir, fault_id), ignore_errors=True)
