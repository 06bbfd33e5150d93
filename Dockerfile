# syntax=docker/dockerfile:1.7
# Two targets:
#   api    - slim CPU image: FastAPI + the torch-free library modules (never imports torch)
#   worker - CUDA-capable image: torch with CUDA, runs `sanitizer worker`
#
#   docker build --target api    -t sanitizer-api .
#   docker build --target worker -t sanitizer-worker .

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------- api
FROM python:${PYTHON_VERSION}-slim AS api
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SANITIZER_DATA_DIR=/data
WORKDIR /srv
COPY pyproject.toml README.md* ./
COPY sanitizer ./sanitizer
COPY sanitizer_cli ./sanitizer_cli
COPY sanitizer_client ./sanitizer_client
COPY jobstore ./jobstore
COPY app ./app
COPY workers ./workers
# the API never imports torch, but the package depends on it: install the small CPU wheel
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch<=2.14.1" \
 && pip install . \
 && useradd --uid 10001 --create-home sanitizer && mkdir -p /data && chown sanitizer /data
USER sanitizer
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
CMD ["sh", "-c", "sanitizer db upgrade && exec uvicorn app.main:app --host 0.0.0.0 --port 8000 --proxy-headers"]

# ---------------------------------------------------------------- worker
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 AS worker
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 SANITIZER_DATA_DIR=/data SANITIZER_MODEL_STORE=/models
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv
COPY pyproject.toml README.md* ./
COPY sanitizer ./sanitizer
COPY sanitizer_cli ./sanitizer_cli
COPY sanitizer_client ./sanitizer_client
COPY jobstore ./jobstore
COPY app ./app
COPY workers ./workers
RUN pip install --index-url https://download.pytorch.org/whl/cu124 "torch<=2.14.1" \
 && pip install . \
 && useradd --uid 10001 --create-home sanitizer && mkdir -p /data /models \
 && chown sanitizer /data /models
USER sanitizer
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD celery -A workers.celery_app:celery_app inspect ping -d "worker-1@$(hostname)" --timeout 5 >/dev/null || exit 1
CMD ["sanitizer", "worker", "--concurrency", "1"]
