{{- define "hookline.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "hookline.labels" -}}
app.kubernetes.io/part-of: hookline
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "hookline.externalBaseUrl" -}}
{{- if .Values.externalBaseUrl -}}
{{ .Values.externalBaseUrl }}
{{- else if .Values.gateway.ingress.enabled -}}
{{ ternary "https" "http" .Values.gateway.ingress.tls.enabled }}://{{ .Values.gateway.ingress.host }}
{{- else -}}
http://hookline-gateway.{{ .Release.Namespace }}.svc
{{- end -}}
{{- end -}}

{{/*
Binds the ClusterRole <release>-<role> to the ServiceAccount <role>: cluster-wide, or, with
watchNamespaces, by a RoleBinding in each of those namespaces only.
*/}}
{{- define "hookline.bindEverywhereWatched" -}}
{{- $root := .root -}}
{{- $role := .role -}}
{{- if $root.Values.watchNamespaces }}
{{- range $i, $namespace := $root.Values.watchNamespaces }}
{{- if $i }}
---
{{- end }}
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $root.Release.Name }}-{{ $role }}
  namespace: {{ $namespace }}
  labels: {{- include "hookline.labels" $root | nindent 4 }}
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {{ $root.Release.Name }}-{{ $role }} }
subjects:
  - { kind: ServiceAccount, name: {{ $role }}, namespace: {{ $root.Release.Namespace }} }
{{- end }}
{{- else }}
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ $root.Release.Name }}-{{ $role }}
  labels: {{- include "hookline.labels" $root | nindent 4 }}
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {{ $root.Release.Name }}-{{ $role }} }
subjects:
  - { kind: ServiceAccount, name: {{ $role }}, namespace: {{ $root.Release.Namespace }} }
{{- end }}
{{- end }}
