"""driftline's contracts: Avro schemas, the topic table, typed messages and their codecs."""
