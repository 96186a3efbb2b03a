"""Benchmarks of ebsemu side by side with moto_server: control plane through boto3 and a raw
signed HTTP client, and ebsemu's data path against the machine's own disk throughput."""
