"""The wire protocols: EC2 Query parsing and XML responses (see ebsemu.api.codec)."""
