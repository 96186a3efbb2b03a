"""ebsemu: a self-hosted, EBS-compatible block storage service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ebsemu")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
