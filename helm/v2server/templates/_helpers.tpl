{{/* Names, labels and the pieces the Deployment and the ServingRuntime share. */}}

{{- define "v2server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, cut to 63 characters (DNS labels). */}}
{{- define "v2server.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "v2server.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "v2server.labels" -}}
helm.sh/chart: {{ include "v2server.chart" . }}
{{ include "v2server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Never changes over a release's life: Deployment selectors are immutable. */}}
{{- define "v2server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "v2server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "v2server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "v2server.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "v2server.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "v2server.runtimeName" -}}
{{- default (include "v2server.fullname" .) .Values.kserve.runtime.name }}
{{- end }}

{{- define "v2server.inferenceServiceName" -}}
{{- default (include "v2server.fullname" .) .Values.kserve.inferenceService.name }}
{{- end }}

{{/* Flags every mode passes; the model location differs (see the Deployment and the ServingRuntime). */}}
{{- define "v2server.commonArgs" -}}
- --http-port={{ .Values.ports.http }}
- --grpc-port={{ .Values.ports.grpc }}
- --metrics-port={{ .Values.ports.metrics }}
- --strict-readiness={{ .Values.server.strictReadiness }}
- --model-control-mode={{ .Values.server.modelControlMode }}
- --exit-timeout-secs={{ .Values.server.exitTimeoutSeconds }}
- --log-verbose={{ .Values.server.logVerbose }}
{{- range .Values.server.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* One probe from its values: httpGet on the http port, or grpc.health.v1 on the gRPC port. */}}
{{- define "v2server.probe" -}}
{{- if eq .probe.type "grpc" -}}
grpc:
  port: {{ .root.Values.ports.grpc }}
{{- else -}}
httpGet:
  path: {{ .probe.path }}
  port: {{ .root.Values.ports.http }}
{{- end }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/* Requests and limits, with the GPU limit added only when gpu.count > 0. */}}
{{- define "v2server.resources" -}}
{{- $resources := deepCopy (.Values.resources | default dict) }}
{{- if gt (int .Values.gpu.count) 0 }}
{{- $limits := $resources.limits | default dict }}
{{- $_ := set $limits .Values.gpu.resourceName (int .Values.gpu.count) }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/* Pod annotations Prometheus' kubernetes_sd scrape configs read. */}}
{{- define "v2server.prometheusAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.metrics | quote }}
prometheus.io/path: /metrics
{{- end }}

{{/* Reject value combinations the schema cannot express. */}}
{{- define "v2server.validate" -}}
{{- if ge (int .Values.server.exitTimeoutSeconds) (int .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "server.exitTimeoutSeconds (%v) must be below terminationGracePeriodSeconds (%v): the kubelet kills the pod at the grace period, mid-drain" .Values.server.exitTimeoutSeconds .Values.terminationGracePeriodSeconds) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- end }}
