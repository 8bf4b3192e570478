{{/* The chart's name, overridable. */}}
{{- define "dcr-bootstrap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name of the release's objects: at most 52 characters, so that "-dcr-client" still fits 63. */}}
{{- define "dcr-bootstrap.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dcr-bootstrap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dcr-bootstrap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dcr-bootstrap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dcr-bootstrap.labels" -}}
helm.sh/chart: {{ include "dcr-bootstrap.chart" . }}
{{ include "dcr-bootstrap.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "dcr-bootstrap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dcr-bootstrap.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dcr-bootstrap.secretName" -}}
{{- default (printf "%s-dcr-client" (include "dcr-bootstrap.fullname" .)) .Values.shared.secretName -}}
{{- end -}}

{{- define "dcr-bootstrap.leaseName" -}}
{{- default (printf "%s-dcr-lock" (include "dcr-bootstrap.fullname" .)) .Values.shared.leaseName -}}
{{- end -}}

{{- define "dcr-bootstrap.shared" -}}
{{- if eq .Values.mode "shared" }}true{{ end -}}
{{- end -}}

{{/* Whether the bootstrapper runs as a native sidecar (`watch`) rather than a one-shot init container. */}}
{{- define "dcr-bootstrap.watch" -}}
{{- if or (eq .Values.mode "sidecar") .Values.shared.watch }}true{{ end -}}
{{- end -}}

{{/* Whether the bootstrapper talks to the Kubernetes API (a token, a Role): the shared Secret, or Events. */}}
{{- define "dcr-bootstrap.apiAccess" -}}
{{- if or (eq .Values.mode "shared") .Values.events.enabled }}true{{ end -}}
{{- end -}}

{{- define "dcr-bootstrap.clientName" -}}
{{- if .Values.clientName -}}
{{- .Values.clientName -}}
{{- else if eq .Values.mode "sidecar" -}}
{{- printf "%s-{hostname}" (include "dcr-bootstrap.fullname" .) -}}
{{- else -}}
{{- include "dcr-bootstrap.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "dcr-bootstrap.clientFile" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.credentials.mountPath) .Values.credentials.fileName -}}
{{- end -}}

{{- define "dcr-bootstrap.image" -}}
{{- printf "%s:%s" .Values.bootstrap.image.repository (default .Chart.AppVersion .Values.bootstrap.image.tag) -}}
{{- end -}}

{{/* Rules values.schema.json cannot say well; each failure says what to set. */}}
{{- define "dcr-bootstrap.validate" -}}
{{- if not (or .Values.issuer.url (and .Values.issuer.keycloakUrl .Values.issuer.realm)) -}}
{{- fail "set issuer.url (any RFC 8414 issuer), or issuer.keycloakUrl and issuer.realm (a Keycloak realm)" -}}
{{- end -}}
{{- if and (eq .Values.mode "sidecar") (or .Values.shared.rollout .Values.shared.watch) -}}
{{- fail "shared.rollout and shared.watch apply to mode: shared only; unset them or set mode: shared" -}}
{{- end -}}
{{- if and (eq .Values.mode "sidecar") (or .Values.shared.secretName .Values.shared.leaseName) -}}
{{- fail "shared.secretName and shared.leaseName apply to mode: shared only (sidecar mode keeps no Secret)" -}}
{{- end -}}
{{- if and .Values.metrics.podMonitor.enabled (not (include "dcr-bootstrap.watch" .)) -}}
{{- fail "metrics.podMonitor needs a `watch` bootstrapper serving /metrics: set mode: sidecar or shared.watch: true" -}}
{{- end -}}
{{- range .Values.bootstrap.env -}}
{{- if has .name (list "DCR_K8S_SECRET" "DCR_K8S_LEASE" "DCR_K8S_ROLLOUT" "DCR_DELETE_ON_EXIT" "DCR_INITIAL_ACCESS_TOKEN" "DCR_CLIENT_FILE" "DCR_METRICS_ADDR" "DCR_K8S_POD_NAME" "DCR_K8S_POD_NAMESPACE") -}}
{{- fail (printf "bootstrap.env may not set %s: the chart sets it from mode, shared.*, initialAccessToken, credentials, metrics and events" .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
