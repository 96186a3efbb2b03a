"""Metadata store: volumes, snapshots, tags, snapshot manifests, jobs."""
