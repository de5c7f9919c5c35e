"""Operator settings from flags and the environment; API requests retried as the API server
asks (a real HTTP server on loopback plays a throttling API server); JSON logs with fields."""

from __future__ import annotations

import argparse
import json
import logging
import time

import pytest
from aiohttp import web
from kubernetes import client

from connquota.commands.operator import add_arguments, settings_from_args
from connquota.logs import JsonFormatter
from connquota.operator import metrics
from connquota.operator.kube import KubeApi, KubeError
from connquota.operator.settings import OperatorConfig, env_of, flag_of


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_every_setting_is_a_flag_and_an_environment_variable_and_flags_win() -> None:
    args = _parse("--resync-interval-seconds", "15", "-n", "a", "-n", "b,c", "--liveness-port", "0")
    environ = {
        env_of("resyncIntervalSeconds"): "99",
        env_of("windowMarginSeconds"): "1.5",
        env_of("errorBackoffsSeconds"): "1, 3",
        env_of("peering"): "peering",
    }
    config = settings_from_args(args, environ)
    assert config.resyncIntervalSeconds == 15  # the flag wins
    assert config.windowMarginSeconds == 1.5  # from the environment
    assert config.errorBackoffsSeconds == [1, 3]
    assert config.namespaces == ["a", "b", "c"]
    assert config.peering == "peering"
    assert config.livenessPort == 0
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {a for action in parser._actions for a in action.option_strings}
    for name in OperatorConfig.model_fields:
        assert flag_of(name) in flags, name


def test_a_bad_setting_names_itself() -> None:
    with pytest.raises(ValueError, match="resyncIntervalSeconds"):
        settings_from_args(_parse("--resync-interval-seconds", "soon"), {})


def test_the_docs_list_every_setting_with_its_flag_and_variable() -> None:
    from pathlib import Path

    docs = (Path(__file__).parents[3] / "docs" / "operator.md").read_text()
    for name in OperatorConfig.model_fields:
        assert f"| `{name}` | `{flag_of(name)}` | `{env_of(name)}` |" in docs, name


@pytest.fixture
async def throttling_api_server(aiohttp_unused_port=None):
    """An API server on 127.0.0.1 that fails once (500), throttles once (429, Retry-After: 1),
    then answers the object."""
    calls: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        if request.path.endswith("/refuse"):
            return web.json_response({"kind": "Status", "code": 403}, status=403)
        if len(calls) == 1:
            return web.json_response({"kind": "Status", "code": 500}, status=500)
        if len(calls) == 2:
            return web.json_response(
                {"kind": "Status", "code": 429}, status=429, headers={"Retry-After": "1"}
            )
        return web.json_response({"metadata": {"name": "x", "resourceVersion": "7"}})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    api = KubeApi(client.ApiClient(configuration), request_timeout_s=5)
    try:
        yield api, calls
    finally:
        await runner.cleanup()


async def test_a_throttled_request_is_retried_after_the_servers_retry_after(
    throttling_api_server,
) -> None:
    api, calls = throttling_api_server
    before = metrics.API_RETRIES._value.get()
    got = await api.get("ConfigMap", "ns", "x")
    assert got is not None and got["metadata"]["resourceVersion"] == "7"
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.45, "a 500 is tried again after the first delay"
    assert calls[2] - calls[1] >= 0.95, "the API server's Retry-After: 1 is kept"
    assert metrics.API_RETRIES._value.get() - before >= 1


async def test_a_refused_request_is_not_retried(throttling_api_server) -> None:
    api, calls = throttling_api_server
    with pytest.raises(KubeError) as err:
        await api.get("ConfigMap", "ns", "refuse")
    assert err.value.status == 403 and len(calls) == 1


def test_an_api_error_forgets_only_the_namespaces_it_concerns() -> None:
    api = KubeApi(client.ApiClient(client.Configuration()))
    api._applied.update({("ConfigMap", "a", "x"): "h1", ("ConfigMap", "b", "y"): "h2"})
    api._versions.update({("ConfigMap", "a", "x"): "1", ("ConfigMap", "b", "y"): "2"})
    api.forget_namespaces(["a"])
    assert api._applied == {("ConfigMap", "b", "y"): "h2"}
    assert api._versions == {("ConfigMap", "b", "y"): "2"}


def test_operator_log_lines_are_json_with_quota_and_pool_fields() -> None:
    record = logging.LogRecord(
        "connquota.operator.reconcile",
        logging.INFO,
        "",
        0,
        "quota %s: %s",
        ("ns/q", "planned"),
        None,
    )
    record.quota = "ns/q"
    record.pool = "p1"
    record.component = "operator"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "quota ns/q: planned"
    assert (doc["quota"], doc["pool"], doc["component"]) == ("ns/q", "p1", "operator")


def test_building_the_command_line_imports_no_kubernetes_client() -> None:
    """`connquota operator --kubeconfig F` sets KUBECONFIG before the kubernetes client is
    imported (it reads the variable once, at import): building the parser must not import it."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from connquota.cli import build_parser\n"
        "build_parser().parse_args(['operator', '--kubeconfig', 'x'])\n"
        "assert 'kubernetes' not in sys.modules and 'kopf' not in sys.modules, sorted(\n"
        "    m for m in sys.modules if m.startswith(('kubernetes', 'kopf')))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
