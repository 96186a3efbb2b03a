"""Backends: what to do on a host (storage, export, VMM, snapshot block store)."""
