{{- define "nl2dsl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nl2dsl.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "nl2dsl.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "nl2dsl.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nl2dsl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nl2dsl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nl2dsl.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "nl2dsl.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "nl2dsl.image" -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-%s" .Chart.AppVersion .Values.image.flavor) .Values.image.tag) -}}
{{- end -}}

{{- define "nl2dsl.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "nl2dsl.fullname" .)) .Values.apiKeys.existingSecret -}}
{{- end -}}

{{/* ConfigMap keys cannot hold "/": grammars/tenants/x.yaml is stored as tenants__x.yaml. */}}
{{- define "nl2dsl.grammarKey" -}}
{{- trimPrefix "files/grammars/" . | replace "/" "__" -}}
{{- end -}}

{{/* The onboarding Job's pods: not the Service's selector (they serve nothing), allowed to call the API. */}}
{{- define "nl2dsl.onboardingLabels" -}}
app.kubernetes.io/name: {{ include "nl2dsl.name" . }}-onboarding
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: onboarding
{{- end -}}

{{- define "nl2dsl.pickerLabels" -}}
app.kubernetes.io/name: {{ include "nl2dsl.name" . }}-epp
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
