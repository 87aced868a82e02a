{{- define "dda.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dda.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dda.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dda.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dda.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "dda.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "dda.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dda.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dda.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Volume mounts shared by the worker and the engine-build init container. */}}
{{- define "dda.mounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /var/cache/dda
{{- if eq .Values.model.source "pvc" }}
- name: models
  mountPath: {{ .Values.worker.model }}
  subPath: {{ .Values.model.subPath }}
  readOnly: true
{{- if .Values.worker.shadowModel }}
- name: models
  mountPath: {{ .Values.worker.shadowModel }}
  subPath: {{ required "model.shadowSubPath is needed when worker.shadowModel is set" .Values.model.shadowSubPath }}
  readOnly: true
{{- end }}
{{- if .Values.worker.secondModel }}
- name: models
  mountPath: {{ .Values.worker.secondModel }}
  subPath: {{ required "model.secondSubPath is needed when worker.secondModel is set" .Values.model.secondSubPath }}
  readOnly: true
{{- end }}
{{- end }}
{{- if include "dda.engineVolume" . }}
- name: engines
  mountPath: {{ .Values.worker.engineDir }}
{{- end }}
{{- end -}}

{{- define "dda.gpuResources" -}}
{{- if .Values.gpu.enabled }}
{{ .Values.gpu.resourceName }}: {{ .Values.gpu.count }}
{{- end }}
{{- end -}}

{{/* The engine cache volume: always when building, and for prebuilt engines kept in a shared claim. */}}
{{- define "dda.engineVolume" -}}
{{- if or (eq .Values.engine.mode "build") (and (eq .Values.engine.mode "prebuilt") (eq .Values.engine.cache.type "pvc")) -}}
true
{{- end -}}
{{- end -}}

{{/* A worker value as its environment text. Helm reads every YAML number as a float, and
     toString writes a large whole one in scientific notation ("5.24288e+07"), which the
     worker refuses as "not a whole number": whole numbers are written as integers. */}}
{{- define "dda.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- printf "%.0f" . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}
