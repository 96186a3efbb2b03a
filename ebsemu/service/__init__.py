"""The service core: validation, state machines, jobs. Knows nothing of XML or HTTP."""
