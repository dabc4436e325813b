"""The shell every service shares: settings, Kafka clients, metrics, logging, model store."""
