# FlexBin image for the api, worker and migrate services of docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
# PyPI's torch wheel for linux/x86_64 is the CUDA build: workers use the GPU when one is reserved.
RUN pip install -r requirements.txt
COPY core core
COPY api api
COPY worker worker
COPY migrations migrations
COPY alembic.ini Makefile ./
RUN useradd --create-home flexbin && chown -R flexbin /app
USER flexbin
EXPOSE 8000
CMD ["python", "-m", "api.run"]
