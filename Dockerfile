# GPU image: CUDA runtime, adapterbank with its GPU dependencies (torch CUDA build, onnxruntime-gpu, deepspeed).
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/adapterbank
COPY pyproject.toml README.md ./
COPY adapterbank ./adapterbank
COPY cli ./cli
COPY recipes ./recipes
RUN pip install --upgrade pip && pip install '.[weights]'

WORKDIR /work
ENTRYPOINT ["adapterbank"]
CMD ["--help"]
