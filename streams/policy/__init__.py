"""The gate's rules as pure, synchronous functions: no Faust, Kafka, logging or I/O here.

The clock is always a parameter (``now``), so every rule is testable at any instant.
"""
