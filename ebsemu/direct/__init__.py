"""The EBS direct API (service `ebs`, rest-json): snapshots read and written block by block."""
