"""The adapter bank: a crash-safe, concurrent HDF5 store of per-task parameters (torch-free; see `torch_bridge`
for the bridge to TunedModel)."""

from adapterbank.bank.store import FORMAT_VERSION, BackboneIdentity, Bank, TaskRecord

__all__ = ["FORMAT_VERSION", "BackboneIdentity", "Bank", "TaskRecord"]
