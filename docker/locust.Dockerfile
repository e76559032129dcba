# Locust with tritonize's users (HTTP and gRPC) for the compose `loadtest` profile.
FROM locustio/locust:2.47.0

USER root
ENV PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md /opt/tritonize/
COPY src /opt/tritonize/src
RUN pip install "/opt/tritonize[loadtest]"
USER locust
