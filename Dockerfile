# gradalign server for GPU hosts: the gRPC service with the vLLM backend.
#
#   docker build -t gradalign .
#   docker run --gpus all -p 50051:50051 -p 9464:9464 --stop-timeout 40 \
#       -v $PWD/models:/models:ro -v $PWD/config.toml:/config/gradalign.toml:ro -v gradalign-data:/data \
#       [-e GRADALIGN_TOKEN=...] gradalign
#
# The config names models by path under /models (e.g. model = "/models/Qwen3-0.6B", backend = "vllm");
# weights are mounted, never baked in. Trees, records and reports persist in /data/gradalign.sqlite.
# Clients: `pip install gradalign` (grpcio + protobuf only), then `gradalign vet --server HOST:50051 ...`.
#
# Several GPUs, or a Ray cluster: append `--executor ray --ray-workers N --ray-gpus-per-worker 1` to the
# run command (one engine actor per GPU, each with its models resident; README "Scaling out"); add
# `--ray-address HEAD:6379` to join an existing cluster instead of starting one in the container.

# The vLLM image brings CUDA, a matching torch and vLLM; gradalign must not replace that torch.
FROM vllm/vllm-openai:v0.32.0

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADALIGN_CACHE=/data/cache \
    HF_HOME=/data/hf

WORKDIR /opt/gradalign
COPY pyproject.toml README.md ./
COPY gradalign_engine ./gradalign_engine
COPY server ./server
COPY client ./client

# Dependencies come from pyproject.toml (base + engine + server + ray extras) minus the pinned CPU torch and
# transformers, so the image keeps vLLM's own builds of both; then gradalign itself without dependencies.
RUN python3 -c "import tomllib, subprocess, sys; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extra = p['optional-dependencies']; deps = p['dependencies'] + [d for d in extra['engine'] + extra['server'] + extra['ray'] if not d.startswith(('torch', 'transformers', 'gradalign'))]; subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--no-cache-dir', *deps])" \
 && python3 -m pip install --no-cache-dir --no-deps . \
 && gradalign --help > /dev/null \
 && python3 -c "import gradalign_server, vllm, torch; print('gradalign server ready; torch', torch.__version__, 'vllm', vllm.__version__)"

VOLUME ["/models", "/data"]
EXPOSE 50051 9464

# grpc.health.v1 through the light client: SERVING only once the models are loaded (allow time for that).
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD gradalign health --server 127.0.0.1:50051 --timeout 5 || exit 1

# SIGTERM (docker stop): health turns NOT_SERVING, in-flight calls get --grace seconds, then the
# engine is closed. Keep `docker stop -t` / --stop-timeout above the grace period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gradalign", "serve", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9464", "--db", "/data/gradalign.sqlite", "--grace", "30"]
CMD ["--config", "/config/gradalign.toml"]
