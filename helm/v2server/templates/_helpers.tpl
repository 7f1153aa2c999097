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
{{- include "v2server.tlsArgs" . }}
{{- if .Values.state.enabled }}
- --state-dir={{ include "v2server.stateDir" . }}
{{- end }}
{{- range .Values.server.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Where the TLS Secret is mounted (tls.enabled). */}}
{{- define "v2server.tlsDir" -}}
/etc/v2server/tls
{{- end }}

{{/* The flags that turn TLS on for the chosen transports; nothing when tls.enabled is off. */}}
{{- define "v2server.tlsArgs" -}}
{{- $tls := .Values.tls }}
{{- $dir := include "v2server.tlsDir" . }}
{{- if $tls.enabled }}
{{- if $tls.http }}
- --http-ssl-cert={{ $dir }}/tls.crt
- --http-ssl-key={{ $dir }}/tls.key
{{- if $tls.mutual }}
- --http-ssl-client-ca={{ $dir }}/ca.crt
{{- end }}
{{- end }}
{{- if $tls.grpc }}
- --grpc-use-ssl=true
- --grpc-server-cert={{ $dir }}/tls.crt
- --grpc-server-key={{ $dir }}/tls.key
{{- if $tls.mutual }}
- --grpc-use-ssl-mutual=true
- --grpc-root-cert={{ $dir }}/ca.crt
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The TLS Secret as a volume: only the keys the server reads, so a missing one fails the mount, not the server. */}}
{{- define "v2server.tlsVolume" -}}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      {{- if .Values.tls.mutual }}
      - key: ca.crt
        path: ca.crt
      {{- end }}
{{- end }}

{{/* Where --state-dir lives (state.enabled): aliases, async jobs and their results, outside the model repository,
     which may stay read-only. A claim keeps them across pod restarts; an emptyDir only as long as the pod. */}}
{{- define "v2server.stateDir" -}}
/var/lib/v2server
{{- end }}

{{- define "v2server.stateVolume" -}}
- name: state
  {{- if .Values.state.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.state.existingClaim }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.state.sizeLimit }}
  {{- end }}
{{- end }}

{{- define "v2server.stateVolumeMount" -}}
- name: state
  mountPath: {{ include "v2server.stateDir" . }}
{{- end }}

{{- define "v2server.tlsVolumeMount" -}}
- name: tls
  mountPath: {{ include "v2server.tlsDir" . }}
  readOnly: true
{{- end }}

{{/* One probe from its values: httpGet on the http port (HTTPS under tls.http), grpc.health.v1 on the gRPC port,
     or a TCP connect to the http port. The kubelet's probes neither speak TLS over gRPC nor present client
     certificates: refuse those. */}}
{{- define "v2server.probe" -}}
{{- $tls := .root.Values.tls -}}
{{- if and $tls.enabled $tls.grpc (eq .probe.type "grpc") -}}
{{- fail (printf "probes.%s.type is grpc, but tls.grpc is on and the kubelet's grpc probe cannot speak TLS: set probes.%s.type=http, or tls.grpc=false" .name .name) -}}
{{- end -}}
{{- if and $tls.enabled $tls.http $tls.mutual (eq .probe.type "http") -}}
{{- fail (printf "probes.%s is an httpGet probe, but tls.mutual makes the http port require a client certificate, which the kubelet cannot present: set probes.%s.type=tcp (a TCP connect), probes.%s.enabled=false, or type grpc with tls.grpc=false" .name .name .name) -}}
{{- end -}}
{{- if eq .probe.type "grpc" -}}
grpc:
  port: {{ .root.Values.ports.grpc }}
{{- else if eq .probe.type "tcp" -}}
tcpSocket:
  port: {{ .root.Values.ports.http }}
{{- else -}}
httpGet:
  path: {{ .probe.path }}
  port: {{ .root.Values.ports.http }}
  {{- if and $tls.enabled $tls.http }}
  scheme: HTTPS
  {{- end }}
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
{{- include "v2server.metricsScheme" . }}
{{- end }}

{{/* The server serves metrics with REST's HTTPS settings: under tls.http, scrapers must use https. */}}
{{- define "v2server.metricsScheme" -}}
{{- if and .Values.tls.enabled .Values.tls.http }}
prometheus.io/scheme: https
{{- end }}
{{- end }}

{{/* Reject value combinations the schema cannot express. */}}
{{- define "v2server.validate" -}}
{{- if ge (int .Values.server.exitTimeoutSeconds) (int .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "server.exitTimeoutSeconds (%v) must be below terminationGracePeriodSeconds (%v): the kubelet kills the pod at the grace period, mid-drain" .Values.server.exitTimeoutSeconds .Values.terminationGracePeriodSeconds) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- include "v2server.validateTLS" . }}
{{- end }}

{{/* TLS settings the schema cannot check (the ServingRuntime includes this on its own). */}}
{{- define "v2server.validateTLS" -}}
{{- $tls := .Values.tls }}
{{- if $tls.enabled }}
{{- if not $tls.secretName }}
{{- fail "tls.secretName is required when tls.enabled: the Secret holding tls.crt and tls.key (and ca.crt when tls.mutual)" }}
{{- end }}
{{- if and .Values.kserve.enabled (eq .Values.kserve.deploymentMode "Knative") }}
{{- $routed := ternary "grpc" "http" (eq .Values.kserve.protocolVersion "grpc-v2") }}
{{- if index $tls $routed }}
{{- fail (printf "tls.%s cannot be on with kserve.deploymentMode=Knative and protocolVersion=%s: Knative's queue-proxy forwards plain HTTP/h2c to the container (terminate TLS at Knative's ingress), so set tls.%s=false" $routed .Values.kserve.protocolVersion $routed) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* NOTES.txt's TLS lines. */}}
{{- define "v2server.tlsNote" }}
{{- $tls := .Values.tls }}
{{- if $tls.enabled }}

TLS on {{ if and $tls.http $tls.grpc }}REST, metrics and gRPC{{ else if $tls.http }}REST and metrics (gRPC is plaintext){{ else }}gRPC (REST and metrics are plaintext){{ end }}, with the certificate in Secret "{{ $tls.secretName }}".
{{- if $tls.mutual }}
Mutual TLS: clients{{ if $tls.http }}, Prometheus included,{{ end }} must present a certificate signed by the Secret's ca.crt.
{{- end }}
{{- end }}
{{- end }}
