{{/* The chart's name, shortened to what Kubernetes names allow. */}}
{{- define "quotad.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's resource name (54 characters at most: Service names
made from it, the longest "-headless", stay within Kubernetes' 63). */}}
{{- define "quotad.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "quotad.baseSelector" -}}
app.kubernetes.io/name: {{ include "quotad.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* quotad's pods (not the bundled Redis's). */}}
{{- define "quotad.selectorLabels" -}}
{{ include "quotad.baseSelector" . }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "quotad.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "quotad.baseSelector" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "quotad.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "quotad.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "quotad.configSecret" -}}
{{- default (printf "%s-config" (include "quotad.fullname" .)) .Values.existingConfigSecret -}}
{{- end -}}

{{- define "quotad.tlsSecret" -}}
{{- default (printf "%s-tls" (include "quotad.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{- define "quotad.adminTlsSecret" -}}
{{- default (printf "%s-admin-tls" (include "quotad.fullname" .)) .Values.admin.tls.existingSecret -}}
{{- end -}}

{{/* The Redis URL: the external one, or the bundled instance's. */}}
{{- define "quotad.redisUrl" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if .Values.redis.deploy.enabled -}}
{{- printf "redis://%s-redis:6379/0" (include "quotad.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* A duration value (`15s`, `500ms`, `2m`, `1h`) in whole seconds,
rounded up. */}}
{{- define "quotad.seconds" -}}
{{- $d := toString . -}}
{{- if hasSuffix "ms" $d -}}
{{- div (add (atoi (trimSuffix "ms" $d)) 999) 1000 -}}
{{- else if hasSuffix "s" $d -}}
{{- atoi (trimSuffix "s" $d) -}}
{{- else if hasSuffix "m" $d -}}
{{- mul (atoi (trimSuffix "m" $d)) 60 -}}
{{- else if hasSuffix "h" $d -}}
{{- mul (atoi (trimSuffix "h" $d)) 3600 -}}
{{- else -}}
{{- fail (printf "%s: expected a duration such as 15s, 500ms, 2m or 1h" $d) -}}
{{- end -}}
{{- end -}}

{{/* The bundled Redis's maxmemory in bytes: 80 % of its memory limit
(`256Mi`, `1Gi`, `500M`, or bytes), 200 MiB without one. */}}
{{- define "quotad.redisMaxmemory" -}}
{{- $limit := toString (default "" (default dict .Values.redis.deploy.resources.limits).memory) -}}
{{- $bytes := 0 -}}
{{- if hasSuffix "Gi" $limit -}}{{- $bytes = mul (atoi (trimSuffix "Gi" $limit)) 1073741824 -}}
{{- else if hasSuffix "Mi" $limit -}}{{- $bytes = mul (atoi (trimSuffix "Mi" $limit)) 1048576 -}}
{{- else if hasSuffix "Ki" $limit -}}{{- $bytes = mul (atoi (trimSuffix "Ki" $limit)) 1024 -}}
{{- else if hasSuffix "G" $limit -}}{{- $bytes = mul (atoi (trimSuffix "G" $limit)) 1000000000 -}}
{{- else if hasSuffix "M" $limit -}}{{- $bytes = mul (atoi (trimSuffix "M" $limit)) 1000000 -}}
{{- else if $limit -}}{{- $bytes = atoi $limit -}}
{{- end -}}
{{- if gt (int64 $bytes) 0 -}}{{- div (mul $bytes 4) 5 -}}{{- else -}}209715200{{- end -}}
{{- end -}}

{{/* The image reference: repository@digest when image.digest is set,
else repository:tag (the chart's appVersion by default). */}}
{{- define "quotad.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (toString (.Values.image.tag | default .Chart.AppVersion)) -}}
{{- end -}}
{{- end -}}

{{/* Where the pod mounts things. */}}
{{- define "quotad.paths" -}}
config: /etc/quotad/config/quotad.yaml
limits: /etc/quotad/limits
tls: /etc/quotad/tls
adminTls: /etc/quotad/admin-tls
redisPassword: /etc/quotad/redis-password
redisCa: /etc/quotad/redis-ca
hashSecret: /etc/quotad/hash-secret
{{- end -}}

{{/* The sections the chart manages, over the user's `config`. */}}
{{- define "quotad.managedConfig" -}}
{{- $p := include "quotad.paths" . | fromYaml -}}
server:
  shutdown_grace: {{ .Values.shutdown.shutdownGrace }}
  drain_delay: {{ .Values.shutdown.drainDelay }}
  {{- if .Values.tls.enabled }}
  tls:
    cert_file: {{ $p.tls }}/tls.crt
    key_file: {{ $p.tls }}/tls.key
    {{- if .Values.tls.clientCa }}
    client_ca_file: {{ $p.tls }}/ca.crt
    {{- end }}
  {{- end }}
store:
  max_tracked_keys: {{ int64 .Values.store.maxTrackedKeys }}
  {{- with .Values.store.hashSecret }}
  hash_secret: {{ . | quote }}
  {{- end }}
{{- with include "quotad.redisUrl" . }}
redis:
  url: {{ . | quote }}
  sync_interval: {{ $.Values.redis.syncInterval }}
  on_redis_error: {{ $.Values.redis.onRedisError }}
  {{- with $.Values.redis }}
  {{- if .cluster }}
  cluster: true
  {{- end }}
  {{- with .sentinelMaster }}
  sentinel_master: {{ . | quote }}
  {{- end }}
  {{- with .keyPrefix }}
  key_prefix: {{ . | quote }}
  {{- end }}
  {{- with .strictDeadline }}
  strict_deadline: {{ . | quote }}
  {{- end }}
  {{- with .firstReadMinWindow }}
  first_read_min_window: {{ . | quote }}
  {{- end }}
  {{- if .existingSecret }}
  password_file: {{ $p.redisPassword }}/{{ .passwordKey }}
  {{- end }}
  {{- if .caSecret }}
  tls_ca_file: {{ $p.redisCa }}/{{ .caKey }}
  {{- end }}
  {{- end }}
{{- end }}
{{- if .Values.admin.enabled }}
admin:
  addr: "0.0.0.0:{{ .Values.ports.admin }}"
  tokens: {{ toYaml .Values.admin.tokens | nindent 4 }}
  insecure_plaintext: {{ .Values.admin.insecurePlaintext }}
  max_overrides: {{ int64 .Values.admin.maxOverrides }}
  {{- if .Values.admin.tls.enabled }}
  tls:
    cert_file: {{ $p.adminTls }}/tls.crt
    key_file: {{ $p.adminTls }}/tls.key
  {{- end }}
{{- end }}
metrics:
  heavy_keys: {{ int64 .Values.metrics.heavyKeys }}
  heavy_window: {{ .Values.metrics.heavyWindow }}
reload:
  watch: true
{{- end -}}

{{/* What quotad reads only at start, so a change must restart the pods:
the config settings listed in restart-only.yaml (quotad's own list is
checked against it), read from the config file the chart renders, and the
chart's values that change the command line or the mounts. */}}
{{- define "quotad.restartOnly" -}}
{{- $c := include "quotad.config" . | fromYaml -}}
{{- $settings := dict -}}
{{- range $path := .Files.Get "restart-only.yaml" | fromYamlArray -}}
{{- $v := $c -}}
{{- if eq $path "admin" -}}
{{- $v = hasKey $c "admin" -}}
{{- else -}}
{{- range $k := splitList "." $path -}}
{{- if kindIs "map" $v -}}
{{- $v = get $v $k -}}
{{- else -}}
{{- $v = "" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $_ := set $settings $path $v -}}
{{- end -}}
{{ toYaml (dict "settings" $settings "adminOn" .Values.admin.enabled "httpCheckOn" .Values.httpCheck.enabled "ports" .Values.ports "tls" .Values.tls.enabled "adminTls" .Values.admin.tls.enabled "existing" .Values.existingConfigSecret) }}
{{- end -}}

{{/* The whole config file. */}}
{{- define "quotad.config" -}}
{{- $drain := include "quotad.seconds" .Values.shutdown.drainDelay | int -}}
{{- $grace := include "quotad.seconds" .Values.shutdown.shutdownGrace | int -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (add $drain $grace 4 | int) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least shutdown.drainDelay (%ds) + shutdown.shutdownGrace (%ds) + 4 s (%d): the kubelet would kill pods mid-drain" (int .Values.terminationGracePeriodSeconds) $drain $grace (add $drain $grace 4 | int)) -}}
{{- end -}}
{{- $replicated := or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled -}}
{{- if and $replicated (not (include "quotad.redisUrl" .)) (not .Values.allowUnsyncedReplicas) -}}
{{- fail "more than one replica (replicaCount > 1, or autoscaling) without Redis: each pod would enforce every limit on its own, so callers get the limit once per pod, and with the HPA more as CPU grows. Set redis.url (or redis.deploy.enabled) to share the limits, replicaCount: 1, or allowUnsyncedReplicas: true to accept per-pod limits" -}}
{{- end -}}
{{- if and (include "quotad.redisUrl" .) (not .Values.store.hashSecret) (not .Values.store.existingSecret) -}}
{{- fail "redis needs store.hashSecret (32 hex digits, `openssl rand -hex 16`) or store.existingSecret: every replica must name a key's cells alike" -}}
{{- end -}}
{{- if and .Values.store.hashSecret .Values.store.existingSecret -}}
{{- fail "store.hashSecret and store.existingSecret both give the hash secret: give one" -}}
{{- end -}}
{{- if and .Values.admin.enabled (not .Values.admin.tokens) -}}
{{- fail "admin.enabled needs admin.tokens (make one with `quotactl token new`)" -}}
{{- end -}}
{{- if and .Values.admin.enabled (not .Values.admin.tls.enabled) (not .Values.admin.insecurePlaintext) -}}
{{- fail "admin.enabled binds 0.0.0.0: set admin.tls.enabled, or admin.insecurePlaintext behind an encrypting mesh" -}}
{{- end -}}
{{- $user := deepCopy (default dict .Values.config) -}}
{{- range $key := list "redis" "admin" "metrics" "reload" "rls_files" -}}
{{- if hasKey $user $key -}}
{{- fail (printf "config.%s is managed by the chart: use the chart's values (see values.yaml) instead" $key) -}}
{{- end -}}
{{- end -}}
{{- range $key := list "tls" "grpc_addr" "http_addr" -}}
{{- if hasKey (default dict $user.server) $key -}}
{{- fail (printf "config.server.%s is managed by the chart: use the chart's values (see values.yaml) instead" $key) -}}
{{- end -}}
{{- end -}}
{{- if hasKey (default dict $user.store) "hash_secret" -}}
{{- fail "config.store.hash_secret is managed by the chart: use store.hashSecret" -}}
{{- end -}}
{{- $managed := include "quotad.managedConfig" . | fromYaml -}}
{{- toYaml (mustMergeOverwrite $user $managed) -}}
{{- end -}}

{{/* The container's arguments, after the image's entrypoint `quotad serve`. */}}
{{- define "quotad.args" -}}
{{- $p := include "quotad.paths" . | fromYaml -}}
- --config={{ $p.config }}
- --grpc-addr=0.0.0.0:{{ .Values.ports.grpc }}
- --http-addr=0.0.0.0:{{ .Values.ports.http }}
{{- if .Values.admin.enabled }}
- --admin-addr=0.0.0.0:{{ .Values.ports.admin }}
{{- end }}
{{- if .Values.httpCheck.enabled }}
- --http-check-addr=0.0.0.0:{{ .Values.ports.httpCheck }}
{{- end }}
{{- if .Values.limits }}
- --limits={{ $p.limits }}
{{- end }}
{{- if .Values.store.existingSecret }}
- --hash-secret-file={{ $p.hashSecret }}/{{ .Values.store.hashSecretKey }}
{{- end }}
- --log={{ .Values.log.level }}
- --log-format={{ .Values.log.format }}
{{- end -}}

{{/*
The `helm test` probe pod, as a NetworkPolicy peer: let in wherever a
`from` list would otherwise keep it out.
*/}}
{{- define "quotad.probePeer" -}}
- podSelector:
    matchLabels:
      {{- include "quotad.baseSelector" . | nindent 6 }}
      app.kubernetes.io/component: test
{{- end }}
