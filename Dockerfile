# MedVision service images.
#
#   docker build -t medvision:cuda .                 # default: built on the CUDA devel image, runs on the CUDA runtime
#   docker build --target cpu -t medvision:cpu .     # CPU-only: Debian 12, no CUDA
#
# Both run `medvision serve` on port 8080 as an unprivileged user; mount a model at /models/<name> and pass
# --model /models/<name> (without one, the OCR backend serves /extract). docs/deploy.md has the details.
ARG CUDA_VERSION=13.0.1
ARG CUDA_UBUNTU=ubuntu24.04

# ---- build stages ------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-${CUDA_UBUNTU} AS build-cuda
ENV DEBIAN_FRONTEND=noninteractive MEDVISION_NO_BROWSER=1
WORKDIR /src
COPY scripts/setup.sh scripts/setup.sh
RUN apt-get update -qq && bash scripts/setup.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# CUDA_ARCHS: the GPUs to build kernels for (80 = A100, 86 = A10/RTX 30, 89 = L4/RTX 40, 90 = H100/H200).
ARG CUDA_ARCHS="80;86;89;90"
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMEDVISION_TESTS=OFF -DMEDVISION_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS}" \
 && cmake --build /build -j "$(nproc)" \
 && bash scripts/bundle-runtime.sh /build/medvision /opt/medvision

FROM debian:12 AS build-cpu
ENV DEBIAN_FRONTEND=noninteractive MEDVISION_NO_BROWSER=1
WORKDIR /src
COPY scripts/setup.sh scripts/setup.sh
RUN apt-get update -qq && bash scripts/setup.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMEDVISION_TESTS=OFF -DMEDVISION_CUDA=OFF \
 && cmake --build /build -j "$(nproc)" \
 && bash scripts/bundle-runtime.sh /build/medvision /opt/medvision

# ---- runtime stages ----------------------------------------------------------------------------------
# The bundle holds the binary and the shared libraries it links (minus glibc and CUDA, which the base image
# provides); the runtime image adds only Tesseract's English model, fonts and curl for the health check.
FROM debian:12-slim AS cpu
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends tesseract-ocr-eng fontconfig fonts-dejavu-core curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/medvision --create-home medvision
COPY --from=build-cpu /opt/medvision /opt/medvision
COPY benchmarks /opt/medvision/benchmarks
ENV PATH=/opt/medvision/bin:$PATH LD_LIBRARY_PATH=/opt/medvision/lib MEDVISION_HEALTH_URL=http://127.0.0.1:8080/health
USER medvision
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD curl -fsSk "$MEDVISION_HEALTH_URL" >/dev/null || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["medvision", "--log-level", "info"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--benchmarks", "/opt/medvision/benchmarks"]

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${CUDA_UBUNTU} AS cuda
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends tesseract-ocr-eng fontconfig fonts-dejavu-core curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/medvision --create-home medvision
COPY --from=build-cuda /opt/medvision /opt/medvision
COPY benchmarks /opt/medvision/benchmarks
ENV PATH=/opt/medvision/bin:$PATH LD_LIBRARY_PATH=/opt/medvision/lib MEDVISION_HEALTH_URL=http://127.0.0.1:8080/health \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER medvision
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD curl -fsSk "$MEDVISION_HEALTH_URL" >/dev/null || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["medvision", "--log-level", "info"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--benchmarks", "/opt/medvision/benchmarks"]
