{{- define "connquota.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "connquota.serviceAccountName" -}}
{{- default (include "connquota.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- /* "true" when the operator runs more than one replica (peering only: standalone with
replicas > 1 fails here, with the reason). */ -}}
{{- define "connquota.multiReplica" -}}
{{- if gt (int .Values.replicas) 1 -}}
{{- if ne .Values.mode "peering" -}}
{{- fail (printf "replicas: %d needs mode: peering (standalone runs exactly one operator; kopf peering lets one replica act at a time)" (int .Values.replicas)) -}}
{{- end -}}
true
{{- else -}}
false
{{- end -}}
{{- end -}}

{{- /* The label the operator puts on every gateway pod (connquota/operator/names.py:
GATEWAY_APP) and the gateways' HTTP port (consumers, peers, /metrics;
connquota/operator/builders/services.py: GATEWAY_PORT). */ -}}
{{- define "connquota.gatewaySelectorLabels" -}}
app.kubernetes.io/name: connquota-gateway
{{- end -}}
{{- define "connquota.gatewayPort" -}}8080{{- end -}}
{{- define "connquota.gatewayTLSPort" -}}8443{{- end -}}

{{- /* Where gateway pods run, for the monitors: the watched namespaces, or every namespace. */ -}}
{{- define "connquota.gatewayNamespaceSelector" -}}
{{- if .Values.watchNamespaces -}}
matchNames:
  {{- toYaml .Values.watchNamespaces | nindent 2 }}
{{- else -}}
any: true
{{- end -}}
{{- end -}}

{{- define "connquota.labels" -}}
app.kubernetes.io/name: connquota-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- /* The chart's labels merged with extra ones (a map; an extra key wins): call with
(dict "ctx" $ "extra" $map). */ -}}
{{- define "connquota.labelsWith" -}}
{{- toYaml (merge (dict) (.extra | default dict) (include "connquota.labels" .ctx | fromYaml)) -}}
{{- end -}}

{{- define "connquota.selectorLabels" -}}
app.kubernetes.io/name: connquota-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* Rules on cluster-scoped objects (and Events): always in the ClusterRole. */ -}}
{{- define "connquota.clusterRules" -}}
# Pools: kopf watches them and keeps its finalizer and progress annotations on them.
- apiGroups: [connquota.io]
  resources: [exchangeegresspools]
  verbs: [list, watch, patch]
# Pool status: budgets, holders, Ready and EgressVerified.
- apiGroups: [connquota.io]
  resources: [exchangeegresspools/status]
  verbs: [patch]
# kopf rescans its resources when CRDs change.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
# Events on quotas (in their namespace) and on pools (kopf and the operator post those in
# "default"); an Event carries no secret.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Nodes: kopf index and event handler (cordoned_nodes, node_event): a gateway pod on a cordoned
# node is moved off it (its connections first, then evicted), so `kubectl drain` waits for that.
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
{{- if gt (len .Values.watchNamespaces) 0 }}
# kopf follows the watched namespaces being created and deleted.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- if eq .Values.mode "peering" }}
# kopf peering: the operator replicas elect one active instance.
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [list, watch, patch]
{{- end }}
{{- end -}}

{{- /* Rules on namespaced objects: the ClusterRole (cluster-wide) or one Role per watched
namespace. */ -}}
{{- define "connquota.namespacedRules" -}}
# Quotas: kopf watches them and keeps its finalizer and progress annotations on them.
- apiGroups: [connquota.io]
  resources: [exchangeconnectionquotas]
  verbs: [list, watch, patch]
- apiGroups: [connquota.io]
  resources: [exchangeconnectionquotas/status]
  verbs: [patch]
# Owned objects carry blockOwnerDeletion: clusters enabling the OwnerReferencesPermissionEnforcement
# admission plugin (OpenShift) require this to set it.
- apiGroups: [connquota.io]
  resources: [exchangeconnectionquotas/finalizers]
  verbs: [update]
# Plan and ledger ConfigMaps (server-side apply; streamsFrom reads). get/list/watch are also
# granted to the gateways (RBAC lets the operator grant only what it holds).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch]
# The gateways' ServiceAccount, headless and client Services (server-side apply).
- apiGroups: [""]
  resources: [serviceaccounts, services]
  verbs: [get, create, patch]
# Gateway StatefulSets: kopf index and event handler (list/watch), server-side apply.
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch]
# The gateways' Role and RoleBinding (server-side apply).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, patch]
# Gateway Leases: kopf index (list/watch), pre-created by the operator (create); get, update and
# patch are granted to the gateways on their own Leases.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, update, patch]
# Gateway pods: kopf index and event handler; list and watch are also granted to the gateways by
# their Role (peers find each other by Pod IP).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Rollouts of a new gateway pod template: the operator evicts outdated gateway pods one by one
# through the Eviction API (so their PodDisruptionBudget decides); so are gateway pods on a lost
# node (NotReady and tainted unreachable).
- apiGroups: [""]
  resources: [pods/eviction]
  verbs: [create]
# Force-delete a Terminating gateway pod on a lost node after its Lease lapsed (node_loss.py):
# its kubelet will never finish the deletion. The second ValidatingAdmissionPolicy
# (gateway-pods-policy.yaml) lets the operator delete only Terminating gateway pods.
- apiGroups: [""]
  resources: [pods]
  verbs: [delete]
# Gateway pod labels: connquota.io/holds-connections (the pods the quota's PodDisruptionBudget
# protects) and, for podLabel pools, connquota.io/egress. The ValidatingAdmissionPolicy
# (gateway-pods-policy.yaml) lets the operator change only these labels, of gateway pods only.
- apiGroups: [""]
  resources: [pods]
  verbs: [patch]
# A quota's credential Secrets must exist: read as metadata only (PartialObjectMetadata), never
# listed or watched. create: each quota's peer-token Secret (created once, never updated).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
{{- if eq .Values.mode "peering" }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [list, watch, patch]
{{- end }}
{{- end -}}
