"""The alerting consumer: faulty predictions in, debounced alerts (and webhook calls) out."""
