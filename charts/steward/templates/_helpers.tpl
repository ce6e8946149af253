{{/*
Names and labels shared by every template. Kubernetes names are DNS labels: at most 63 characters, no
trailing dash.
*/}}

{{/* The chart's name. */}}
{{- define "steward.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name, the base of every object's name. A release already called after the chart
("steward", "steward-prod") keeps its own name rather than becoming "steward-prod-steward".
*/}}
{{- define "steward.fullname" -}}
{{- $name := include "steward.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The name of the cluster-scoped RBAC objects. ClusterRoles are shared by the whole cluster, so the release's
namespace is part of the name: two releases of the same name in different namespaces never collide.
*/}}
{{- define "steward.clusterName" -}}
{{- printf "%s-%s" (include "steward.fullname" .) .Release.Namespace }}
{{- end }}

{{/* chart label value: name-version, with "+" (invalid in labels) replaced. */}}
{{- define "steward.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator's pods; they never change after install. */}}
{{- define "steward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "steward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on every object the chart creates, apart from the component label. */}}
{{- define "steward.commonLabels" -}}
helm.sh/chart: {{ include "steward.chart" . }}
app.kubernetes.io/name: {{ include "steward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: steward
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels on the operator and everything that serves it. */}}
{{- define "steward.labels" -}}
{{ include "steward.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "steward.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "steward.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag of the operator image; the tag defaults to the chart's appVersion. */}}
{{- define "steward.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* repository:tag of the predictor image the operator's children run. */}}
{{- define "steward.predictorImage" -}}
{{- printf "%s:%s" .Values.predictorImage.repository (default .Chart.AppVersion .Values.predictorImage.tag) }}
{{- end }}

{{/*
The container security context of every pod the chart runs: non-root, nothing to escalate to, a read-only
root file system and no Linux capabilities.
*/}}
{{- define "steward.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The monitor's objects: the release's full name with a -monitor suffix. */}}
{{- define "steward.monitorName" -}}
{{- printf "%s-monitor" (include "steward.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* Labels that select the monitor's pods. */}}
{{- define "steward.monitorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "steward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: monitor
{{- end }}

{{/* Labels on the monitor and everything that serves it. */}}
{{- define "steward.monitorLabels" -}}
{{ include "steward.commonLabels" . }}
app.kubernetes.io/component: monitor
{{- end }}

{{/* repository:tag of the monitor image. */}}
{{- define "steward.monitorImage" -}}
{{- printf "%s:%s" .Values.monitor.image.repository (default .Chart.AppVersion .Values.monitor.image.tag) }}
{{- end }}

{{/* The Secret holding the monitor's ingest key: the one named in values, or the one the chart generates. */}}
{{- define "steward.ingestKeySecret" -}}
{{- .Values.monitor.ingestKeySecret | default (printf "%s-ingest-key" (include "steward.monitorName" .)) }}
{{- end }}
