"""Pure decision logic: no Kafka, faust, Redis, ONNX Runtime or torch imports (lint-enforced)."""
