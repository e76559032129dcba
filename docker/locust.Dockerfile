# Locust with tritonize's users (HTTP and gRPC) for the compose `loadtest` profile.
# Python 3.11 on Debian bookworm: the pins (numpy 1.26.4, which the Triton Python backend needs)
# publish wheels for Python 3.9 to 3.12 only, and a slim image has no compiler to build one.
# (The locustio/locust image moved to Python 3.13.)
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY pyproject.toml README.md /opt/tritonize/
COPY src /opt/tritonize/src
RUN pip install "/opt/tritonize[loadtest]" \
    && useradd --create-home --uid 1000 locust
USER 1000
WORKDIR /home/locust
EXPOSE 8089 5557
ENTRYPOINT ["locust"]
