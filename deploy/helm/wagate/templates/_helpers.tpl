{{- define "wagate.labels" -}}
app.kubernetes.io/name: wagate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "wagate.selector" -}}
app.kubernetes.io/name: wagate
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wagate.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end }}

{{/* The "restricted" Pod Security Standard, for every pod. */}}
{{- define "wagate.podSecurity" -}}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile: {type: RuntimeDefault}
{{- end }}

{{- define "wagate.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: [ALL]}
{{- end }}

{{- define "wagate.saslEnv" -}}
{{- if .Values.kafka.saslPasswordSecret.name }}
- name: KAFKA_SASL_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ .Values.kafka.saslPasswordSecret.name | quote }}, key: {{ .Values.kafka.saslPasswordSecret.key | quote }}}}
{{- end }}
{{- end }}
