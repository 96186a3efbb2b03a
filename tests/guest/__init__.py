"""A small Linux guest for tests that need a real operating system inside a QEMU VM."""
