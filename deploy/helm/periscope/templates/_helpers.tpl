{{- define "periscope.labels" -}}
app.kubernetes.io/name: periscope
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "periscope.selectorLabels" -}}
app.kubernetes.io/name: periscope
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "periscope.namespace" -}}
{{- if .Values.createNamespace }}{{ .Values.namespace }}{{ else }}{{ .Release.Namespace }}{{ end }}
{{- end }}
