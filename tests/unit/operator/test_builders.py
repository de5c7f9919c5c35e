"""The pure builders: every owned object as the operator applies it."""

from __future__ import annotations

import json

from operator_factories import make_pod_plan, make_quota

from connquota.api.plan import PodPlan
from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.operator import builders, names


def _owned_correctly(obj: dict) -> None:
    refs = obj["metadata"]["ownerReferences"]
    assert refs == [
        {
            "apiVersion": "connquota.io/v1alpha1",
            "kind": "ExchangeConnectionQuota",
            "name": "md",
            "uid": "quota-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert obj["metadata"]["namespace"] == "trading"
    assert obj["metadata"]["labels"][names.LABEL_QUOTA] == "md"


def _all_objects(quota: ExchangeConnectionQuota, pool: ExchangeEgressPool) -> list[dict]:
    return [
        builders.build_plan_configmap(quota, make_pod_plan(0)),
        builders.build_lease(quota, 0),
        builders.build_service_account(quota),
        builders.build_role(quota, 4),
        builders.build_role_binding(quota),
        builders.build_headless_service(quota),
        builders.build_client_service(quota),
        builders.build_statefulset(quota, 2, pool.spec.addresses[:1]),
        builders.build_pod_disruption_budget(quota),
    ]


def test_every_owned_object_has_a_controller_owner_reference_to_its_quota(quota, pool) -> None:
    for obj in _all_objects(quota, pool):
        _owned_correctly(obj)


def test_builders_are_deterministic_and_carry_their_content_hash(quota, pool) -> None:
    first = _all_objects(quota, pool)
    second = _all_objects(make_quota(), pool)
    assert first == second
    for obj in first:
        if obj["kind"] == "Lease":
            continue  # created once, never re-applied
        assert obj["metadata"]["annotations"][names.ANNOTATION_HASH] == builders.content_hash(obj)


def test_plan_configmap_holds_the_pod_plan_and_no_secret(quota) -> None:
    cm = builders.build_plan_configmap(quota, make_pod_plan(2))
    assert cm["metadata"]["name"] == "md-plan-2"
    assert cm["metadata"]["labels"][names.LABEL_NAME] == "connquota-gateway"
    assert cm["metadata"]["labels"][names.LABEL_ORDINAL] == "2"
    plan = PodPlan.model_validate_json(cm["data"]["plan.json"])
    assert plan.ordinal == 2 and plan.generation == 3
    assert [c.model_dump() for c in plan.credentials] == [
        {
            "name": "main",
            "accountId": "acct-1",
            "keyId": None,
            "secretName": "binance-main",
            "mountPath": "/var/run/connquota/credentials/main",
            "apiKeyKey": "apiKey",
            "apiSecretKey": "apiSecret",
            "passphraseKey": None,
            "deribitAuth": None,
        }
    ]
    assert "deribitAuth" not in cm["data"]["plan.json"]  # absent: plans of today unchanged
    assert list(cm["data"]) == ["plan.json"]
    assert "binaryData" not in cm


def test_a_changed_plan_changes_the_hash_and_an_equal_plan_keeps_it(quota) -> None:
    a = builders.build_plan_configmap(quota, make_pod_plan(0))
    b = builders.build_plan_configmap(quota, make_pod_plan(0))
    c = builders.build_plan_configmap(quota, make_pod_plan(0, address="a2"))
    ha, hb, hc = (x["metadata"]["annotations"][names.ANNOTATION_HASH] for x in (a, b, c))
    assert ha == hb != hc


def test_plan_json_is_canonical() -> None:
    text = builders.plan_json(make_pod_plan(0))
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def test_lease_is_empty_and_named_like_the_pod(quota) -> None:
    lease = builders.build_lease(quota, 3)
    assert lease["metadata"]["name"] == "md-gw-3" == names.pod_name("md", 3)
    assert lease["spec"] == {}


def test_statefulset_is_parallel_on_delete_with_downward_identity(quota, pool) -> None:
    sts = builders.build_statefulset(quota, 3, [])
    spec = sts["spec"]
    assert sts["metadata"]["name"] == "md-gw"
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"] == {"type": "OnDelete"}
    assert spec["serviceName"] == "md-gw-peers"
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "md-gw"
    (container,) = pod["containers"]
    assert container["command"] == ["connquota", "gateway", "--in-cluster"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_credentials_are_mounted_as_files_and_never_in_env(quota) -> None:
    sts = builders.build_statefulset(quota, 1, [])
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for env in container["env"]:
        assert "secretKeyRef" not in env.get("valueFrom", {})
    assert "envFrom" not in container
    secrets = {v["secret"]["secretName"]: v for v in pod["volumes"] if "secret" in v}
    assert set(secrets) == {"binance-main", "binance-sub", "md-gw-peer"}
    assert [i["key"] for i in secrets["md-gw-peer"]["secret"]["items"]] == ["token"]
    assert [i["key"] for i in secrets["binance-sub"]["secret"]["items"]] == [
        "apiKey",
        "apiSecret",
        "pass",
    ]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/var/run/connquota/credentials/main"]["readOnly"] is True
    assert mounts["/var/run/connquota/credentials/sub"]["readOnly"] is True


def test_the_peer_token_is_a_new_secret_owned_by_the_quota_and_a_mounted_file(quota) -> None:
    first, second = builders.build_peer_secret(quota), builders.build_peer_secret(quota)
    assert first["metadata"]["name"] == "md-gw-peer"
    assert first["metadata"]["ownerReferences"][0]["uid"] == "quota-uid"
    assert len(first["stringData"]["token"]) == 64
    assert first["stringData"]["token"] != second["stringData"]["token"]  # created, not applied
    (container,) = builders.build_statefulset(quota, 1, [])["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "peer-token")
    assert env["CONNQUOTA_PEER_TOKEN_FILE"] == mount["mountPath"] + "/token"


def test_attempt_log_lives_on_an_empty_dir(quota) -> None:
    sts = builders.build_statefulset(quota, 1, [])
    pod = sts["spec"]["template"]["spec"]
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    assert state == {"name": "state", "emptyDir": {}}
    (container,) = pod["containers"]
    state_mount = next(m for m in container["volumeMounts"] if m["name"] == "state")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CONNQUOTA_STATE_DIR"] == state_mount["mountPath"]


def test_pods_meet_the_restricted_pod_security_profile(quota) -> None:
    pod = builders.build_statefulset(quota, 1, [])["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["readOnlyRootFilesystem"] is True
    assert "hostNetwork" not in pod


def test_bind_addresses_pin_pods_to_their_nodes(quota, pool) -> None:
    sts = builders.build_statefulset(quota, 1, pool.spec.addresses[:2])
    terms = sts["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-1", "node-2"]}
            ]
        }
    ]


def test_one_pod_label_address_goes_on_the_template_several_go_on_each_pod(quota, pool) -> None:
    one = builders.build_statefulset(quota, 1, [pool.spec.address("l1")])
    assert one["spec"]["template"]["metadata"]["labels"][names.LABEL_EGRESS] == "egress-7"
    two = builders.build_statefulset(quota, 1, [pool.spec.address("l1"), pool.spec.address("l2")])
    assert names.LABEL_EGRESS not in two["spec"]["template"]["metadata"]["labels"]
    assert builders.pod_egress_label(make_pod_plan(1, address="l2")) == "egress-8"
    assert builders.pod_egress_label(make_pod_plan(1, address="a1")) is None


def test_pod_overrides_are_merged_without_replacing_selector_labels() -> None:
    quota = make_quota(
        gateway={
            "podOverrides": {
                "labels": {"team": "mm", names.LABEL_QUOTA: "evil"},
                "annotations": {"a": "b"},
                "nodeSelector": {"pool": "egress"},
                "tolerations": [{"key": "egress", "operator": "Exists"}],
                "priorityClassName": "high",
            }
        }
    )
    template = builders.build_statefulset(quota, 1, [])["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "mm"
    assert template["metadata"]["labels"][names.LABEL_QUOTA] == "md"
    annotations = dict(template["metadata"]["annotations"])
    assert annotations.pop(names.ANNOTATION_TEMPLATE_HASH)
    assert annotations == {"a": "b"}
    assert template["spec"]["nodeSelector"] == {"pool": "egress"}
    assert template["spec"]["tolerations"] == [{"key": "egress", "operator": "Exists"}]
    assert template["spec"]["priorityClassName"] == "high"


def test_consumer_token_is_a_mounted_file(quota) -> None:
    quota = make_quota(gateway={"consumerAuthSecretRef": {"name": "consumer-token"}})
    pod = builders.build_statefulset(quota, 1, [])["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "consumer-auth")
    assert vol["secret"]["secretName"] == "consumer-token"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["CONNQUOTA_CONSUMER_TOKEN_FILE"].endswith("/token")


def test_consumer_tls_mounts_the_secret_directory_and_opens_the_wss_port(quota) -> None:
    assert [p["name"] for p in builders.build_client_service(quota)["spec"]["ports"]] == ["http"]
    quota = make_quota(
        gateway={"image": "example/gw:1", "consumerTLSSecretRef": {"name": "gw-tls"}}
    )
    pod = builders.build_statefulset(quota, 1, [])["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "consumer-tls")
    assert vol["secret"]["secretName"] == "gw-tls"
    assert [i["key"] for i in vol["secret"]["items"]] == ["tls.crt", "tls.key"]
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "consumer-tls")
    assert "subPath" not in mount  # a renewed Secret reaches the running pod
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CONNQUOTA_TLS_CERT_FILE"] == mount["mountPath"] + "/tls.crt"
    assert env["CONNQUOTA_TLS_KEY_FILE"] == mount["mountPath"] + "/tls.key"
    assert {"name": "wss", "containerPort": 8443, "protocol": "TCP"} in container["ports"]
    for service in (builders.build_client_service(quota), builders.build_headless_service(quota)):
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        assert ports == {"http": 8080, "wss": 8443}


def test_services_headless_publishes_not_ready_addresses(quota) -> None:
    headless = builders.build_headless_service(quota)
    assert headless["metadata"]["name"] == "md-gw-peers"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    client = builders.build_client_service(quota)
    assert client["metadata"]["name"] == "md-gw"
    assert "publishNotReadyAddresses" not in client["spec"]
    assert headless["spec"]["selector"] == client["spec"]["selector"] == names.selector_labels("md")


def test_pdb_refuses_evicting_pods_that_hold_connections_and_selects_only_those(quota) -> None:
    pdb = builders.build_pod_disruption_budget(quota)
    assert pdb["spec"]["maxUnavailable"] == 0
    assert pdb["spec"]["selector"]["matchLabels"] == {
        **names.selector_labels("md"),
        names.LABEL_HOLDS_CONNECTIONS: "true",
    }
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # The label is the operator's, per pod: never on the template (a successor starts without).
    sts = builders.build_statefulset(quota, 2, [])
    assert names.LABEL_HOLDS_CONNECTIONS not in sts["spec"]["template"]["metadata"]["labels"]


def test_role_names_only_its_own_plan_configmaps_and_leases(quota) -> None:
    role = builders.build_role(quota, 3)
    rules = {tuple(r["resources"]): r for r in role["rules"]}
    cms = rules[("configmaps",)]
    assert cms["resourceNames"] == ["md-plan-0", "md-plan-1", "md-plan-2"]
    assert set(cms["verbs"]) == {"get", "list", "watch"}
    leases = rules[("leases",)]
    assert leases["resourceNames"] == ["md-gw-0", "md-gw-1", "md-gw-2"]
    assert "create" not in leases["verbs"] and "delete" not in leases["verbs"]
    # Pods: only list and watch (peers by Pod IP); never get, patch or any Secret.
    assert set(rules[("pods",)]["verbs"]) == {"list", "watch"}
    assert ("secrets",) not in rules
    for rule in role["rules"]:
        assert "create" not in rule["verbs"]


def test_role_binding_binds_the_gateway_service_account(quota) -> None:
    rb = builders.build_role_binding(quota)
    assert rb["roleRef"]["name"] == "md-gw"
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "md-gw", "namespace": "trading"}]
    sa = builders.build_service_account(quota)
    assert sa["metadata"]["name"] == "md-gw"


def test_consumer_queue_and_slow_consumer_policy_reach_the_gateway_only_when_set() -> None:
    """Defaults add nothing to the pod template (an existing fleet is not rolled out); a
    quota's own values become the gateway's environment and change the template."""

    def env_of(quota: ExchangeConnectionQuota) -> dict[str, str]:
        sts = builders.build_statefulset(quota, 1, [])
        container = sts["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in container["env"]}

    default = env_of(make_quota())
    assert "CONNQUOTA_CONSUMER_QUEUE" not in default
    assert "CONNQUOTA_SLOW_CONSUMER" not in default
    assert "CONNQUOTA_CONSUMER_SEND_BUFFER" not in default
    tuned = env_of(
        make_quota(
            gateway={
                "consumerQueueFrames": 500,
                "slowConsumer": "drop",
                "consumerSendBufferBytes": 65536,
            }
        )
    )
    assert tuned["CONNQUOTA_CONSUMER_QUEUE"] == "500"
    assert tuned["CONNQUOTA_SLOW_CONSUMER"] == "drop"
    assert tuned["CONNQUOTA_CONSUMER_SEND_BUFFER"] == "65536"
