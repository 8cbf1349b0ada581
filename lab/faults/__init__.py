"""Live faults (DESIGN §7): the catalogue of kinds, the model and store, targets, and the provider/CA actions."""

from lab.faults.catalogue import KINDS, FaultError, help_text
from lab.faults.store import Fault, FaultNotFound, FaultStore, new_fault

__all__ = ["KINDS", "Fault", "FaultError", "FaultNotFound", "FaultStore", "help_text", "new_fault"]
