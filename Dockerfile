# The platform's one image: the API (uvicorn), the standalone ingest workers, the Chroma server
# and the migrations all run from it (docker-compose.yml), so the Chroma server is always the
# version of the client the app speaks to. CPU-only PyTorch.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# DejaVu Sans: invoice PDFs for customers named in any script.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
# The compiled requirements, every file checked against its hash. torch is pinned to the CPU
# build (2.13.0+cpu), which only PyTorch's CPU index serves; PyPI's torch is the CUDA build.
RUN pip install --require-hashes -r requirements.txt \
    --extra-index-url https://download.pytorch.org/whl/cpu

COPY alembic.ini ./
COPY alembic ./alembic
COPY app ./app

RUN useradd --system --uid 10001 --create-home app \
    && mkdir -p /data/uploads /data/chroma /data/embedding_cache \
    && chown -R app:app /data
USER app

ENV UPLOAD_DIR=/data/uploads \
    EMBEDDING_CACHE_DIR=/data/embedding_cache
# The default embedding backend (OpenVINO int8) of the packaged model, built once into the image
# rather than by every container at its first start; another EMBEDDING_MODEL builds its own
# there at first load (or run `python -m app.cli embeddings build` against it).
RUN EMBEDDING_MODEL=minilm python -m app.cli embeddings build
EXPOSE 8000
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
