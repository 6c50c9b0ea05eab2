"""LoRA adapters: which exist and who may use them (registry), whether one fits the base model (validation),
how tenants publish them (archive, uploads).

    registry.py    Adapter, AdapterRegistry: shipped and published adapters, the one access rule, engine ids,
                   quarantine of what the engine refused
    validation.py  every file of an adapter folder, typed and bounded, each tensor against the base model
    archive.py     a .tar.gz unpacked as a metered stream, stopping at the first bound
    uploads.py     AdapterPublisher: POST /adapters, versions, rollback, deletion, install on this replica
    residency.py   AdapterResidency: a published version's files fetched on first use, a disk cache bounded in bytes
"""

from service.adapters.registry import BASE, Adapter, AdapterRegistry, read_adapter
from service.adapters.residency import AdapterResidency, DiskCache
from service.adapters.uploads import AdapterPublisher, pack_adapter
from service.adapters.validation import AdapterInvalid, BaseShapes

__all__ = ["BASE", "Adapter", "AdapterInvalid", "AdapterPublisher", "AdapterRegistry", "AdapterResidency",
           "BaseShapes", "DiskCache", "pack_adapter", "read_adapter"]
