# One image for the API and the worker. On x86_64 the pinned torch wheel from PyPI is the CUDA build, so the
# same image runs workers on GPUs (docker-compose.yml reserves one per worker).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The heavy, rarely changing layer first.
RUN pip install torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY ssl_core ./ssl_core
COPY migrations ./migrations
COPY jaga ./jaga
# Optional extras, e.g. --build-arg EXTRAS="[tensorboard,mlflow]" for jobs' experiment-tracking integrations.
ARG EXTRAS=""
RUN pip install ".${EXTRAS}"

RUN useradd --create-home --uid 1000 jaga && mkdir -p /data /artifacts && chown jaga /data /artifacts
USER jaga
ENV JAGA_DATA_DIR=/data JAGA_ARTIFACT_ROOT=/artifacts
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["jaga", "serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000"]
