{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart, or the release name when it contains the chart's. */}}
{{- define "switchboard.fullname" -}}
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

{{- define "switchboard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchboard.labels" -}}
helm.sh/chart: {{ include "switchboard.chart" . }}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchboard
{{- end }}

{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "switchboard.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the credentials: the user's existingSecret or the chart's own. */}}
{{- define "switchboard.secretName" -}}
{{- default (include "switchboard.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* Whether the database is external (PostgreSQL), so that a migration Job makes sense. */}}
{{- define "switchboard.externalDatabase" -}}
{{- if or .Values.database.url .Values.existingSecret }}true{{ end }}
{{- end }}

{{/* Whether more than one pod may run at once. */}}
{{- define "switchboard.multiPod" -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}true{{ end }}
{{- end }}

{{/* terminationGracePeriodSeconds: the preStop sleep, the gateway's own drain limit and a margin. */}}
{{- define "switchboard.terminationGracePeriodSeconds" -}}
{{- add (int .Values.preStop.sleepSeconds) (int .Values.shutdownGraceSeconds) (int .Values.terminationGraceMarginSeconds) }}
{{- end }}

{{/*
A generated secret value that survives upgrades: read back from the release's Secret when it
exists (lookup returns nothing offline, in `helm template` and on first install).
*/}}
{{- define "switchboard.generated" -}}
{{- $ctx := index . 0 }}{{- $key := index . 1 }}{{- $given := index . 2 }}
{{- if $given }}
{{- $given }}
{{- else }}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace (include "switchboard.fullname" $ctx) }}
{{- if and $existing $existing.data (hasKey $existing.data $key) }}
{{- index $existing.data $key | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Refuse value combinations that would start a broken deployment. */}}
{{- define "switchboard.validate" -}}
{{- if and (include "switchboard.multiPod" .) (not .Values.existingSecret) (not .Values.redis.url) }}
{{- fail "more than one pod (replicaCount > 1 or autoscaling.enabled) needs redis.url: without Redis each pod is its own gateway and clients on different pods never see each other" }}
{{- end }}
{{- if and (include "switchboard.multiPod" .) (not (include "switchboard.externalDatabase" .)) }}
{{- fail "more than one pod (replicaCount > 1 or autoscaling.enabled) needs database.url (PostgreSQL): the default SQLite file lives in each pod's own volume" }}
{{- end }}
{{- if and .Values.auth.jwtPublicKey .Values.auth.jwtSecret }}
{{- fail "auth.jwtPublicKey and auth.jwtSecret cannot both be set: the gateway verifies with one of them" }}
{{- end }}
{{- end }}

{{/* The TOML config file from .Values.config, keys sorted. */}}
{{- define "switchboard.configToml" -}}
# Rendered by the switchboard chart from .Values.config (docs/configuration.md#the-config-file).
{{- range $key := keys .Values.config | sortAlpha }}
{{- $value := index $.Values.config $key }}
{{- if kindIs "bool" $value }}
{{ $key }} = {{ $value }}
{{- else if or (kindIs "float64" $value) (kindIs "int" $value) (kindIs "int64" $value) }}
{{ $key }} = {{ int64 $value }}
{{- else }}
{{ $key }} = {{ toJson (toString $value) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Credentials as environment variables, from the chart's Secret or existingSecret. With
existingSecret every key but jwt-secret is optional: a URL missing from the Secret leaves its
option unset (no Redis: a single node; no database URL: SQLite in /data).
*/}}
{{- define "switchboard.secretEnv" -}}
{{- $secret := include "switchboard.secretName" . }}
{{- $existing := .Values.existingSecret }}
{{- if not .Values.auth.jwtPublicKey }}
- name: SWITCHBOARD_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secretKeys.jwtSecret }}
{{- end }}
- name: SWITCHBOARD_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secretKeys.apiKey }}
      {{- if $existing }}
      optional: true
      {{- end }}
{{- if or $existing .Values.redis.url }}
- name: SWITCHBOARD_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secretKeys.redisUrl }}
      {{- if $existing }}
      optional: true
      {{- end }}
{{- end }}
{{- include "switchboard.databaseEnv" (dict "Values" .Values "secret" $secret) }}
{{- end }}

{{/* The database URLs only: for the migration Job (a hook Secret, or existingSecret). */}}
{{- define "switchboard.databaseEnv" -}}
{{- $existing := .Values.existingSecret }}
{{- if or $existing .Values.database.url }}
- name: SWITCHBOARD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .Values.secretKeys.databaseUrl }}
      {{- if $existing }}
      optional: true
      {{- end }}
{{- end }}
{{- if or $existing .Values.mongodb.url }}
- name: SWITCHBOARD_MONGODB_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .Values.secretKeys.mongodbUrl }}
      {{- if $existing }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}
