# The job's image, one for both places it runs (docs/container.md):
#   a GPU box:  docker run --gpus all -v "$PWD/runs:/runs" IMAGE train --config llama-3.2-3b-qlora output.uri=/runs
#   SageMaker:  the platform runs `docker run IMAGE train` (bring your own image; see `python -m launch image push`)
#   serving:    docker run --gpus all -p 127.0.0.1:8080:8080 -v "$PWD/runs/RUN:/opt/ml/model:ro" IMAGE serve
#               (SageMaker endpoints and Batch Transform run `docker run IMAGE serve` with the run at /opt/ml/model)
# Build with `python -m launch image build`.

# The official PyTorch CUDA *runtime* image: no compilers (several GB smaller than -devel), torch 2.8 meets
# transformers 5's torch>=2.6, and CUDA 12.8 is one of the builds bitsandbytes 0.50 ships 4-bit kernels for
# (libbitsandbytes_cuda128: T4 and A10G through H100 and Blackwell). Its CUDA torch is kept as is. The DLC of
# `launch sagemaker --image dlc` has torch 2.9.0 (CUDA 13.0) with the same pins otherwise: docs/sagemaker.md#versions.
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

FROM ${BASE_IMAGE} AS python
# Bases without Python (the plain Debian one the CPU tests build on) get the distribution's; the PyTorch images
# have their own and skip this.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi


FROM python AS build
# torch to install when the base has none, e.g. TORCH=torch==2.13.0 with a CPU wheel in PIP_FIND_LINKS. Left
# empty for CUDA bases: their torch is the one to keep.
ARG TORCH=""
# pip reads these as environment variables during RUN (a CA bundle, a local wheel folder). They live in this
# build stage only: the final image's history never shows them.
ARG PIP_CERT
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# The venv sees the base's site-packages, so its torch (and CUDA libraries) serve the job; everything else is
# pinned in the venv. The constraint file holds torch at the version found, so no requirement can replace it.
RUN python3 -m venv --system-site-packages /opt/venv \
    && /opt/venv/bin/pip install pip==26.3 \
    && if [ -n "$TORCH" ] && ! /opt/venv/bin/python -c "import torch" 2>/dev/null; then \
         /opt/venv/bin/pip install "$TORCH"; \
       fi \
    && /opt/venv/bin/python -c "import torch" 2>/dev/null \
       || { echo "the base image has no torch: use a PyTorch base or pass --build-arg TORCH=torch==VERSION" >&2; exit 1; } \
    && /opt/venv/bin/python -c "import torch; print(f'torch=={torch.__version__}')" > /opt/torch-constraint.txt

COPY container/requirements.txt /src/container/requirements.txt
RUN /opt/venv/bin/pip install -c /opt/torch-constraint.txt -r /src/container/requirements.txt

COPY pyproject.toml /src/
COPY job /src/job
COPY launch /src/launch
RUN /opt/venv/bin/pip install --no-deps /src \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import job.cli"


FROM python
LABEL org.opencontainers.image.title="dialogsum-qlora" \
      org.opencontainers.image.description="QLoRA fine-tuning and ROUGE evaluation for dialogue summarization"
COPY --from=build /opt/venv /opt/venv
COPY container/entrypoint.py /opt/dialogsum/entrypoint.py

# HF_HOME is where models and data sets are cached: mount a volume there to download each model once. It, /runs
# and the working folder are writable by any user, so `docker run --user "$(id -u):$(id -g)"` works with or
# without mounts.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /workspace
RUN mkdir -p /cache/huggingface /runs && chmod 1777 /cache/huggingface /runs /workspace

# Runs as root: SageMaker mounts /opt/ml for root and non-root users have been denied writing there. Local runs
# pass --user. Exec form: the engine's SIGTERM reaches Python directly (see container/entrypoint.py).
# `serve` listens on 8080 (SageMaker's inference contract, docs/serving.md).
EXPOSE 8080
ENTRYPOINT ["/opt/venv/bin/python", "/opt/dialogsum/entrypoint.py"]
CMD ["--help"]
