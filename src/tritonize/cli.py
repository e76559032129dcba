"""The `tritonize` command: a thin layer over the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import re
import signal
import sys
import time
import tomllib
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tritonize import __version__
from tritonize.bench.space import DEFAULT_PREFERRED, Plan, Space
from tritonize.errors import ExportError, SpecError, TritonizeError
from tritonize.spec import BuildSpec, Task
from tritonize.triton_models.sampling import (
    DEFAULT_MAX_BYTES,
    DIR_VARIABLE,
    MAX_BYTES_VARIABLE,
    RATE_VARIABLE,
    Sampling,
    SamplingError,
)

if TYPE_CHECKING:
    from tritonize.server import ServerConfig

EPILOG = """examples:
  tritonize build --task embedding --name minilm --output model_repository
  tritonize build --model ./my-classifier --task classification --name sentiment
  tritonize check model_repository
  tritonize serve model_repository --http-port 8000
  tritonize health --url 127.0.0.1:8000 --model minilm
  tritonize infer minilm "first sentence" "second sentence" --protocol grpc --json
  tritonize generate tiny-llama "Once upon a time" --max-tokens 64 --stream
  tritonize loadtest minilm --scenario steady --users 16 --duration 2m --slo loadtests/slo.yaml
  tritonize verify --model minilm --golden model_repository/minilm/golden.json
  tritonize probe --model minilm --golden model_repository/minilm/golden.json --interval 60s
  tritonize build --task embedding --name minilm --model-version 2
  tritonize versions minilm --url 127.0.0.1:8000
  tritonize rollout minilm --to 2 --url 127.0.0.1:8000
  tritonize rollback minilm --url 127.0.0.1:8000
  tritonize tune minilm --url 127.0.0.1:8000 --slo p95_ms=100
"""


def main(argv: list[str] | None = None) -> int:
    """Run one command: 0 done, 1 an `error:` line, 130 Ctrl-C, 141 output to a closed pipe."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a reader that went away (`| head`) shows here, not at exit
    except BrokenPipeError:
        return _reader_gone()


def _run(argv: list[str] | None) -> int:
    return _dispatch(_parser().parse_args(argv))


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; every exception becomes an exit code and at most one line."""
    try:
        return int(args.run(args) or 0)
    except TritonizeError as exc:
        _traceback_if_debugging()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except Exception as exc:  # the last resort: a line, not a traceback, for what was missed
        hint = "" if _traceback_if_debugging() else " (TRITONIZE_DEBUG=1 shows where)"
        print(f"error: unexpected {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        return 1


def _traceback_if_debugging() -> bool:
    """With TRITONIZE_DEBUG=1, print the exception being handled; True if printed."""
    if os.environ.get("TRITONIZE_DEBUG", "") in ("", "0"):
        return False
    traceback.print_exc()
    return True


def _reader_gone() -> int:
    """Quiet exit when stdout's reader closed it, as a shell reports a writer killed by SIGPIPE."""
    # Whatever is still buffered goes to /dev/null, so the interpreter's flush at exit is quiet.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


# -- commands ---------------------------------------------------------------------------------
def cmd_build(args: argparse.Namespace) -> int:
    from tritonize.repository.writer import build_repository

    flags = {
        key: value for key, value in vars(args).items() if key in _SPEC_FLAGS and value is not None
    }
    _require_name(flags, args.config)
    resolved = _resolve_registry_model(flags, args.config)
    spec = BuildSpec.from_toml(args.config, flags) if args.config else BuildSpec.from_mapping(flags)
    started = time.perf_counter()
    try:
        result = build_repository(spec)
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused the checkpoint
        raise ExportError(_unsafe_pickle(spec.model_dir, exc)) from exc
    print(f"built {', '.join(result.models)} in {result.repository}")
    if args.mlflow or os.environ.get("MLFLOW_TRACKING_URI"):
        from tritonize.registry import log_build

        run = log_build(spec, result, {"build": time.perf_counter() - started}, resolved)
        print(f"logged MLflow run {run}")
    return 0


def _resolve_registry_model(flags: dict[str, Any], config: Path | None) -> Any:
    """`--model models:/NAME/VERSION` or `models:/NAME@ALIAS` (or the spec file's `model`): the
    registered version's checkpoint, fetched through MLflow, becomes the spec's model; None
    for a local one."""
    from tritonize.registry import is_model_uri, resolve_model

    if config is not None and "model" not in flags:
        from_file = BuildSpec.toml_values(config).get("model")
        if is_model_uri(from_file):
            flags["model"] = from_file

    if not is_model_uri(flags.get("model")):
        return None
    resolved = resolve_model(flags["model"])
    flags["model"], flags["registry"] = str(resolved.checkpoint), resolved.uri
    return resolved


