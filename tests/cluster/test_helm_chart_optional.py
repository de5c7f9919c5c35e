"""The chart's optional parts: off by default; with every one enabled the chart lints strictly,
renders each part, and the real API server accepts them (server-side dry run, then a real
`helm install` in a namespace enforcing Pod Security `restricted`).

ServiceMonitor, PodMonitor and PrometheusRule are prometheus-operator custom resources: their
CRDs come from the pinned Go module (hack/prometheus-operator-crds.sh, cached like the control
plane) and are installed once per session. The rules and the dashboard come from the chart's
files (files/prometheus/rules.yaml, files/grafana/connquota.json), whose content is checked
elsewhere (promtool, metric names); here: that the chart carries them unchanged.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.conftest import wait_for
from connquota.api.quota import ExchangeConnectionQuota
from connquota.operator import builders
from connquota.testing.controlplane import ControlPlane

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "connquota"
KUBE_VERSION = "v1.34.12"
OPTIONAL_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy"}
EXCHANGE_EGRESS = [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443}]}]


def every_option(namespace: str, gateway_namespaces: list[str]) -> dict[str, Any]:
    """Values enabling every optional part (the API server CIDRs left to the chart's lookup)."""
    return {
        "mode": "peering",
        "replicas": 3,
        "watchNamespaces": gateway_namespaces,
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
            "podMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "10s"},
            "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
            "grafanaDashboard": {
                "enabled": True,
                "namespace": namespace,
                "annotations": {"grafana_folder": "connquota"},
            },
        },
        "networkPolicy": {"enabled": True, "gateways": {"egress": EXCHANGE_EGRESS}},
    }


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def gateway_objects() -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod template and headless Service the operator builds for a quota (pure builders)."""
    quota = ExchangeConnectionQuota.model_validate(
        {
            "metadata": {"name": "md", "namespace": "team-a", "uid": "quota-uid"},
            "spec": {
                "exchange": "binance-spot",
                "egressPoolRef": {"name": "pool"},
                "streams": [{"name": "btcusdt@trade"}],
            },
        }
    )
    template = builders.build_statefulset(quota, 1, [])["spec"]["template"]
    return template, builders.build_headless_service(quota)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def render(control_plane: ControlPlane, namespace: str, *args: str) -> list[dict[str, Any]]:
    out = control_plane.helm(
        "template", "cq", str(CHART), "--kube-version", KUBE_VERSION, "--namespace", namespace,
        *args,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def test_every_optional_part_is_off_by_default(control_plane: ControlPlane) -> None:
    docs = render(control_plane, "ops")
    kinds = Counter(d["kind"] for d in docs)
    assert not OPTIONAL_KINDS & set(kinds), kinds
    assert "PodDisruptionBudget" not in kinds and "ConfigMap" not in kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "topologySpreadConstraints" not in deployment["spec"]["template"]["spec"]


def test_with_every_optional_part_the_chart_lints_strictly_and_renders_each_part(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    values = every_option("ops", ["team-a", "team-b"])
    values["networkPolicy"]["apiServer"] = {"cidrs": ["10.0.0.1/32"]}
    path = values_file(tmp_path, values)
    for kube in ("v1.31.0", KUBE_VERSION):
        lint = control_plane.helm(
            "lint", "--strict", str(CHART), "--kube-version", kube, "-f", path
        )
        assert "0 chart(s) failed" in lint.stdout, lint.stdout
    docs = render(control_plane, "ops", "-f", path)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)

    pod_template, peer_service = gateway_objects()
    pod_labels = pod_template["metadata"]["labels"]
    (gateway_port,) = pod_template["spec"]["containers"][0]["ports"]

    # Monitors: the operator in the release namespace, the gateways in the watched ones.
    for kind, endpoints in (("ServiceMonitor", "endpoints"), ("PodMonitor", "podMetricsEndpoints")):
        monitors = {m["metadata"]["name"]: m for m in by_kind[kind]}
        assert set(monitors) == {"cq-connquota-operator", "cq-connquota-gateways"}
        operator, gateways = monitors["cq-connquota-operator"], monitors["cq-connquota-gateways"]
        assert operator["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
        assert operator["spec"][endpoints][0]["port"] == "metrics"
        assert gateways["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
        gw_endpoint = gateways["spec"][endpoints][0]
        assert gw_endpoint["port"] == gateway_port["name"] and gw_endpoint["path"] == "/metrics"
        # The quota label comes from the connquota.io/quota label of the gateway pods.
        (relabel,) = gw_endpoint["relabelings"]
        assert relabel["targetLabel"] == "quota"
        source = relabel["sourceLabels"][0].removeprefix("__meta_kubernetes_pod_label_")
        assert [k for k in pod_labels if re.sub(r"[./-]", "_", k) == source] == [
            "connquota.io/quota"
        ]
        # The selector matches what the operator builds: the peer Service or the gateway pods.
        target = peer_service if kind == "ServiceMonitor" else pod_template
        assert matches(gateways["spec"]["selector"]["matchLabels"], target["metadata"]["labels"])
    assert any(p["name"] == gateway_port["name"] for p in peer_service["spec"]["ports"])
    assert peer_service["spec"]["publishNotReadyAddresses"] is True
    assert by_kind["ServiceMonitor"][0]["metadata"]["labels"]["release"] == "kps"
    pod_monitor = by_kind["PodMonitor"][0]["spec"]["podMetricsEndpoints"][0]
    assert (pod_monitor["interval"], pod_monitor["scrapeTimeout"]) == ("15s", "10s")

    # The PrometheusRule carries files/prometheus/rules.yaml's groups unchanged.
    (rule,) = by_kind["PrometheusRule"]
    shipped = yaml.safe_load((CHART / "files" / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"]["groups"] == shipped["groups"] and shipped["groups"]
    # The dashboard ConfigMap: the sidecar's label, the JSON unchanged.
    (dashboard,) = by_kind["ConfigMap"]
    assert dashboard["metadata"]["namespace"] == "ops"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "connquota"}
    shipped_json = json.loads((CHART / "files" / "grafana" / "connquota.json").read_text())
    assert json.loads(dashboard["data"]["connquota.json"]) == shipped_json

    # NetworkPolicies: the operator's, and one per gateway namespace.
    policies = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p for p in by_kind["NetworkPolicy"]
    }
    assert set(policies) == {
        ("ops", "cq-connquota-operator"),
        ("team-a", "cq-connquota-gateways"),
        ("team-b", "cq-connquota-gateways"),
    }
    operator_policy = policies["ops", "cq-connquota-operator"]["spec"]
    assert operator_policy["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
            "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}],
        }
    ]
    assert operator_policy["ingress"][0]["ports"] == [{"port": 9090, "protocol": "TCP"}]
    gateway_policy = policies["team-a", "cq-connquota-gateways"]["spec"]
    gateway_labels = gateway_policy["podSelector"]["matchLabels"]
    assert matches(gateway_labels, pod_labels)
    (ingress,) = gateway_policy["ingress"]
    assert ingress["ports"] == [
        {"port": gateway_port["containerPort"], "protocol": "TCP"},
        {"port": 8443, "protocol": "TCP"},  # consumers over TLS (consumerTLSSecretRef)
    ]
    assert {"podSelector": {"matchLabels": gateway_labels}} in ingress["from"]  # peers
    egress_ports = [r["ports"] for r in gateway_policy["egress"]]
    assert [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}] in egress_ports
    assert gateway_policy["egress"][-1] == EXCHANGE_EGRESS[0]
    assert len(gateway_policy["egress"]) == 4  # API server, DNS, peers, exchanges: nothing else

    # Peering with 3 replicas: PDB, topology spread, rolling updates.
    (pdb,) = by_kind["PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1
    deployment = by_kind["Deployment"][0]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    ]
    assert all(
        c["labelSelector"]["matchLabels"] == pdb["spec"]["selector"]["matchLabels"] for c in spread
    )


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["replicas=0"], "at '/replicas': minimum: got 0, want 1"),
        (["monitoring.serviceMonitor.interval=soon"], "at '/monitoring/serviceMonitor/interval'"),
        (["monitoring.podMonitor.port=9"], "additional properties 'port' not allowed"),
        (["networkPolicy.gateways.egress[0].to[0].ipBlock.cidr=nowhere",
          "networkPolicy.gateways.egress[0].ports[0].port=443"],
         "at '/networkPolicy/gateways/egress/0/to/0/ipBlock/cidr'"),
        (["topologySpread.whenUnsatisfiable=Never"], "at '/topologySpread/whenUnsatisfiable'"),
        (["replicas=2"], "replicas: 2 needs mode: peering"),
        (["replicas=2", "mode=peering", "podDisruptionBudget.minAvailable=2"],
         "podDisruptionBudget.minAvailable (2) must be less than replicas (2)"),
        (["networkPolicy.enabled=true"], "needs the namespaces where gateways run"),
        (["networkPolicy.enabled=true", "watchNamespaces={a}"],
         "needs networkPolicy.gateways.egress"),
        (["networkPolicy.enabled=true", "watchNamespaces={a}",
          "networkPolicy.gateways.egress[0].to[0].ipBlock.cidr=203.0.113.0/24",
          "networkPolicy.gateways.egress[0].ports[0].port=443"],
         "set networkPolicy.apiServer.cidrs"),
    ],
)  # fmt: skip
def test_chart_refuses_an_inconsistent_optional_part_with_the_reason(
    control_plane: ControlPlane, sets: list[str], message: str
) -> None:
    """Schema errors fail lint, template and install; the cross-value checks (templates'
    `fail`) fail template and install (helm lint only logs a template's `fail`)."""
    args = [a for s in sets for a in ("--set", s)]
    rendered = control_plane.helm("template", "cq", str(CHART), *args, check=False)
    assert rendered.returncode != 0 and message in rendered.stderr, rendered.stderr
    if message.startswith(("at '/", "additional properties")):
        lint = control_plane.helm("lint", "--strict", str(CHART), *args, check=False)
        assert lint.returncode != 0 and message in lint.stdout + lint.stderr, lint.stdout


def _all_objects_server_side_dry_run(
    control_plane: ControlPlane, docs: list[dict[str, Any]]
) -> list[str]:
    body = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    applied = control_plane.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-",
        input=body, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    return applied.stdout.splitlines()


def test_every_optional_part_is_accepted_by_the_api_server_in_a_server_side_dry_run(
    control_plane: ControlPlane, monitoring_crds: Path, namespace: str, tmp_path: Path
) -> None:
    values = every_option(namespace, [namespace])
    values["networkPolicy"]["apiServer"] = {"cidrs": ["127.0.0.1/32"], "ports": [6443]}
    docs = render(control_plane, namespace, "-f", values_file(tmp_path, values))
    lines = _all_objects_server_side_dry_run(control_plane, docs)
    wanted = {
        "servicemonitor.monitoring.coreos.com/cq-connquota-operator",
        "servicemonitor.monitoring.coreos.com/cq-connquota-gateways",
        "podmonitor.monitoring.coreos.com/cq-connquota-operator",
        "podmonitor.monitoring.coreos.com/cq-connquota-gateways",
        "prometheusrule.monitoring.coreos.com/cq-connquota",
        "configmap/cq-connquota-dashboard",
        "networkpolicy.networking.k8s.io/cq-connquota-operator",
        "networkpolicy.networking.k8s.io/cq-connquota-gateways",
        "poddisruptionbudget.policy/cq-connquota",
        "deployment.apps/cq-connquota",
    }
    accepted = {line.split()[0] for line in lines if line.endswith("(server dry run)")}
    assert wanted <= accepted, f"not accepted: {sorted(wanted - accepted)}\n{lines}"
    # A dry run persists nothing.
    assert control_plane.kubectl("get", "networkpolicy", "-n", namespace, "-o", "name").stdout == ""


def test_helm_install_with_every_optional_part_on_the_real_api_server_restricted(
    control_plane: ControlPlane, monitoring_crds: Path, namespace: str, tmp_path: Path
) -> None:
    """A real install (no CIDRs given: the chart reads the API server's EndpointSlice), the
    operator pods admitted under Pod Security `restricted`, every optional object present."""
    control_plane.kubectl(
        "label", "namespace", namespace,
        "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/warn=restricted",
    )  # fmt: skip
    values = values_file(tmp_path, every_option(namespace, [namespace]))
    created_slice = _api_server_endpoint_slice(control_plane)
    install = control_plane.helm(
        "install", "cq", str(CHART), "--namespace", namespace, "-f", values, "--wait=false"
    )
    try:
        assert "would violate PodSecurity" not in install.stderr, install.stderr
        # The release notes say which namespaces the gateway policies cover, and warn about
        # scraping twice (the test enables both monitor kinds).
        assert f"NetworkPolicies restrict the gateways in: {namespace}." in install.stdout
        assert "Prometheus scrapes every\ntarget twice" in install.stdout, install.stdout
        pods = wait_for(
            lambda: (
                items
                if len(
                    items := json.loads(
                        control_plane.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout
                    )["items"]
                )
                == 3
                else None
            ),
            60,
            "the 3 operator Pods to be admitted",
        )
        for pod in pods:
            assert pod["spec"]["topologySpreadConstraints"], pod["metadata"]["name"]
            assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
        failed = control_plane.kubectl(
            "get", "events", "-n", namespace, "--field-selector=reason=FailedCreate", "-o", "name"
        ).stdout.strip()  # fmt: skip
        assert failed == ""

        for kind, name in (
            ("servicemonitor", "cq-connquota-operator"),
            ("servicemonitor", "cq-connquota-gateways"),
            ("podmonitor", "cq-connquota-operator"),
            ("podmonitor", "cq-connquota-gateways"),
            ("prometheusrule", "cq-connquota"),
            ("configmap", "cq-connquota-dashboard"),
            ("poddisruptionbudget", "cq-connquota"),
            ("networkpolicy", "cq-connquota-gateways"),
        ):
            control_plane.kubectl("get", kind, name, "-n", namespace)

        # The API server rule is the API server's own EndpointSlice, looked up at install.
        endpoint_slice = json.loads(
            control_plane.kubectl(
                "get", "endpointslice", "kubernetes", "-n", "default", "-o", "json"
            ).stdout
        )
        addresses = {f"{a}/32" for e in endpoint_slice["endpoints"] for a in e["addresses"]}
        ports = [{"port": p["port"], "protocol": "TCP"} for p in endpoint_slice["ports"]]
        policy = json.loads(
            control_plane.kubectl(
                "get", "networkpolicy", "cq-connquota-operator", "-n", namespace, "-o", "json"
            ).stdout
        )
        (egress,) = policy["spec"]["egress"]
        assert {p["ipBlock"]["cidr"] for p in egress["to"]} == addresses
        assert egress["ports"] == ports
        assert any(p == {"port": control_plane.apiserver_port, "protocol": "TCP"} for p in ports), (
            ports
        )
    finally:
        control_plane.helm("uninstall", "cq", "--namespace", namespace, check=False)
        if created_slice:
            control_plane.kubectl(
                "delete", "endpointslice", "kubernetes", "-n", "default", check=False
            )


def _api_server_endpoint_slice(control_plane: ControlPlane) -> bool:
    """Make sure default/kubernetes has its EndpointSlice; True when this test created it.

    A real API server keeps it up to date (its endpoint reconciler); the test control plane
    runs with `--endpoint-reconciler-type=none` (connquota.testing.controlplane): it listens on
    127.0.0.1, which an EndpointSlice may not hold. So the test writes what the reconciler
    would, with a TEST-NET-1 address (192.0.2.1) standing for the loopback one and this API
    server's real port.
    """
    found = control_plane.kubectl(
        "get", "endpointslice", "kubernetes", "-n", "default", "-o", "name", check=False
    )  # fmt: skip
    if found.returncode == 0 and found.stdout.strip():
        return False
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.1"], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": control_plane.apiserver_port, "protocol": "TCP"}],
    }
    control_plane.kubectl("create", "-f", "-", input=json.dumps(slice_))
    return True


