"""driftline: streaming inference with online retraining over Kafka, ONNX Runtime, Redis and torch.

The one import package. In the repository its members are links to the top-level folders the
design fixes (schemas/, services/, trainer/); the wheel carries them as real folders.
"""
