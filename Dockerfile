# bioagents: one image for every process (serve, worker, migrate). See docs/queue-mode.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=3000 \
    DATABASE_URL=sqlite:////data/bioagents.db

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bioagents ./bioagents
COPY templates ./templates
COPY static ./static
# A regular install: the wheel carries the templates and static files inside the package.
RUN pip install ".[postgres]" \
    && rm -rf /src \
    && useradd --create-home --uid 10001 bioagents \
    && mkdir -p /data \
    && chown bioagents /data

WORKDIR /home/bioagents
USER bioagents
VOLUME ["/data"]
EXPOSE 3000
CMD ["bioagents", "serve"]
