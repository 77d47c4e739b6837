{{/* Names ------------------------------------------------------------------ */}}

{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" . }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- end -}}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Wiring ----------------------------------------------------------------- */}}

{{/* Fails early on combinations the schema cannot express well. */}}
{{- define "portcullis.validate" -}}
{{- if and (eq .Values.mode "istio") (ne (include "portcullis.transport" .) "tcp") -}}
{{- fail "mode=istio needs transport=tcp: Istio's extension providers reach portcullis at host:port, not over a Unix socket" -}}
{{- end -}}
{{- if and (eq .Values.mode "envoy") (eq (int .Values.envoy.port) (int .Values.workload.app.port)) -}}
{{- fail "envoy.port and workload.app.port must differ: Envoy listens in front of the app in the same pod" -}}
{{- end -}}
{{- if and (eq .Values.policies.source "files") (not .Values.policies.existingConfigMap) (not .Values.policies.bundled) (not .Values.policies.files) -}}
{{- fail "policies.source=files needs policies: keep policies.bundled, set policies.files, or name policies.existingConfigMap" -}}
{{- end -}}
{{- if .Values.policies.candidate.enabled -}}
{{- if and (eq .Values.policies.source "files") (not .Values.policies.candidate.existingConfigMap) -}}
{{- fail "policies.candidate.enabled with policies.source=files needs policies.candidate.existingConfigMap (the ConfigMap holding the candidate set)" -}}
{{- end -}}
{{- if and (eq .Values.policies.source "kubernetes") (eq (trim .Values.policies.candidate.selector) (trim .Values.policies.kubernetes.selector)) -}}
{{- fail "policies.candidate.selector must differ from policies.kubernetes.selector: the candidate would be the live set" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.apiKeys.secret .Values.apiKeys.kubernetes.enabled -}}
{{- fail "apiKeys.secret and apiKeys.kubernetes.enabled are exclusive: choose the mounted Secret or Secrets through the API" -}}
{{- end -}}
{{- if .Values.workload.create -}}
{{- $drain := add (int .Values.shutdown.drainDelaySeconds) (int .Values.shutdown.drainTimeoutSeconds) -}}
{{- if le (int .Values.workload.terminationGracePeriodSeconds) $drain -}}
{{- fail (printf "workload.terminationGracePeriodSeconds (%d) must exceed shutdown.drainDelaySeconds + shutdown.drainTimeoutSeconds (%d): the kubelet would kill portcullis mid-drain" (int .Values.workload.terminationGracePeriodSeconds) $drain) -}}
{{- end -}}
{{- end -}}
{{- /* portcullis refuses this config at start; say so at install time, naming the value. */ -}}
{{- $authn := default (dict) (include "portcullis.config" . | fromYaml).authn -}}
{{- $grouping := 0 -}}
{{- range $iss := (default (list) $authn.issuers) -}}
{{- if or (not (hasKey $iss "group_claims")) $iss.group_claims -}}{{- $grouping = add1 $grouping -}}{{- end -}}
{{- end -}}
{{- if and (gt $grouping 1) (not $authn.group_namespace) -}}
{{- fail "groupNamespace: more than one issuer maps group claims (group_claims defaults to [groups, roles]); set groupNamespace to shared (any issuer may grant any group) or per_issuer" -}}
{{- end -}}
{{- end -}}

{{/* "unix" or "tcp": transport, or by default unix for plain Envoy and tcp for Istio. */}}
{{- define "portcullis.transport" -}}
{{- if .Values.transport -}}
{{- .Values.transport -}}
{{- else if eq .Values.mode "istio" -}}
tcp
{{- else -}}
unix
{{- end -}}
{{- end -}}

{{- define "portcullis.socketDir" -}}
{{- dir .Values.socket.path -}}
{{- end -}}

{{/* Address a client uses to reach the ext_authz gRPC server inside the pod. */}}
{{- define "portcullis.grpcClientAddress" -}}
{{- if eq (include "portcullis.transport" .) "unix" -}}
{{- printf "unix:%s" .Values.socket.path -}}
{{- else -}}
{{- $host := .Values.grpc.bindAddress -}}
{{- if or (eq $host "0.0.0.0") (eq $host "::") -}}{{- $host = "127.0.0.1" -}}{{- end -}}
{{- printf "http://%s:%d" $host (int .Values.grpc.port) -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.policyConfigMapName" -}}
{{- if and (eq .Values.policies.source "files") .Values.policies.existingConfigMap -}}
{{- .Values.policies.existingConfigMap -}}
{{- else -}}
{{- printf "%s-policies" (include "portcullis.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.apiKeyNamespaces" -}}
{{- $ns := .Values.apiKeys.kubernetes.namespaces -}}
{{- if not $ns -}}{{- $ns = list .Release.Namespace -}}{{- end -}}
{{- toJson (uniq $ns) -}}
{{- end -}}

{{- define "portcullis.watchNamespaces" -}}
{{- $ns := .Values.policies.kubernetes.namespaces -}}
{{- if not $ns -}}{{- $ns = list .Release.Namespace -}}{{- end -}}
{{- toJson (uniq $ns) -}}
{{- end -}}

{{/*
The config file: chart defaults <- .Values.config <- what the chart derives (listen, policy,
issuers), so that Envoy, the probes and the volumes always agree with the server.
*/}}
{{- define "portcullis.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $listen := dict "admin" (printf "%s:%d" .Values.admin.bindAddress (int .Values.admin.port)) -}}
{{- /* /policy and later diagnostics: loopback only (portcullis refuses anything else). */ -}}
{{- if .Values.diagnostics.enabled -}}
{{- $_ := set $listen "diagnostics" (printf "127.0.0.1:%d" (int .Values.diagnostics.port)) -}}
{{- else -}}
{{- $_ := set $listen "diagnostics" nil -}}
{{- end -}}
{{- if eq (include "portcullis.transport" .) "unix" -}}
{{- $_ := set $listen "unix" .Values.socket.path -}}
{{- $_ := set $listen "grpc" nil -}}
{{- else -}}
{{- $_ := set $listen "unix" nil -}}
{{- $_ := set $listen "grpc" (printf "%s:%d" .Values.grpc.bindAddress (int .Values.grpc.port)) -}}
{{- end -}}
{{- $_ := set $listen "drain_delay" (printf "%ds" (int .Values.shutdown.drainDelaySeconds)) -}}
{{- $_ := set $listen "drain_timeout" (printf "%ds" (int .Values.shutdown.drainTimeoutSeconds)) -}}
{{- $_ := set $cfg "listen" $listen -}}
{{- if eq .Values.policies.source "kubernetes" -}}
{{- $_ := set $cfg "policy" (dict "kubernetes" (dict "namespaces" (include "portcullis.watchNamespaces" . | fromJsonArray) "selector" .Values.policies.kubernetes.selector)) -}}
{{- else -}}
{{- $_ := set $cfg "policy" (dict "dir" "/etc/portcullis/policies") -}}
{{- end -}}
{{- $candidate := .Values.policies.candidate -}}
{{- if $candidate.enabled -}}
{{- $c := dict "sample" $candidate.sample -}}
{{- if eq .Values.policies.source "kubernetes" -}}
{{- $_ := set $c "kubernetes" (dict "namespaces" (include "portcullis.watchNamespaces" . | fromJsonArray) "selector" $candidate.selector) -}}
{{- else -}}
{{- $_ := set $c "dir" "/etc/portcullis/candidate" -}}
{{- end -}}
{{- $_ := set $cfg.policy "candidate" $c -}}
{{- end -}}
{{- if .Values.issuers -}}
{{- $authn := default (dict) $cfg.authn -}}
{{- $_ := set $authn "issuers" .Values.issuers -}}
{{- $_ := set $cfg "authn" $authn -}}
{{- end -}}
{{- if or .Values.apiKeys.secret .Values.apiKeys.kubernetes.enabled -}}
{{- $authn := default (dict) $cfg.authn -}}
{{- $keys := default (dict) $authn.api_keys -}}
{{- if .Values.apiKeys.secret -}}
{{- $_ := set $keys "dir" "/etc/portcullis/api-keys" -}}
{{- else -}}
{{- $_ := set $keys "kubernetes" (dict "namespaces" (include "portcullis.apiKeyNamespaces" . | fromJsonArray) "selector" .Values.apiKeys.kubernetes.selector) -}}
{{- end -}}
{{- $_ := set $authn "api_keys" $keys -}}
{{- $_ := set $cfg "authn" $authn -}}
{{- end -}}
{{- if .Values.groupNamespace -}}
{{- $authn := default (dict) $cfg.authn -}}
{{- $_ := set $authn "group_namespace" .Values.groupNamespace -}}
{{- $_ := set $cfg "authn" $authn -}}
{{- end -}}
{{- with .Values.traces -}}
{{- if .enabled -}}
{{- $traces := dict "enabled" true "include_subject" (.includeSubject | default false) -}}
{{- with .endpoint -}}{{- $_ := set $traces "endpoint" . -}}{{- end -}}
{{- if not (kindIs "invalid" .samplerRatio) -}}{{- $_ := set $traces "sampler_ratio" .samplerRatio -}}{{- end -}}
{{- $telemetry := default (dict) $cfg.telemetry -}}
{{- $_ := set $telemetry "traces" (merge $traces (default (dict) $telemetry.traces)) -}}
{{- $_ := set $cfg "telemetry" $telemetry -}}
{{- end -}}
{{- end -}}
{{- /* One value bounds the body on both sides: Envoy sends at most it (never truncated), and
portcullis parses at most it; the CheckRequest limit keeps 64 KiB of room for the rest. */ -}}
{{- with (include "portcullis.maxBodyBytes" .) -}}
{{- $max := int . -}}
{{- $request := default (dict) $cfg.request -}}
{{- $_ := set $request "max_body_bytes" $max -}}
{{- $_ := set $cfg "request" $request -}}
{{- $limits := default (dict) $cfg.limits -}}
{{- $need := add $max 65536 -}}
{{- if lt (int (default 262144 $limits.max_message_bytes)) (int $need) -}}
{{- $_ := set $limits "max_message_bytes" $need -}}
{{- $_ := set $cfg "limits" $limits -}}
{{- end -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
The request body limit when the proxy sends bodies to portcullis (envoy mode with
envoy.extAuthz.withRequestBody.enabled, or istio mode with includeRequestBodyInCheck), else "".
*/}}
{{- define "portcullis.maxBodyBytes" -}}
{{- if and (eq .Values.mode "envoy") .Values.envoy.extAuthz.withRequestBody.enabled -}}
{{- int .Values.envoy.extAuthz.withRequestBody.maxRequestBytes -}}
{{- else if and (eq .Values.mode "istio") .Values.istio.provider.includeRequestBodyInCheck -}}
{{- int (default 8192 .Values.istio.provider.includeRequestBodyInCheck.maxRequestBytes) -}}
{{- end -}}
{{- end -}}

{{/*
Envoy's ext_authz allowed_headers, derived from the rendered portcullis config so that every
header portcullis reads reaches it (a credential header that does not would be judged anonymous
while the app still receives the unverified credential), and nothing else does. JSON list of
lower-case names, first occurrence kept:
  every issuer's `from` headers (default authorization), cookie if an issuer reads a cookie;
  authn.api_keys.header (default x-api-key) when keys, a key dir or key Secrets are configured;
  authorization when headers.strip_foreign_credentials is on;
  cedar.context_headers; content-type (gRPC calls and JSON bodies are recognized by it);
  x-request-id; W3C and B3 tracing headers; envoy.extAuthz.extraAllowedHeaders.
*/}}
{{- define "portcullis.allowedHeaders" -}}
{{- $cfg := include "portcullis.config" . | fromYaml -}}
{{- $authn := default (dict) $cfg.authn -}}
{{- $out := list -}}
{{- range $iss := (default (list) $authn.issuers) -}}
{{- $from := list (dict "header" "authorization") -}}
{{- if hasKey $iss "from" -}}{{- $from = $iss.from -}}{{- end -}}
{{- range $src := $from -}}
{{- if $src.header -}}{{- $out = append $out (lower $src.header) -}}{{- end -}}
{{- if $src.cookie -}}{{- $out = append $out "cookie" -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- $keys := default (dict) $authn.api_keys -}}
{{- if or $keys.keys $keys.dir $keys.kubernetes -}}
{{- $out = append $out (lower (default "x-api-key" $keys.header)) -}}
{{- end -}}
{{- $headers := default (dict) $cfg.headers -}}
{{- if $headers.strip_foreign_credentials -}}
{{- $out = append $out "authorization" -}}
{{- end -}}
{{- $cedar := default (dict) $cfg.cedar -}}
{{- range (default (list) $cedar.context_headers) -}}
{{- $out = append $out (lower .) -}}
{{- end -}}
{{- $out = concat $out (list "content-type" "x-request-id" "traceparent" "tracestate" "x-b3-traceid" "x-b3-spanid" "x-b3-parentspanid" "x-b3-sampled" "x-b3-flags" "b3") -}}
{{- range (default (list) .Values.envoy.extAuthz.extraAllowedHeaders) -}}
{{- $out = append $out (lower .) -}}
{{- end -}}
{{- toJson (uniq $out) -}}
{{- end -}}

{{/* Pod-level pieces ------------------------------------------------------- */}}

{{- define "portcullis.httpProbe" -}}
httpGet:
  path: {{ .probe.path }}
  port: admin
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end -}}

{{/* The portcullis container, shared by the workload and the test hook. */}}
{{- define "portcullis.container" -}}
name: portcullis
image: {{ include "portcullis.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args: ["serve", "--config", "/etc/portcullis/config.yaml"]
env:
  - name: POD_NAMESPACE
    valueFrom:
      fieldRef:
        fieldPath: metadata.namespace
  {{- with .Values.env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
ports:
  {{- if eq (include "portcullis.transport" .) "tcp" }}
  - name: grpc
    containerPort: {{ .Values.grpc.port }}
    protocol: TCP
  {{- end }}
  - name: admin
    containerPort: {{ .Values.admin.port }}
    protocol: TCP
startupProbe:
  {{- include "portcullis.httpProbe" (dict "probe" .Values.probes.startup) | nindent 2 }}
livenessProbe:
  {{- include "portcullis.httpProbe" (dict "probe" .Values.probes.liveness) | nindent 2 }}
readinessProbe:
  {{- include "portcullis.httpProbe" (dict "probe" .Values.probes.readiness) | nindent 2 }}
resources:
  {{- toYaml .Values.resources | nindent 2 }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: portcullis-config
    mountPath: /etc/portcullis/config.yaml
    subPath: config.yaml
    readOnly: true
  {{- if eq .Values.policies.source "files" }}
  - name: portcullis-policies
    mountPath: /etc/portcullis/policies
    readOnly: true
  {{- end }}
  {{- if and .Values.policies.candidate.enabled (eq .Values.policies.source "files") }}
  - name: portcullis-candidate-policies
    mountPath: /etc/portcullis/candidate
    readOnly: true
  {{- end }}
  {{- if .Values.apiKeys.secret }}
  - name: portcullis-api-keys
    mountPath: /etc/portcullis/api-keys
    readOnly: true
  {{- end }}
  {{- if eq (include "portcullis.transport" .) "unix" }}
  - name: portcullis-socket
    mountPath: {{ include "portcullis.socketDir" . }}
  {{- end }}
{{- end -}}

{{/* Volumes the portcullis container needs. */}}
{{- define "portcullis.volumes" -}}
- name: portcullis-config
  configMap:
    name: {{ include "portcullis.fullname" . }}-config
{{- if eq .Values.policies.source "files" }}
- name: portcullis-policies
  configMap:
    name: {{ include "portcullis.policyConfigMapName" . }}
{{- end }}
{{- if and .Values.policies.candidate.enabled (eq .Values.policies.source "files") }}
- name: portcullis-candidate-policies
  configMap:
    name: {{ .Values.policies.candidate.existingConfigMap }}
{{- end }}
{{- if .Values.apiKeys.secret }}
- name: portcullis-api-keys
  secret:
    secretName: {{ .Values.apiKeys.secret }}
{{- end }}
{{- if eq (include "portcullis.transport" .) "unix" }}
- name: portcullis-socket
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
{{- end -}}

{{- define "portcullis.automountToken" -}}
{{- if or (eq .Values.policies.source "kubernetes") .Values.apiKeys.kubernetes.enabled -}}true{{- else -}}false{{- end -}}
{{- end -}}
