# One image for the API and the worker, in two variants chosen by TORCH_INDEX_URL:
# - CUDA (the default): PyPI's torch 2.14.1 wheel for x86_64, built with CUDA 13.0 and kernels for compute
#   capability 7.5 to 12.0 (T4, A10, A100, L4, L40S, H100, H200, B200; RTX 20xx and newer). The host needs an NVIDIA
#   driver of the 580 series or newer and the NVIDIA Container Toolkit; docker-compose.yml reserves a GPU per worker.
# - CPU only: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (no CUDA libraries; several GB less).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The heavy, rarely changing layer first: PyTorch at the exact build of constraints.txt.
COPY constraints.txt ./
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN pip install -c constraints.txt --index-url "${TORCH_INDEX_URL}" torch torchvision

COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY ssl_core ./ssl_core
COPY migrations ./migrations
COPY jaga ./jaga
# Optional extras, e.g. --build-arg EXTRAS="[tensorboard,mlflow]" for jobs' experiment-tracking integrations.
ARG EXTRAS=""
RUN pip install -c constraints.txt ".${EXTRAS}"

RUN useradd --create-home --uid 1000 jaga && mkdir -p /data /artifacts && chown jaga /data /artifacts
USER jaga
ENV JAGA_DATA_DIR=/data JAGA_ARTIFACT_ROOT=/artifacts
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["jaga", "serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000"]
