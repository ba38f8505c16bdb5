"""The per-partition pipeline: records in, outputs and state changes out. No Faust, no Kafka, no I/O.

``records`` holds the shapes the core and its adapters exchange, ``processor`` applies one record to
the state (the former agents' handlers), ``aligner`` decides when a held request may be decided, and
``pipeline`` puts them together for batches of fetched records.
"""
