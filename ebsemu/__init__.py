"""ebsemu: a self-hosted, EBS-compatible block storage service."""

__version__ = "0.1.0"
