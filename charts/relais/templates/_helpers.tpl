{{/* Names, labels and shared fragments for every template of the Relais chart. */}}

{{- define "relais.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "relais.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "relais.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "relais.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "relais.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "relais.labels" -}}
helm.sh/chart: {{ include "relais.chart" . }}
app.kubernetes.io/part-of: relais
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component; the gateway's name label is a cross-team contract
     (model pods' NetworkPolicy admits app.kubernetes.io/name=relais-gateway). */}}
{{- define "relais.selectorLabels" -}}
app.kubernetes.io/name: relais-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{- define "relais.componentLabels" -}}
{{ include "relais.labels" .root }}
{{ include "relais.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "relais.operator.fullname" -}}
{{- printf "%s-operator" (include "relais.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "relais.gateway.fullname" -}}
{{- printf "%s-gateway" (include "relais.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "relais.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "relais.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "relais.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "relais.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "repository:tag", the tag defaulting to the chart's appVersion. */}}
{{- define "relais.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Namespaces the gateway watches: its own list, else the operator's. */}}
{{- define "relais.gateway.namespaces" -}}
{{- toJson (default .Values.operator.watchNamespaces .Values.gateway.watchNamespaces) }}
{{- end }}

{{/* Every namespace where model pods may run, as a JSON list (deduplicated, sorted). */}}
{{- define "relais.modelNamespaces" -}}
{{- $ns := list .Release.Namespace }}
{{- range .Values.operator.watchNamespaces }}{{ $ns = append $ns . }}{{ end }}
{{- range .Values.networkPolicy.modelNamespaces }}{{ $ns = append $ns . }}{{ end }}
{{- range .Values.models }}{{ $ns = append $ns (default $.Release.Namespace .namespace) }}{{ end }}
{{- toJson ($ns | uniq | sortAlpha) }}
{{- end }}

{{/* Name of the Secret holding auth.yaml: auth.existingSecret, else "<fullname>-gateway-auth". */}}
{{- define "relais.authSecretName" -}}
{{- default (printf "%s-auth" (include "relais.gateway.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* The gateway's auth section, as the chart-created Secret holds it. */}}
{{- define "relais.authYaml" -}}
{{- if .Values.auth.disabled }}
{{- toYaml (dict "disabled" true) }}
{{- else }}
{{- toYaml (dict "keys" .Values.auth.keys) }}
{{- end }}
{{- end }}

{{/* Pod Security Standards "restricted": pod level. */}}
{{- define "relais.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod Security Standards "restricted": container level. */}}
{{- define "relais.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Fail rendering when the auth values contradict each other. */}}
{{- define "relais.validateAuth" -}}
{{- $set := 0 }}
{{- if .Values.auth.existingSecret }}{{ $set = add1 $set }}{{ end }}
{{- if .Values.auth.keys }}{{ $set = add1 $set }}{{ end }}
{{- if .Values.auth.disabled }}{{ $set = add1 $set }}{{ end }}
{{- if gt (int $set) 1 }}
{{- fail "auth: set only one of auth.existingSecret, auth.keys, or auth.disabled=true" }}
{{- end }}
{{- end }}

{{/* Whether the chart renders the auth Secret from values (auth.keys or auth.disabled). */}}
{{- define "relais.authRendered" -}}
{{- if and (not .Values.auth.existingSecret) (or .Values.auth.keys .Values.auth.disabled) }}true{{ end }}
{{- end }}

{{/* Whether none of the three auth values is set: the chart then generates one API key. */}}
{{- define "relais.authGenerated" -}}
{{- if not (or .Values.auth.existingSecret .Values.auth.keys .Values.auth.disabled) }}true{{ end }}
{{- end }}

{{/* With no auth values set, what to do about Secret "<fullname>-gateway-auth", judged from the
     cluster by lookup (`helm template` and --dry-run=client see no cluster: always "generate"):
     "keep"     the chart generated it before: render it again with the same key (upgrades);
     "foreign"  someone else made it (by hand, before the chart generated keys): leave it alone;
     "generate" none yet, or one from earlier auth.keys/auth.disabled values: a new random key. */}}
{{- define "relais.authGeneration" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "relais.authSecretName" .) }}
{{- if not $secret }}generate
{{- else if and (eq (dig "metadata" "annotations" "relais.dev/generated-key" "" $secret) "true") (hasKey ($secret.data | default dict) "auth.yaml") }}keep
{{- else if eq (dig "metadata" "annotations" "meta.helm.sh/release-name" "" $secret) .Release.Name }}generate
{{- else }}foreign
{{- end }}
{{- end }}

{{/* A fresh auth.yaml with one random key, in the gateway's format (AuthConfig: keys: [...]). */}}
{{- define "relais.generatedAuthYaml" -}}
{{- toYaml (dict "keys" (list (dict "name" "default" "key" (printf "sk-relais-%s" (randAlphaNum 40))))) }}
{{- end }}

{{/* checkov renders charts without --namespace, so every namespaced object lands in "default"
     there; in a real install it is the release namespace (helm install -n NS; install.yaml:
     relais-system). `n` numbers the annotation among the object's other checkov skips. */}}
{{- define "relais.checkovNamespaceSkip" -}}
checkov.io/skip{{ . }}: CKV_K8S_21=Namespaced objects go to the Helm release namespace (helm install -n NS); only checkov's own render uses "default".
{{- end }}

{{/* The Service that carries the gateway's /metrics: the headless "<gateway>-metrics" on the
     management port, or the public Service when the gateway serves /metrics on its API port. */}}
{{- define "relais.gateway.metricsService" -}}
{{- if .Values.gateway.metricsPort }}
{{- printf "%s-metrics" (include "relais.gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- include "relais.gateway.fullname" . }}
{{- end }}
{{- end }}

{{/* The name of the gateway port that serves /metrics: "metrics", or "http" without one. */}}
{{- define "relais.gateway.metricsPortName" -}}
{{- if .Values.gateway.metricsPort }}metrics{{ else }}http{{ end }}
{{- end }}

{{/* The component label of the Service that carries the gateway's /metrics. */}}
{{- define "relais.gateway.metricsComponent" -}}
{{- if .Values.gateway.metricsPort }}gateway-metrics{{ else }}gateway{{ end }}
{{- end }}

{{/* The alert groups of rules/relais.rules.yaml, the one source of the alerts. */}}
{{- define "relais.ruleGroups" -}}
{{- (.Files.Get "rules/relais.rules.yaml" | fromYaml).groups | toYaml }}
{{- end }}

{{/* Who may read the gateway's /metrics: the operator's autoscaler, and the scrapers of
     networkPolicy.metricsIngressFrom (NetworkPolicyPeer list items). */}}
{{- define "relais.metricsPeers" -}}
{{- if .Values.operator.enabled }}
- podSelector:
    matchLabels:
      {{- include "relais.selectorLabels" (dict "root" . "component" "operator") | nindent 6 }}
{{- end }}
{{- with .Values.networkPolicy.metricsIngressFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}
