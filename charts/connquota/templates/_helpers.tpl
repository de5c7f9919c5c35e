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

{{- define "connquota.labels" -}}
app.kubernetes.io/name: connquota-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "connquota.selectorLabels" -}}
app.kubernetes.io/name: connquota-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