def _require_name(flags: dict[str, Any], config: Path | None) -> None:
    """Every build needs a name, from --name or the config file."""
    if "name" in flags:
        return
    if config is not None:
        try:
            data = tomllib.loads(Path(config).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return  # the spec reader names the problem with the file
        if "name" in data.get("build", data):
            return
    raise SpecError(
        '`name` is required: pass --name NAME (or `name = "..."` in the --config file); '
        "it names the ensemble and prefixes its step models"
    )


def _unsafe_pickle(model_dir: Path, error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if "Unsupported global" in line]
    refused = lines[0] if lines else "it holds objects other than tensors"
    return (
        f"`model` = {model_dir}: its PyTorch pickle is refused, since loading it could run code "
        f"({refused}). Where you trust the checkpoint, convert it to safetensors "
        "(`model.save_pretrained(dir, safe_serialization=True)`) and build from that"
    )


def cmd_check(args: argparse.Namespace) -> int:
    from tritonize.engine.compat import EngineRuntime
    from tritonize.repository.checker import check_repository

    runtime = EngineRuntime.detect()
    configs = check_repository(Path(args.repository), runtime, hashes=args.hashes)
    for name, config in sorted(configs.items()):
        kind = config.platform or config.backend
        print(f"ok  {name:<32} {kind:<16} max_batch_size={config.max_batch_size}")
    plans = [name for name, c in configs.items() if c.platform == "tensorrt_plan"]
    if plans and not runtime.known:
        print(
            f"note: no TensorRT runtime or GPU here, so whether {', '.join(sorted(plans))} "
            "load was not checked; run `tritonize check` where they are served"
        )
    return 0


def serve_config(args: argparse.Namespace) -> ServerConfig:
    """The server `tritonize serve` runs, from its command line."""
    from tritonize.server import ServerConfig

    options: dict[str, Any] = {}
    if args.api_key is not None:
        if not args.api_key.strip():
            raise SpecError(
                "--api-key (or TRITONIZE_API_KEY) is empty: give a key, or none for a random one"
            )
        options["api_key"] = args.api_key
    if args.sample_rate:
        try:
            sampling = Sampling(args.sample_rate, Path(args.sample_dir),
                                int(args.sample_max_mb * 2**20))  # fmt: skip
        except SamplingError as exc:
            raise SpecError(f"request sampling: {exc}") from None
        options["sampling"] = sampling
    return ServerConfig(
        repository=Path(args.repository),
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_file=Path(args.log_file) if args.log_file else None,
        extra_args=tuple(args.triton_arg),
        tritonserver=Path(args.tritonserver) if args.tritonserver else None,
        **options,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from tritonize.server import LocalServer, Supervisor

    config = serve_config(args)
    openai_key = _openai_key(args.openai_api_key) if args.openai_port else None
    if args.openai_port:
        from tritonize.gateway import ensure_port_free

        ensure_port_free(config.host, args.openai_port, "--openai-port")
    server = LocalServer(config)
    print(f"starting tritonserver on {config.repository} (log: {config.log_path}) ...", flush=True)
    server.start(timeout_s=args.timeout)
    prometheus = gateway = None
    try:
        supervisor = Supervisor(server, log=_timestamped, drain_timeout_s=args.drain_timeout)
        prometheus = _start_prometheus(config, args.prometheus_port) if args.prometheus else None
        if args.openai_port:
            gateway = _start_gateway(config, args.openai_port, openai_key)
        print(
            f"ready in {server.ready_after_s:.1f} s\n"
            f"  HTTP       http://{config.http_url}\n"
            f"  gRPC       {config.grpc_url}\n"
            f"  metrics    {config.metrics_url}\n"
            + (f"  Prometheus {prometheus.url} (scrapes every second, alert rules loaded)\n"
               if prometheus else "")
            + (f"  OpenAI API {gateway.url}/v1"
               + (" (key: `Authorization: Bearer`)" if openai_key else "") + "\n"
               if gateway else "")
            + _sampling_note(config.sampling)
            + f"  admin API key (header `tritonize-key`): {config.api_key}\n"
            "Ctrl-C stops it.",
            flush=True,
        )  # fmt: skip
        signal.signal(signal.SIGINT, supervisor.request_stop)
        signal.signal(signal.SIGTERM, supervisor.request_stop)
        return supervisor.run()
    finally:
        if gateway is not None:  # after the drain: streams in flight were relayed to the end
            gateway.stop()
        if prometheus is not None:
            prometheus.stop()
        server.stop()


def _sampling_note(sampling: Sampling | None) -> str:
    if sampling is None:
        return ""
    return (
        f"  sampling   {sampling.rate:.2%} of requests into {sampling.directory.resolve()}/ "
        f"(at most {sampling.max_bytes / 2**20:g} MB per model and process)\n"
        "             these files hold users' text: keep, share and delete them as such\n"
    )


def _start_gateway(config: ServerConfig, port: int, api_key: str | None) -> Any:
    """The OpenAI-compatible gateway in a thread of this process, on Triton's gRPC port."""
    from tritonize.gateway import GatewayConfig, GatewayThread

    settings = GatewayConfig(config.grpc_url, api_key=api_key, triton_api_key=config.api_key)
    return GatewayThread(settings, host=config.host, port=port).start()


def _openai_key(key: str | None) -> str | None:
    if key is not None and not key.strip():
        raise SpecError(
            "--openai-api-key (or TRITONIZE_OPENAI_API_KEY) is empty: give a key, or none to "
            "leave the OpenAI API open"
        )
    return key


def cmd_gateway(args: argparse.Namespace) -> int:
    from tritonize.client import host_port
    from tritonize.gateway import GatewayConfig, ensure_port_free, run_gateway

    settings = GatewayConfig(
        host_port(args.triton),
        api_key=_openai_key(args.api_key),
        triton_api_key=args.triton_api_key or None,
        response_timeout_s=args.timeout,
    )
    ensure_port_free(args.host, args.port, "--port")
    print(
        f"OpenAI API on http://{args.host}:{args.port}/v1 -> Triton gRPC {settings.triton_url}"
        + (" (key: `Authorization: Bearer`)" if settings.api_key else "")
        + "\nCtrl-C stops it.",
        flush=True,
    )
    run_gateway(settings, args.host, args.port)
    return 0


def _timestamped(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", flush=True)


def cmd_health(args: argparse.Namespace) -> int:
    from tritonize.server.health import probe, public_models

    if args.model:
        models = list(args.model)
    elif args.api_key:
        models = public_models(args.url, args.api_key)
    else:
        raise TritonizeError(
            "name the models to probe with --model, or pass the admin key (--api-key or "
            "TRITONIZE_API_KEY) to probe every public model"
        )
    results = probe(args.url, models, timeout_s=args.timeout)
    for result in results:
        status = "ok  " if result.error is None else "FAIL"
        print(f"{status} {result.model:<32} {result.seconds * 1000:7.1f} ms  {result.error or ''}")
    failed = [r.model for r in results if r.error is not None]
    if failed:
        print(f"error: not answering: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _start_prometheus(config: Any, port: int) -> Any:
    from tritonize.monitor.prometheus import LocalPrometheus

    prometheus = LocalPrometheus(
        f"{config.host}:{config.metrics_port}", port=port, host=config.host
    )
    prometheus.start()
    return prometheus


def cmd_infer(args: argparse.Namespace) -> int:
    from tritonize.client import TritonizeClient

    with TritonizeClient(args.url, args.protocol, timeout_s=args.timeout) as client:
        _check_model_kind(client, args.model, "infer")
        outputs = _infer_texts(client, args.model, args.texts, _fixed_inputs(args))
    if args.json:
        print(json.dumps({k: _jsonable(v) for k, v in outputs.items()}))
        return 0
    for i, text in enumerate(args.texts):
        print(f"[{i}] {text[:60]!r}")
        for name, value in outputs.items():
            print(f"    {name}: {_summary(value[i])}")
    return 0


def _fixed_inputs(args: argparse.Namespace) -> dict[str, str]:
    """Inputs given once for every text: --query, --question, --input NAME=TEXT."""
    fixed = {"QUERY": args.query, "QUESTION": args.question}
    for item in args.input or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SpecError(f"`--input` {item!r} is not NAME=TEXT")
        fixed[name] = value
    return {name: value for name, value in fixed.items() if value is not None}


def _infer_texts(
    client: Any, model: str, texts: list[str], fixed: dict[str, str]
) -> dict[str, np.ndarray]:
    """`texts` fill the one input of `model` that `fixed` leaves; each text is a row of one
    request, or (a model that takes one input per request, such as question answering) a
    request of its own. Outputs stacked row by row either way."""
    from tritonize.tasks.base import batched

    metadata = client.metadata(model)
    names = [tensor["name"] for tensor in metadata["inputs"]]
    unknown = sorted(set(fixed) - set(names))
    rest = [name for name in names if name not in fixed]
    if unknown or len(rest) != 1:
        wanted = ", ".join(f"`{name}`" for name in names)
        raise SpecError(
            f"model `{model}` takes {wanted}: the TEXT arguments fill one of them, give the "
            "others with --query, --question or --input NAME=TEXT"
            + (f" (it has no {', '.join(unknown)})" if unknown else "")
        )
    if batched(metadata):
        rows = {name: [value] * len(texts) for name, value in fixed.items()}
        return dict(client.infer_inputs(model, {rest[0]: texts, **rows}))
    answers = [
        client.infer_inputs(model, {rest[0]: [text], **{k: [v] for k, v in fixed.items()}})
        for text in texts
    ]
    return {name: np.stack([answer[name] for answer in answers]) for name in answers[0]}


def cmd_generate(args: argparse.Namespace) -> int:
    from tritonize.client import TritonizeClient

    parameters = {
        key: value
        for key, value in (("temperature", args.temperature), ("top_k", args.top_k),
                           ("top_p", args.top_p), ("seed", args.seed), ("stop_words", args.stop))
        if value is not None
    }  # fmt: skip
    with TritonizeClient(args.url, args.protocol, timeout_s=args.timeout) as client:
        _check_model_kind(client, args.model, "generate")
        for text in client.generate(args.model, args.prompt, args.max_tokens, args.stream,
                                    **parameters):  # fmt: skip
            print(text, end="", flush=True)
    print()
    return 0


def _check_model_kind(client: Any, model: str, command: str) -> None:
    """`infer` takes texts (TEXT), `generate` a prompt (text_input): say which fits `model`."""
    from tritonize.errors import InferenceError

    generation = client.is_generation_model(model)
    if command == "infer" and generation:
        raise InferenceError(
            f"`{model}` is a generation model, it takes a prompt: use "
            f"`tritonize generate {model} PROMPT`"
        )
    if command == "generate" and not generation:
        raise InferenceError(
            f"`{model}` embeds or classifies texts, it does not generate: use "
            f"`tritonize infer {model} TEXT...`"
        )


def cmd_loadtest(args: argparse.Namespace) -> int:
    from tritonize.client import DEFAULT_URLS, Protocol
    from tritonize.loadtest.runner import LoadTest, client_protocol, run_load_test

    test = LoadTest(
        model=args.model,
        url=args.url or DEFAULT_URLS[Protocol(client_protocol(args.protocol))],
        protocol=args.protocol,
        scenario=args.scenario,
        users=args.users,
        seconds=args.duration,
        step_seconds=args.step_duration,
        slo_file=args.slo,
        prometheus_url=args.prometheus,
        metrics_url=args.metrics_url,
        workers=args.workers,
        out=args.out,
        texts_file=args.texts_file,
        texts_per_request=args.texts_per_request,
        max_tokens=args.max_tokens,
        gateway_url=args.gateway_url,
    )
    result = run_load_test(test)
    print(f"\nreport: {test.out / 'summary.md'}")
    for gate in result.gates:
        print(f"  {gate.describe()}")
    if result.ramp:
        knee = result.ramp.get("knee")
        if knee:
            figures = f"{knee['rps']:.1f} req/s, p95 {knee['p95_ms']:.0f} ms"
            print(f"  ramp knee: {knee['users']} users ({figures})")
        else:
            print("  ramp: no knee found (see the report's steps)")
    if not result.passed:
        print("load test FAILED:\n  " + "\n  ".join(result.failures()), file=sys.stderr)
        return 1
    print("load test passed")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from tritonize.client import DEFAULT_URLS, Protocol
    from tritonize.verify import Deployment, verify

    deployment = Deployment(
        url=args.url or DEFAULT_URLS[Protocol(args.protocol)],
        model=args.model,
        golden=args.golden,
        protocol=args.protocol,
        metrics_url=args.metrics_url,
        smoke_requests=args.smoke_requests,
    )
    checks = verify(deployment)
    for check in checks:
        print(check.describe())
    if all(c.passed for c in checks):
        print(f"deployment of `{args.model}` verified")
        return 0
    print(f"deployment of `{args.model}` FAILED verification", file=sys.stderr)
    return 1


def cmd_drift(args: argparse.Namespace) -> int:
    from tritonize.monitor.drift import drift_report

    try:
        report = drift_report(args.prometheus, args.model, args.window)
    except TritonizeError as exc:  # 1 means "drifted": a script must tell the two apart
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(report.to_json())
    else:
        print(f"drift of `{report.model}` over the last {report.window} vs its reference profile:")
        for feature in report.features:
            print(f"  {feature.describe()}")
    if report.moved:
        names = ", ".join(f"{f.kind} {f.feature}" for f in report.moved)
        print(f"`{report.model}` drifted: {names}", file=sys.stderr)
        return 1
    if not report.observed:
        print(f"error: too little traffic of `{report.model}` in the last {report.window} to "
              "tell: try a longer --window", file=sys.stderr)  # fmt: skip
        return 2
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from tritonize.client import DEFAULT_URLS, Protocol
    from tritonize.monitor.probe import ProbeSettings, probe

    settings = ProbeSettings(
        url=args.url or DEFAULT_URLS[Protocol(args.protocol)],
        model=args.model,
        golden=args.golden,
        protocol=args.protocol,
        interval_s=args.interval,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        timeout_s=args.timeout,
    )
    return probe(settings, say=_timestamped, once=args.once)


def cmd_diagnose(args: argparse.Namespace) -> int:
    from tritonize.diagnose import Options, diagnose

    options = Options(
        url=args.url,
        out=args.out,
        metrics_url=args.metrics_url,
        prometheus=args.prometheus,
        log_file=args.log_file,
        repository=args.repository,
        api_key=args.api_key or None,
        sample_s=args.sample,
        pending_limit=args.pending_limit,
        log_lines=args.log_lines,
        verify_requests=args.verify_requests,
        timeout_s=args.timeout,
    )
    try:
        result = diagnose(options)
    except TritonizeError as exc:  # 1 means "problems found": a script must tell the two apart
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return result.exit_code


def cmd_versions(args: argparse.Namespace) -> int:
    from tritonize.rollout.versions import HEADER, as_dict, canary_line, list_builds

    builds = list_builds(args.repository, args.model, args.url, args.api_key)
    if args.json:
        print(json.dumps(as_dict(args.repository, args.model, builds), indent=2))
        return 0
    print(HEADER)
    for build in builds:
        print(build.row())
    if canary := canary_line(args.repository, args.model):
        print(canary)
    return 0


def _lifecycle_server(args: argparse.Namespace) -> Any:
    from tritonize.rollout.lifecycle import Server

    if not args.api_key:
        raise TritonizeError(
            "loading and unloading builds needs the server's admin key: --api-key or "
            "TRITONIZE_API_KEY (serve prints it)"
        )
    grpc_url = args.grpc_url or f"{args.url.split('://')[-1].rsplit(':', 1)[0]}:8001"
    return Server(args.repository, args.url, args.api_key, args.metrics_url, grpc_url)


def cmd_rollout(args: argparse.Namespace) -> int:
    from tritonize.rollout.agreement import sample_texts
    from tritonize.rollout.canary import CanaryPlan
    from tritonize.rollout.lifecycle import Gates, keep_builds, rollout

    server = _lifecycle_server(args)
    canary = None
    if args.canary is not None:
        canary = CanaryPlan(
            share=args.canary / 100,
            seconds=args.canary_for,
            max_failures=args.canary_max_failures,
            max_p95_ratio=args.canary_max_p95_ratio,
            min_agreement=args.canary_min_agreement,
        )
    sample = sample_texts(args.sample, args.sample_size)
    gates = Gates(
        verify=not args.skip_verify,
        golden=args.golden,
        sample=tuple(sample),
        min_agreement=args.min_agreement,
    )
    outcome = rollout(server, args.model, args.to, gates, canary)
    print(
        f"`{args.model}` serves build {outcome.serving} (was {outcome.previous}); "
        f"rollout took {outcome.seconds:.1f} s"
    )
    _keep(keep_builds, server, args)
    if args.set_alias:
        _move_alias(args.repository, args.model, outcome.serving, args.set_alias)
    return 0


def _move_alias(repository: Path, name: str, version: int, alias: str) -> None:
    """Point the registry alias at the registered version the serving build came from."""
    from tritonize.registry import ModelUri, set_alias
    from tritonize.rollout.versions import registry_source

    source = registry_source(repository, name, version)
    if source is None:
        raise TritonizeError(
            f"--set-alias {alias}: build {version} of `{name}` was not built from the MLflow "
            "registry (build --model models:/NAME/VERSION records it); the rollout itself stands"
        )
    registered = ModelUri.parse(source)
    assert registered.version is not None
    set_alias(registered.name, alias, registered.version)
    print(f"registry alias `{registered.name}@{alias}` -> version {registered.version}")


def cmd_rollback(args: argparse.Namespace) -> int:
    from tritonize.rollout.lifecycle import keep_builds, rollback

    server = _lifecycle_server(args)
    outcome = rollback(server, args.model)
    print(
        f"`{args.model}` serves build {outcome.serving} again (was {outcome.previous}); "
        f"rollback took {outcome.seconds:.1f} s"
    )
    _keep(keep_builds, server, args)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from tritonize.bench.tune import Tuner, parse_slo, tune, write_build, write_report
    from tritonize.monitor.profile import builtin_reference_texts
    from tritonize.rollout.agreement import sample_texts

    server = _lifecycle_server(args)
    texts: Sequence[str] = builtin_reference_texts(400, seed=1)  # varied lengths
    if args.texts:
        texts = sample_texts(args.texts, 100_000, "--texts")
    plan = Plan(
        concurrency=tuple(args.concurrency),
        seconds=args.seconds,
        warmup_s=args.warmup,
        protocol=args.protocol,
        confirm_rounds=args.confirm_rounds,
    )
    space = Space(
        delays_us=tuple(args.delays_us),
        preferred=tuple(args.preferred) if args.preferred else None,
        instances=tuple(args.instances),
        threads=tuple(args.threads),
    )
    result = tune(Tuner(server, args.model, parse_slo(args.slo), plan, texts), space)
    if result.improves and not args.no_write:
        write_build(result, args.repository, args.model_version)
    print(write_report(result, args.report))
    return 0 if result.best is not None else 1


def _keep(keep_builds: Callable[..., list[int]], server: Any, args: argparse.Namespace) -> None:
    if args.keep is not None:
        removed = keep_builds(server, args.model, args.keep)
        print(f"removed builds {', '.join(map(str, removed))}" if removed else "no build removed")


def port(text: str) -> int:
    """A TCP port, 1..65535."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: expected 1..65535")
    return int(text)


def utf8_text(text: str) -> str:
    """Text for a model: a command line of bytes that are not UTF-8 reaches Python as lone
    surrogates, which no request can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid UTF-8") from None
    return text


def positive_seconds(text: str) -> float:
    """A timeout: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def duration(text: str) -> float:
    """Seconds from `90`, `90s`, `2m`, `1h30m`."""
    import re

    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?", text.strip())
    if not text.strip() or parts is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 2m or 1h30m")
    hours, minutes, seconds = (float(p) if p else 0.0 for p in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


# -- parser -----------------------------------------------------------------------------------
# Every build flag is named after its BuildSpec field.
_SPEC_FLAGS = {f.name for f in dataclasses.fields(BuildSpec)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tritonize",
        description="Build, check, serve and call Triton model repositories for transformers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_build(commands)
    check = _command(commands, "check", cmd_check, "parse every config and verify ensemble wiring")
    check.add_argument("repository", help="model repository directory")
    check.add_argument(
        "--hashes",
        action="store_true",
        help="hash every file against its manifest (default: trust matching size and mtime)",
    )
    _add_serve(commands)
    _add_health(commands)
    _add_infer(commands)
    _add_generate(commands)
    _add_gateway(commands)
    _add_loadtest(commands)
    _add_verify(commands)
    _add_probe(commands)
    _add_drift(commands)
    _add_diagnose(commands)
    _add_lifecycle(commands)
    _add_tune(commands)
    for command in commands.choices.values():
        _show_defaults(command)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append `(default: X)` to each option's help unless it says its default already."""
    for action in parser._actions:
        shown = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in shown:
            continue
        action.help = f"{shown} (default: %(default)s)".strip()


def _command(commands: Any, name: str, run: Callable[[argparse.Namespace], int], help: str) -> Any:
    sub = commands.add_parser(name, help=help, description=help)
    sub.set_defaults(run=run)
    return sub


def _add_build(commands: Any) -> None:
    build = _command(
        commands, "build", cmd_build, "export a checkpoint and write its Triton models"
    )
    build.add_argument("--config", type=Path, help="TOML build spec; flags given here override it")
    what = build.add_argument_group("what to build")
    what.add_argument(
        "--model",
        help="local Hugging Face checkpoint dir, or a registered version: models:/NAME/VERSION "
        "or models:/NAME@ALIAS (MLflow; default: bundled all-MiniLM-L6-v2)",
    )
    what.add_argument(
        "--mlflow", action="store_true",
        help="log the build as an MLflow run (default: when MLFLOW_TRACKING_URI is set)",
    )  # fmt: skip
    what.add_argument("--task", choices=[task.value for task in Task])
    what.add_argument("--name", help="ensemble name; its step models are prefixed with it")
    what.add_argument("--target", choices=["local", "onnxruntime", "tensorrt"])
    what.add_argument("--output", help="model repository directory (default: model_repository)")
    what.add_argument(
        "--model-version", dest="version", type=int, help="version directory to write (default: 1)"
    )
    what.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="replace the version if it exists (it may be serving); else use --model-version",
    )
    what.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="allow checkpoint code to run (off by default)",
    )
    what.add_argument(
        "--allow-untrained-head",
        action="store_true",
        default=None,
        help="build a classifier even if its head was never trained (random labels)",
    )
    runtime = build.add_argument_group("runtime")
    runtime.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"])
    runtime.add_argument("--max-batch-size", type=int)
    runtime.add_argument("--max-seq-len", type=int, help="longer texts are truncated (and flagged)")
    runtime.add_argument(
        "--max-queue-delay-us", type=int, help="dynamic batcher wait (engine step)"
    )
    runtime.add_argument("--preferred-batch-sizes", type=int, nargs="+")
    runtime.add_argument("--engine-instances", type=int)
    runtime.add_argument(
        "--engine-threads", type=int, help="ONNX Runtime threads per engine instance"
    )
    runtime.add_argument("--tokenizer-instances", type=int)
    runtime.add_argument("--opset", type=int)
    build.add_argument_group("watching").add_argument(
        "--reference-texts",
        help="the traffic the model is meant for, one text per line: drift is measured "
        "against its profile (default: a built-in varied set of English texts)",
    )
    trt = build.add_argument_group("TensorRT (--target tensorrt)")
    trt.add_argument("--opt-batch-size", type=int, help="profile opt batch (default: max/2)")
    trt.add_argument("--opt-seq-len", type=int, help="profile opt length (default: min(128, max))")
    trt.add_argument("--workspace-mib", type=int, help="builder workspace limit (default 4096)")
    trt.add_argument("--builder-optimization-level", type=int, choices=range(6))
    trt.add_argument(
        "--hardware-compatibility", choices=["none", "ampere_plus", "same_compute_capability"]
    )
    trt.add_argument(
        "--version-compatible",
        action="store_true",
        default=None,
        help="plan loads on later TensorRT releases of the same major version",
    )
    trt.add_argument("--timing-cache", help="default ~/.cache/tritonize/tensorrt-timing.cache")


def _add_serve(commands: Any) -> None:
    serve = _command(commands, "serve", cmd_serve, "run the bundled tritonserver on a repository")
    serve.add_argument("repository", help="model repository directory")
    serve.add_argument(
        "--host",
        default=os.environ.get("TRITONIZE_HOST", "127.0.0.1"),
        help="bind address (default 127.0.0.1; env TRITONIZE_HOST)",
    )
    serve.add_argument("--http-port", type=port, default=8000)
    serve.add_argument("--grpc-port", type=port, default=8001)
    serve.add_argument("--metrics-port", type=port, default=8002)
    _add_api_key(
        serve,
        "key for the admin APIs: model repository, shared memory, statistics, trace, logging "
        "(default: random per start)",
    )
    serve.add_argument(
        "--log-file", help="server log; `-` for this command's output (default: in the temp dir)"
    )
    serve.add_argument(
        "--timeout", type=positive_seconds, default=180.0, help="seconds to wait for readiness"
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on Ctrl-C/SIGTERM, seconds in-flight requests get to finish (default 30)",
    )
    serve.add_argument(
        "--prometheus",
        action="store_true",
        help="also run a local Prometheus (the `prometheus` binary) scraping it",
    )
    serve.add_argument("--prometheus-port", type=port, default=9090)
    serve.add_argument(
        "--openai-port",
        type=port,
        help="also serve the OpenAI-compatible API (`tritonize gateway`) on this port",
    )
    _add_openai_key(serve, "--openai-api-key")
    _add_sampling(serve)
    serve.add_argument(
        "--tritonserver",
        default=os.environ.get("TRITONIZE_TRITONSERVER"),
        help="tritonserver binary to run instead of the bundled one, e.g. "
        "/opt/tritonserver/bin/tritonserver in the official container (env TRITONIZE_TRITONSERVER)",
    )
    serve.add_argument(
        "--triton-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more tritonserver argument (repeatable; write it as --triton-arg=--flag=value), "
        "e.g. --triton-arg=--backend-config=tensorrt,version-compatible=true",
    )


def _add_sampling(serve: argparse.ArgumentParser) -> None:
    """Opt-in request sampling, off unless a rate is given (flags or their variables)."""
    env = os.environ.get
    serve.add_argument(
        "--sample-rate",
        type=float,
        default=float(env(RATE_VARIABLE) or 0),
        help="keep this share of requests' texts for the next training round, e.g. 0.01 "
        f"(default: off; env {RATE_VARIABLE}). The files hold users' text",
    )
    serve.add_argument(
        "--sample-dir",
        default=env(DIR_VARIABLE, "samples"),
        help=f"where sampled requests go, as JSON lines (default ./samples; env {DIR_VARIABLE})",
    )
    serve.add_argument(
        "--sample-max-mb",
        type=float,
        default=int(env(MAX_BYTES_VARIABLE) or DEFAULT_MAX_BYTES) / 2**20,
        help="cap of each model's sample files, per server process; the oldest rotate out "
        f"(default 100; env {MAX_BYTES_VARIABLE}, in bytes)",
    )


def _add_api_key(parser: argparse.ArgumentParser, purpose: str) -> None:
    """`--api-key`, from TRITONIZE_API_KEY when not given: the key `serve` guards its admin
    APIs with, and that the commands using them send."""
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TRITONIZE_API_KEY"),
        help=f"{purpose} (env TRITONIZE_API_KEY)",
    )


def _add_health(commands: Any) -> None:
    health = _command(
        commands, "health", cmd_health, "send each public model a tiny request (1: one failed)"
    )
    health.add_argument("--url", default="127.0.0.1:8000", help="HTTP host:port")
    health.add_argument("--model", action="append", help="model to probe (repeatable)")
    _add_api_key(health, "admin key, to list the public models")
    health.add_argument("--timeout", type=positive_seconds, default=10.0, help="seconds per model")


def _add_infer(commands: Any) -> None:
    infer = _command(commands, "infer", cmd_infer, "call a served model with texts")
    infer.add_argument("model")
    infer.add_argument(
        "texts",
        nargs="+",
        type=utf8_text,
        metavar="TEXT",
        help="texts (rerank: passages; question answering: contexts)",
    )
    infer.add_argument(
        "--query", type=utf8_text, help="rerank: the query every TEXT is scored against"
    )
    infer.add_argument(
        "--question", type=utf8_text, help="question answering: the question asked of each TEXT"
    )
    infer.add_argument(
        "--input", action="append", type=utf8_text, metavar="NAME=TEXT",
        help="any other input, for every TEXT",
    )  # fmt: skip
    infer.add_argument(
        "--protocol", choices=["http", "grpc"], default=os.environ.get("TRITONIZE_PROTOCOL", "http")
    )
    infer.add_argument(
        "--url",
        default=os.environ.get("TRITONIZE_URL"),
        help="HOST:PORT (default 127.0.0.1:8000 for http, :8001 for grpc; env TRITONIZE_URL)",
    )
    infer.add_argument("--timeout", type=positive_seconds, default=60.0)
    infer.add_argument("--json", action="store_true", help="print all outputs as JSON")


def _add_generate(commands: Any) -> None:
    gen = _command(commands, "generate", cmd_generate, "generate text with a served LLM")
    gen.add_argument("model")
    gen.add_argument("prompt", type=utf8_text)
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--stream", action="store_true", help="print the text as it is generated")
    gen.add_argument("--temperature", type=float, help="0 (default): greedy")
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--seed", type=int, help="makes sampling reproducible")
    gen.add_argument("--stop", nargs="+", help="stop words")
    gen.add_argument(
        "--protocol", choices=["http", "grpc"], default=os.environ.get("TRITONIZE_PROTOCOL", "http")
    )
    gen.add_argument("--url", default=os.environ.get("TRITONIZE_URL"))
    gen.add_argument("--timeout", type=positive_seconds, default=120.0)


def _add_gateway(commands: Any) -> None:
    gateway = _command(
        commands, "gateway", cmd_gateway,
        "serve an OpenAI-compatible API (completions, chat, embeddings) in front of Triton",
    )  # fmt: skip
    gateway.add_argument("--triton", default="127.0.0.1:8001", help="Triton's gRPC HOST:PORT")
    gateway.add_argument(
        "--host",
        default=os.environ.get("TRITONIZE_HOST", "127.0.0.1"),
        help="bind address (default 127.0.0.1; env TRITONIZE_HOST)",
    )
    gateway.add_argument("--port", type=port, default=9000)
    _add_openai_key(gateway, "--api-key")
    gateway.add_argument(
        "--triton-api-key",
        default=os.environ.get("TRITONIZE_API_KEY"),
        help="Triton's admin key, which listing models (/v1/models) needs (env TRITONIZE_API_KEY)",
    )
    gateway.add_argument(
        "--timeout", type=positive_seconds, default=300.0,
        help="seconds to wait for each response from Triton",
    )  # fmt: skip


def _add_openai_key(parser: argparse.ArgumentParser, flag: str) -> None:
    parser.add_argument(
        flag,
        dest="openai_api_key" if flag != "--api-key" else "api_key",
        default=os.environ.get("TRITONIZE_OPENAI_API_KEY"),
        help="key clients of the OpenAI API must send as `Authorization: Bearer KEY` "
        "(env TRITONIZE_OPENAI_API_KEY; default: none, the API is open)",
    )


_METRICS_URL: dict[str, Any] = {
    "default": os.environ.get("TRITONIZE_METRICS_URL"),
    "help": "Triton's metrics endpoint (default: http://HOST:8002/metrics, HOST from --url; "
    "env TRITONIZE_METRICS_URL)",
}


def _add_loadtest(commands: Any) -> None:
    load = _command(commands, "loadtest", cmd_loadtest, "run a Locust scenario and gate it on SLOs")
    load.add_argument("model", help="model (ensemble) to load")
    target = load.add_argument_group("target")
    target.add_argument(
        "--url",
        default=os.environ.get("TRITONIZE_URL"),
        help="HOST:PORT (default 127.0.0.1:8000 http, :8001 grpc)",
    )
    target.add_argument(
        "--protocol",
        choices=["http", "grpc", "sse", "openai", "openai-chat"],
        default="http",
        help="sse: stream from a generation model (TTFT, ITL, E2E events); openai, openai-chat: "
        "the same through the OpenAI-compatible gateway (/v1/completions, /v1/chat/completions; "
        "key from TRITONIZE_OPENAI_API_KEY)",
    )
    target.add_argument(
        "--gateway-url",
        default=os.environ.get("TRITONIZE_GATEWAY_URL", "http://127.0.0.1:9000"),
        help="openai, openai-chat: the gateway in front of --url (env TRITONIZE_GATEWAY_URL)",
    )
    target.add_argument("--metrics-url", **_METRICS_URL)
    target.add_argument("--prometheus", help="Prometheus URL for the server-side figures")
    shape = load.add_argument_group("load")
    shape.add_argument(
        "--scenario", choices=["smoke", "steady", "ramp", "spike", "soak"], default="steady"
    )
    shape.add_argument("--users", type=int, default=8, help="users (ramp: the ceiling)")
    shape.add_argument("--duration", type=duration, default=60.0, help="e.g. 90s, 2m, 1h")
    shape.add_argument("--step-duration", type=duration, default=15.0, help="ramp step length")
    shape.add_argument("--workers", type=int, default=0, help="Locust workers (0: one process)")
    shape.add_argument("--texts-file", type=Path, help="input texts, one per line")
    shape.add_argument("--texts-per-request", type=int, default=1)
    shape.add_argument(
        "--max-tokens", type=int, default=32, help="sse, openai*: tokens per request"
    )
    load.add_argument("--slo", type=Path, help="SLO YAML (see loadtests/slo.yaml)")
    load.add_argument("--out", type=Path, default=Path("reports/loadtest"), help="report folder")


def _add_verify(commands: Any) -> None:
    check = _command(commands, "verify", cmd_verify, "the deployment gate: one exit code")
    check.add_argument("--model", required=True)
    check.add_argument(
        "--golden",
        type=Path,
        required=True,
        help="golden.json written by build (in the ensemble's directory)",
    )
    check.add_argument("--url", default=os.environ.get("TRITONIZE_URL"))
    check.add_argument("--protocol", choices=["http", "grpc"], default="http")
    check.add_argument("--metrics-url", **_METRICS_URL)
    check.add_argument("--smoke-requests", type=int, default=64)


def _add_drift(commands: Any) -> None:
    drift = _command(
        commands, "drift", cmd_drift,
        "how far live traffic moved from the build's reference profile; exit 1 when any "
        "feature is over its threshold",
    )  # fmt: skip
    drift.add_argument("model", help="the ensemble's name")
    drift.add_argument(
        "--prometheus",
        default=os.environ.get("TRITONIZE_PROMETHEUS_URL", "http://127.0.0.1:9090"),
        help="Prometheus scraping Triton (env TRITONIZE_PROMETHEUS_URL)",
    )
    drift.add_argument(
        "--window", type=_promql_duration, default="30m", help="live traffic of the last WINDOW"
    )
    drift.add_argument("--json", action="store_true", help="the report as JSON")


def _promql_duration(text: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]*(s|m|h|d)", text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 90s, 30m, 6h, 1d")
    return text


