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
