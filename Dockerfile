# One image recipe, two targets:
#   services: inference, features, alerts, simulator and the CLI; ONNX Runtime, faust,
#             Redis, no torch (small)
#   trainer:  torch for training and export, and the CLI
# tests/unit/test_extras.py checks that each install brings every package its commands import.
# Build: docker build --target services -t driftline:services .
#        docker build --target trainer  -t driftline:trainer .
FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY schemas ./schemas
COPY services ./services
COPY trainer ./trainer
COPY driftline ./driftline
RUN useradd --uid 10001 --create-home driftline \
    && mkdir -p /artifacts /var/lib/driftline/features \
    && chown driftline /artifacts /var/lib/driftline /var/lib/driftline/features

FROM base AS services
RUN pip install -c constraints.txt '.[inference,features]'
USER driftline
ENTRYPOINT ["driftline"]
CMD ["--help"]

FROM base AS trainer
RUN pip install -c constraints.txt '.[trainer]'
USER driftline
ENTRYPOINT ["driftline"]
CMD ["train", "--help"]
