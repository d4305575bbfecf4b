# sparse-nas: one image for the API server, the migrations and the Ray head and worker nodes
# (every node of a Ray cluster must run the same Python, Ray and project code).
#
#   docker build -t sparse-nas .
#   docker run -p 8000:8000 sparse-nas            # SQLite and a local Ray inside the container
#   docker compose up                              # PostgreSQL and a Ray cluster: docker-compose.yml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch first, from the CPU index: from PyPI, `torch` is a multi-GB CUDA build. The project
# pins the same release (constraints.txt), which this CPU build (2.13.0+cpu) satisfies, so the
# next step installs no other torch. Its own layer, so code changes do not download it again.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# The project and the rest of its dependencies (.dockerignore keeps tests, data and caches out).
COPY . /tmp/src
RUN pip install -c /tmp/src/constraints.txt /tmp/src \
    && rm -rf /tmp/src \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"

# An unprivileged user owns the state folder; a named volume mounted there inherits the owner.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/nas nas \
    && mkdir -p /var/lib/nas /data \
    && chown nas:nas /var/lib/nas
USER nas
WORKDIR /home/nas
ENV NAS_HOME=/var/lib/nas

EXPOSE 8000
CMD ["nas", "serve", "--host", "0.0.0.0"]
