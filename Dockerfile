# crosslayer on a GPU machine (Gemma 2 2B + Gemma Scope): see docs/gpu.md.
#   docker build -t crosslayer .
#   docker run --gpus all -v "$PWD/runs:/work/runs" -v "$HOME/.cache/huggingface:/root/.cache/huggingface" \
#       crosslayer run --model google/gemma-2-2b --sae gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/crosslayer
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir .

WORKDIR /work
ENTRYPOINT ["crosslayer"]
CMD ["--help"]
