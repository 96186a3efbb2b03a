"""Every registered backend implements its role's Protocol, signatures included."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from backends import base, registry
from backends.export import EXPORTS
from backends.vmm import VMMS

CASES: list[tuple[type[Any], type[Any]]] = [
    *((base.StorageBackend, cls) for cls in registry.STORAGE.values()),
    *((base.BlockStore, cls) for cls in registry.BLOCK_STORES.values()),
    (base.BatchDeletingBlockStore, registry.BLOCK_STORES["local"]),
    (base.BatchPuttingBlockStore, registry.BLOCK_STORES["local"]),
    *((base.VmmBackend, cls) for cls in VMMS.values()),
    *((base.ExportBackend, cls) for cls in EXPORTS.values()),
]


def _protocol_members(protocol: type[Any]) -> dict[str, Any]:
    return {
        name: member
        for name, member in vars(protocol).items()
        if not name.startswith("_") and (callable(member) or isinstance(member, property))
    }


@pytest.mark.parametrize(
    ("protocol", "cls"), CASES, ids=[f"{p.__name__}-{c.__name__}" for p, c in CASES]
)
def test_backend_implements_protocol_with_matching_signatures(
    protocol: type[Any], cls: type[Any]
) -> None:
    for name, member in _protocol_members(protocol).items():
        implementation = getattr(cls, name, None)
        assert implementation is not None, f"{cls.__name__} lacks {name}"
        if isinstance(member, property):
            continue
        assert inspect.iscoroutinefunction(implementation) == inspect.iscoroutinefunction(member), (
            f"{cls.__name__}.{name}: async-ness differs from {protocol.__name__}"
        )
        expected = list(inspect.signature(member).parameters.values())
        actual = list(inspect.signature(implementation).parameters.values())
        assert [(p.name, p.kind) for p in actual] == [(p.name, p.kind) for p in expected], (
            f"{cls.__name__}.{name}{inspect.signature(implementation)} does not match "
            f"{protocol.__name__}.{name}{inspect.signature(member)}"
        )
