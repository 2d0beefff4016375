{{/* Chart name. */}}
{{- define "rebeam.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name prefix: release-chart, or the release alone when it already names the chart. */}}
{{- define "rebeam.fullname" -}}
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

{{- define "rebeam.controller" -}}{{ include "rebeam.fullname" . }}-controller{{- end -}}
{{/* The headless Service giving members their stable $(POD_NAME).<this> names. */}}
{{- define "rebeam.headless" -}}{{ include "rebeam.fullname" . }}-controller-peers{{- end -}}
{{/* With TLS: the headless Service giving nodes the stable names their certificates carry. */}}
{{- define "rebeam.nodesHeadless" -}}{{ include "rebeam.fullname" . }}-nodes{{- end -}}

{{/* The cert-manager issuer signing the members' certificates: tls.issuer, or without a name
the chart's own CA Issuer (tls-ca.yaml). */}}
{{- define "rebeam.caIssuer" -}}{{ include "rebeam.fullname" . }}-ca{{- end -}}
{{- define "rebeam.issuerRef" -}}
{{- if .Values.tls.issuer.name -}}
{{- toYaml .Values.tls.issuer -}}
{{- else -}}
{{- toYaml (dict "name" (include "rebeam.caIssuer" .) "kind" "Issuer" "group" "cert-manager.io") -}}
{{- end -}}
{{- end -}}

{{/* The TLS files' environment (docs/tls.md), under DIR. */}}
{{- define "rebeam.tlsEnv" -}}
- {name: REBEAM_TLS_CERT, value: "{{ . }}/tls.crt"}
- {name: REBEAM_TLS_KEY, value: "{{ . }}/tls.key"}
- {name: REBEAM_TLS_CA, value: "{{ . }}/ca.crt"}
{{- end -}}

{{- define "rebeam.labels" -}}
app.kubernetes.io/name: {{ include "rebeam.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "rebeam.selector" -}}
app.kubernetes.io/name: {{ include "rebeam.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rebeam.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag }}{{- end -}}

{{- define "rebeam.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "rebeam.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "rebeam.secretName" -}}{{ default (printf "%s-cluster-secret" (include "rebeam.fullname" .)) .Values.clusterSecret.existingSecret }}{{- end -}}
{{- define "rebeam.nodeSecretName" -}}{{ default (printf "%s-node-secret" (include "rebeam.fullname" .)) .Values.nodeSecret.existingSecret }}{{- end -}}
{{- define "rebeam.tokenName" -}}{{ default (printf "%s-client-token" (include "rebeam.fullname" .)) .Values.clientToken.existingSecret }}{{- end -}}

{{/* Environment both roles share: the node secret, the pod's name and IP. Controllers add
the cluster secret and the client token (rebeam.controllerSecretEnv); nodes only the token's
digest (rebeam.nodeTokenEnv). */}}
{{- define "rebeam.commonEnv" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
- name: REBEAM_NODE_SECRET
  valueFrom: {secretKeyRef: {name: {{ include "rebeam.nodeSecretName" . }}, key: {{ .Values.nodeSecret.key }}}}
{{- end -}}

{{/* The cluster secret and the client token: controller pods only. */}}
{{- define "rebeam.controllerSecretEnv" -}}
- name: REBEAM_SECRET
  valueFrom: {secretKeyRef: {name: {{ include "rebeam.secretName" . }}, key: {{ .Values.clusterSecret.key }}}}
- name: REBEAM_CLIENT_TOKENS
  valueFrom: {secretKeyRef: {name: {{ include "rebeam.tokenName" . }}, key: {{ .Values.clientToken.key }}}}
{{- end -}}

{{/* What a node's gateway needs to accept the client token: its digest, not the token. */}}
{{- define "rebeam.nodeTokenEnv" -}}
- name: REBEAM_CLIENT_TOKEN_DIGESTS
  valueFrom: {secretKeyRef: {name: {{ include "rebeam.tokenName" . }}, key: {{ .Values.clientToken.digestKey }}, optional: true}}
{{- end -}}

{{/* A random value kept across upgrades: the one in the live Secret, else a new one. */}}
{{- define "rebeam.keep" -}}
{{- $s := lookup "v1" "Secret" .ns .name -}}
{{- if and $s $s.data (hasKey $s.data .key) -}}{{ index $s.data .key }}{{- else -}}{{ randAlphaNum 40 | b64enc }}{{- end -}}
{{- end -}}