def _add_lifecycle(commands: Any) -> None:
    """versions, rollout, rollback: a model's builds and which one serves."""
    versions = _command(
        commands, "versions", cmd_versions,
        "a model's builds: on disk, loaded, which one serves, memory and manifest summary",
    )  # fmt: skip
    rollout = _command(
        commands, "rollout", cmd_rollout,
        "load a build beside the serving one, gate it, then move the model to it (exit 0: it "
        "serves; 1: it does not, and the serving build serves as before)",
    )  # fmt: skip
    rollback = _command(
        commands, "rollback", cmd_rollback,
        "move the model back to the build that served before",
    )  # fmt: skip
    _add_model_and_repository(versions)
    versions.add_argument("--url", help="Triton's HTTP HOST:PORT: add states and memory")
    versions.add_argument("--json", action="store_true")
    for parser in (rollout, rollback):
        _add_model_and_repository(parser)
        _add_server_urls(parser)
        parser.add_argument(
            "--keep", type=int, metavar="N",
            help="then delete all but the N newest builds (the serving and previous stay)",
        )  # fmt: skip
    rollout.add_argument("--to", type=int, required=True, metavar="N", help="the build to serve")
    rollout.add_argument(
        "--golden", type=Path,
        help="golden file the candidate must pass (default: the build's own golden.json)",
    )  # fmt: skip
    rollout.add_argument(
        "--sample", type=Path,
        help="texts both builds answer to compare them, one per line (default: built-in)",
    )  # fmt: skip
    rollout.add_argument("--sample-size", type=int, default=32, help="texts of --sample used")
    rollout.add_argument(
        "--min-agreement", type=_share,
        help="refuse a candidate agreeing with the serving build on less than this share (0..1)",
    )  # fmt: skip
    rollout.add_argument(
        "--skip-verify", action="store_true", help="no verify gate (agreement is still shown)"
    )
    canary = rollout.add_argument_group(
        "canary", "before moving all traffic, route a share of it to the candidate and watch"
    )
    canary.add_argument(
        "--canary", type=_percent, metavar="P",
        help="P%% of the model's requests go to the candidate first (0 < P < 100)",
    )  # fmt: skip
    canary.add_argument(
        "--canary-for", type=duration, default=300.0, metavar="TIME",
        help="how long the canary runs: 90s, 5m (default 5m)",
    )  # fmt: skip
    canary.add_argument(
        "--canary-max-failures", type=_share, default=0.01, metavar="SHARE",
        help="the candidate's failure share may exceed the serving build's by this (default 0.01)",
    )  # fmt: skip
    canary.add_argument(
        "--canary-max-p95-ratio", type=_ratio, default=1.5, metavar="X",
        help="the candidate's p95 may be X times the serving build's (default 1.5)",
    )  # fmt: skip
    canary.add_argument(
        "--canary-min-agreement", type=_share, metavar="SHARE",
        help="canary requests the serving build must answer alike (default: shown, not gated)",
    )  # fmt: skip
    rollout.add_argument(
        "--set-alias", metavar="ALIAS",
        help="once it serves, point this MLflow alias at the registered version it was built from",
    )  # fmt: skip


