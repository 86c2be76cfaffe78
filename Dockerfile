# Sentiment service image: CPU torch by default.
#   docker build -t sentiment-service .
# CUDA variant (PyPI's Linux x86_64 torch wheels bundle CUDA; a download.pytorch.org/whl/cuXXX index works too):
#   docker build --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t sentiment-service:cuda .
# Training image (adds the [train] extra; see the `train` profile in docker-compose.yml):
#   docker build --build-arg EXTRAS=train -t sentiment-service:train .

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: a venv with torch + the package (non-editable) ------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# Index torch is installed from: CPU wheels by default (small, no CUDA libraries).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Must equal the torch pin in pyproject.toml (tests/test_packaging.py checks it).
ARG TORCH_VERSION=2.13.0
# Optional extras of the package besides grpc (always in: the image serves gRPC on 8001), comma-separated (e.g. "train").
ARG EXTRAS=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, in its own layer, so code changes do not re-download it.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY training ./training
COPY app ./app
COPY scoring ./scoring
# torch==2.13.0 is already satisfied (a local version such as +cpu matches the pin), so pip keeps it.
RUN pip install ".[grpc${EXTRAS:+,${EXTRAS}}]"

# Slim the venv (cheap, and nothing the service runs): torch's C++ test binaries, headers and CMake files (only
# for building extensions), the packages' own test suites (numpy's, sympy's), pip/setuptools (nothing is
# installed at run time), and the bytecode of packages the service never imports (torch.compile's stack and its
# dependencies sympy, networkx, mpmath, jinja2): they stay importable, compiled in memory if ever used. What the
# service does import keeps its bytecode, so start-up does not recompile it (the root filesystem may be read-only).
RUN site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && rm -rf "$site/torch/test" "$site/torch/include" "$site/torch/share/cmake" \
           "$site"/torch/bin/test_* "$site"/torch/bin/*Test "$site"/torch/bin/protoc* \
 && find "$site" -type d -name tests -prune -exec rm -rf {} + \
 && for unused in sympy networkx mpmath jinja2 torch/_inductor torch/_dynamo torch/onnx torch/_export torch/export; do \
        find "$site/$unused" -name __pycache__ -type d -prune -exec rm -rf {} + ; \
    done \
 && pip uninstall -q -y pip setuptools

# ---- runtime: the venv + the shipped model, as a non-root user ---------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# jemalloc instead of glibc malloc (issue 30: RSS creep under long overload), preloaded from one fixed path
# whatever the architecture. `docker run -e LD_PRELOAD= ...` turns it off (then app/allocator.py tunes glibc);
# background_thread returns freed memory to the OS when the service goes idle, not only on the next allocation.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libjemalloc2 \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "/usr/lib/$(uname -m)-linux-gnu/libjemalloc.so.2" /usr/local/lib/libjemalloc.so.2
ENV LD_PRELOAD=/usr/local/lib/libjemalloc.so.2 \
    MALLOC_CONF=background_thread:true

RUN groupadd --system --gid 10001 sentiment \
 && useradd --system --uid 10001 --gid sentiment --home-dir /srv/sentiment --no-create-home --shell /usr/sbin/nologin sentiment

COPY --from=builder /opt/venv /opt/venv

# The default model path models/sentiment.pt resolves from here; the absolute path is set too.
WORKDIR /srv/sentiment
COPY models ./models
ENV SENTIMENT_MODEL_PATH=/srv/sentiment/models/sentiment.pt
# gRPC (KServe/Triton GRPCInferenceService + grpc.health.v1) on Triton's gRPC port; unset it to serve HTTP only.
ENV SENTIMENT_GRPC_PORT=8001

USER 10001:10001
EXPOSE 8000
EXPOSE 8001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status == 200 else 1)"]

# Exec form: the server is PID 1 and receives SIGTERM directly (graceful drain).
CMD ["sentiment-serve", "--host", "0.0.0.0", "--port", "8000"]