def test_helm_upgrade_turns_every_optional_part_on_and_off_again(
    control_plane: ControlPlane, monitoring_crds: Path, namespace: str, tmp_path: Path
) -> None:
    """Default install -> upgrade with every part -> upgrade back: each part comes and goes."""
    values = every_option(namespace, [namespace])
    values["networkPolicy"]["apiServer"] = {"cidrs": ["192.0.2.1/32"], "ports": [6443]}
    kinds = "servicemonitors,podmonitors,prometheusrules,networkpolicies,poddisruptionbudgets"

    def optional_objects() -> set[str]:
        listed = control_plane.kubectl("get", kinds, "-n", namespace, "-o", "name").stdout.split()
        dashboard = control_plane.kubectl(
            "get", "configmap", "cq-connquota-dashboard", "-n", namespace, "-o", "name",
            "--ignore-not-found",
        ).stdout.split()  # fmt: skip
        return set(listed + dashboard)

    control_plane.helm("install", "cq", str(CHART), "--namespace", namespace, "--wait=false")
    try:
        assert optional_objects() == set()
        control_plane.helm(
            "upgrade", "cq", str(CHART), "--namespace", namespace, "--wait=false",
            "-f", values_file(tmp_path, values),
        )  # fmt: skip
        # 4 monitors, the rule, 2 policies, the PDB and the dashboard.
        assert len(optional_objects()) == 9, optional_objects()
        control_plane.helm("upgrade", "cq", str(CHART), "--namespace", namespace, "--reset-values")
        assert optional_objects() == set()
        strategy = control_plane.kubectl(
            "get", "deployment", "cq-connquota", "-n", namespace,
            "-o", "jsonpath={.spec.replicas} {.spec.strategy.type}",
        ).stdout  # fmt: skip
        assert strategy == "1 Recreate"
    finally:
        control_plane.helm("uninstall", "cq", "--namespace", namespace, check=False)