def _add_model_and_repository(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the public model's name")
    parser.add_argument(
        "--repository", type=Path, default=Path("model_repository"),
        help="the repository the server serves (default: model_repository)",
    )  # fmt: skip
    _add_api_key(parser, "the server's admin key (serve prints it)")


def _add_server_urls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get("TRITONIZE_URL", "127.0.0.1:8000"),
        help="Triton's HTTP HOST:PORT (env TRITONIZE_URL)",
    )  # fmt: skip
    parser.add_argument("--metrics-url", **_METRICS_URL)
    parser.add_argument(
        "--grpc-url", default=os.environ.get("TRITONIZE_GRPC_URL"),
        help="Triton's gRPC HOST:PORT, through which builds load without holding HTTP "
        "clients (default: port 8001 on --url's host; env TRITONIZE_GRPC_URL)",
    )  # fmt: skip


def _add_tune(commands: Any) -> None:
    tune = _command(
        commands, "tune", cmd_tune,
        "sweep the serving build's batcher, instances and threads under a latency objective, "
        "then write the best config as a new build (exit 1: no config meets the objective)",
    )  # fmt: skip
    _add_model_and_repository(tune)
    _add_server_urls(tune)
    tune.add_argument(
        "--slo", nargs="+", required=True, metavar="NAME=VALUE",
        help="the objective every point must meet: p95_ms=50, p99_ms=..., min_batch_size=..., "
        "max_queue_share=... (max_failure_ratio=0 unless given)",
    )  # fmt: skip
    space, plan = Space(), Plan()
    sweep = tune.add_argument_group("what to sweep (every combination)")
    sweep.add_argument(
        "--delays-us", nargs="+", type=whole_number(0), default=list(space.delays_us), metavar="US",
        help="the engine's max_queue_delay_microseconds",
    )  # fmt: skip
    sweep.add_argument(
        "--preferred", nargs="+", type=_batch_sizes, metavar="SIZES",
        help="preferred batch sizes, comma-separated, or `none` (default: none "
        + " ".join(",".join(map(str, sizes)) for sizes in DEFAULT_PREFERRED if sizes)
        + ", without the sizes above the engine's max_batch_size)",
    )  # fmt: skip
    sweep.add_argument(
        "--instances", nargs="+", type=whole_number(1), default=list(space.instances), metavar="N",
        help="engine instances",
    )  # fmt: skip
    sweep.add_argument(
        "--threads", nargs="+", type=whole_number(0), default=list(space.threads), metavar="N",
        help="ONNX Runtime threads per instance, 0 = cores / instances",
    )  # fmt: skip
    measure = tune.add_argument_group("how each config is measured")
    measure.add_argument(
        "--concurrency", nargs="+", type=whole_number(1), default=list(plan.concurrency),
        metavar="N", help="closed-loop clients, one text per request",
    )  # fmt: skip
    measure.add_argument(
        "--seconds", type=positive_seconds, default=plan.seconds, help="each window"
    )
    measure.add_argument(
        "--warmup", type=number_type(lambda v: v >= 0, "seconds >= 0"), default=plan.warmup_s,
        help="seconds before each window, not counted",
    )  # fmt: skip
    measure.add_argument("--protocol", choices=("grpc", "http"), default=plan.protocol)
    measure.add_argument(
        "--texts", type=Path, help="texts to send, one per line (default: built-in varied texts)"
    )
    measure.add_argument(
        "--confirm-rounds", type=whole_number(0), default=plan.confirm_rounds, metavar="N",
        help="the best and the serving config measured again, alternating, for the gain",
    )  # fmt: skip
    tune.add_argument(
        "--report", type=Path, default=Path("tune-report"),
        help="where the table, the points and the plot go (default: tune-report)",
    )  # fmt: skip
    tune.add_argument(
        "--model-version", type=whole_number(1), metavar="N",
        help="the build the best config is written as (default: the next free number)",
    )  # fmt: skip
    tune.add_argument("--no-write", action="store_true", help="measure and report only")


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= `minimum`."""

    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= {minimum}")
        return int(text)

    return parse


def _batch_sizes(text: str) -> tuple[int, ...]:
    """`none`, or comma-separated positive batch sizes."""
    if text.strip().lower() == "none":
        return ()
    sizes = text.split(",")
    if not all(size.strip().isdigit() and int(size) > 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: expected `none` or batch sizes such as 8,16")
    return tuple(int(size) for size in sizes)


def number_type(ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: a number for which `ok` holds, else an error naming what is allowed."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")  # fails every bound
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return value

    return parse


_percent = number_type(lambda v: 0.0 < v < 100.0, "a percentage between 0 and 100")
_ratio = number_type(lambda v: v > 0, "a positive ratio, e.g. 1.5")
_share = number_type(lambda v: 0.0 <= v <= 1.0, "a share between 0 and 1, e.g. 0.95")


def _add_probe(commands: Any) -> None:
    prober = _command(
        commands, "probe", cmd_probe,
        "replay the golden set on a schedule and export agreement, failures and latency",
    )  # fmt: skip
    prober.add_argument("--model", required=True)
    prober.add_argument("--golden", type=Path, required=True, help="golden.json written by build")
    prober.add_argument("--url", default=os.environ.get("TRITONIZE_URL"))
    prober.add_argument("--protocol", choices=["http", "grpc"], default="http")
    prober.add_argument("--interval", type=duration, default=60.0, help="between rounds: 60s, 5m")
    prober.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics")
    prober.add_argument("--metrics-port", type=port, default=9105)
    prober.add_argument("--timeout", type=positive_seconds, default=30.0, help="per request (s)")
    prober.add_argument(
        "--once", action="store_true",
        help="one round, no metrics: exit 1 unless every record agrees",
    )  # fmt: skip


def _add_diagnose(commands: Any) -> None:
    diag = _command(
        commands, "diagnose", cmd_diagnose,
        "gather what to look at when a deployment misbehaves into one folder and name each "
        "problem with its runbook section (exit 1: problems found, 2: server unreachable)",
    )  # fmt: skip
    diag.add_argument(
        "--url", default=os.environ.get("TRITONIZE_URL", "127.0.0.1:8000"),
        help="Triton's HTTP HOST:PORT (env TRITONIZE_URL)",
    )  # fmt: skip
    diag.add_argument(
        "--metrics-url", default=os.environ.get("TRITONIZE_METRICS_URL"),
        help="Triton's metrics endpoint (default: the running server's metrics port when it runs "
        "here, else port 8002 on --url's host; env TRITONIZE_METRICS_URL)",
    )  # fmt: skip
    diag.add_argument(
        "--prometheus", default=os.environ.get("TRITONIZE_PROMETHEUS_URL"),
        help="Prometheus scraping Triton, to list its firing alerts (env TRITONIZE_PROMETHEUS_URL)",
    )  # fmt: skip
    diag.add_argument(
        "--log-file", type=Path,
        help="the server log (default: where the running server writes, else serve's default)",
    )  # fmt: skip
    diag.add_argument(
        "--repository", type=Path,
        help="the model repository on disk (default: the running server's --model-repository)",
    )  # fmt: skip
    _add_api_key(diag, "admin key: the repository index (why a model is unavailable), statistics")
    diag.add_argument("--out", type=Path, default=Path("diag"), help="folder for the findings")
    more = diag.add_argument_group("thresholds and limits")
    more.add_argument(
        "--sample", type=positive_seconds, default=2.0,
        help="seconds between the two metrics scrapes (failures counted in between)",
    )  # fmt: skip
    more.add_argument(
        "--pending-limit", type=_at_least(1), default=8,
        help="pending requests that saturate a model without a max_queue_size",
    )  # fmt: skip
    more.add_argument("--log-lines", type=_at_least(1), default=200, help="log lines kept")
    more.add_argument(
        "--verify-requests", type=_at_least(0), default=16,
        help="smoke requests of the verify run per model with a golden file (0: no verify)",
    )  # fmt: skip
    more.add_argument("--timeout", type=positive_seconds, default=10.0, help="per request (s)")


def _at_least(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < least:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= {least}")
        return int(text)

    return parse


def _jsonable(value: np.ndarray) -> Any:
    if value.dtype == object:
        return [[v.decode(errors="replace") for v in row] for row in value]
    return value.tolist()


def _summary(value: np.ndarray) -> str:
    if value.dtype == object:
        return value[0].decode(errors="replace")
    if value.size == 1:
        return str(value.reshape(-1)[0])
    head = ", ".join(f"{v:.4f}" for v in value[:4])
    return f"[{head}, ...] dim={value.size} norm={np.linalg.norm(value):.4f}"


if __name__ == "__main__":
    sys.exit(main())
