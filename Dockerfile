# bioagents: one image for every process (serve, worker, migrate). See docs/queue-mode.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=3000 \
    DATABASE_URL=sqlite:////data/bioagents.db

WORKDIR /app
COPY pyproject.toml README.md bioagents.py ./
COPY bioagents ./bioagents
COPY templates ./templates
COPY static ./static
# Editable, so the templates and static files next to the package are the ones served.
RUN pip install -e ".[postgres]" \
    && useradd --create-home --uid 10001 bioagents \
    && mkdir -p /data \
    && chown bioagents /data

USER bioagents
VOLUME ["/data"]
EXPOSE 3000
CMD ["python", "bioagents.py", "serve"]
