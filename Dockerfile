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

# The locked versions of every dependency (requirements/server.txt, with their hashes) in their
# own layer, so code changes download nothing again. torch is its CPU build (2.13.0+cpu), found
# on PyTorch's CPU wheel index: from PyPI, `torch` is a multi-GB CUDA build.
COPY requirements/server.txt /tmp/requirements.txt
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu --require-hashes -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself (.dockerignore keeps tests, data and caches out).
COPY . /tmp/src
RUN pip install --no-deps /tmp/src \
    && rm -rf /tmp/src \
    && python -c "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"

# An unprivileged user owns the state folder; a named volume mounted there inherits the owner.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/nas nas \
    && mkdir -p /var/lib/nas /data \
    && chown nas:nas /var/lib/nas
USER nas
WORKDIR /home/nas
ENV NAS_HOME=/var/lib/nas

# Plain HTTP on 8000: TLS terminates at a reverse proxy in front of the container (nginx, Caddy,
# a load balancer); publish the port only to that proxy or a private network (README, Security).
EXPOSE 8000
CMD ["nas", "serve", "--host", "0.0.0.0"]
