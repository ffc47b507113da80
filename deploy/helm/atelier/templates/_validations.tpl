{{/*
Checks of values that the schema cannot express, run by templates/validate.yaml: each failure names the
setting and says what to do, at render time rather than as a pod that never starts.
*/}}
{{- define "atelier.validate" -}}
{{- include "atelier.validateNames" . }}
{{- include "atelier.validatePools" . }}
{{- include "atelier.validateModels" . }}
{{- end }}

{{/*
Every resource name starts with the full name; Services need it to be a DNS label (RFC 1035).
*/}}
{{- define "atelier.validateNames" -}}
{{- $fullname := include "atelier.fullname" . }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $fullname) }}
{{- fail (printf "resource names would start with %q, which is not a lowercase DNS label (a-z, 0-9 and '-', starting with a letter): choose another release name or set fullnameOverride" $fullname) }}
{{- end }}
{{- end }}

{{/*
Pools: unique names (one worker group each), minWorkers <= maxWorkers, a replica fits on one worker.
*/}}
{{- define "atelier.validatePools" -}}
{{- $seen := dict }}
{{- range include "atelier.pools" . | fromYamlArray }}
{{- if hasKey $seen .name }}
{{- fail (printf "gpuPools: the name %q is used twice; each pool is one Ray worker group and needs a name of its own" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- if gt (int .minWorkers) (int .maxWorkers) }}
{{- fail (printf "gpuPools[%s]: minWorkers (%d) is above maxWorkers (%d)" .name (int .minWorkers) (int .maxWorkers)) }}
{{- end }}
{{- if gt (float64 .gpusPerReplica) (float64 .gpusPerWorker) }}
{{- fail (printf "gpuPools[%s]: gpusPerReplica (%v) is above gpusPerWorker (%v): no worker could hold a model replica" .name .gpusPerReplica .gpusPerWorker) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Models: unique names (one Serve deployment each).
*/}}
{{- define "atelier.validateModels" -}}
{{- $seen := dict }}
{{- range include "atelier.models" . | fromYamlArray }}
{{- if hasKey $seen .name }}
{{- fail (printf "models: the name %q is used twice; each model is one Serve deployment and needs a name of its own" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- end }}

{{/*
Most replicas a model can ask for: autoscaling.maxReplicas, or numReplicas without autoscaling.
*/}}
{{- define "atelier.modelMaxReplicas" -}}
{{- if .autoscaling.enabled }}{{ int .autoscaling.maxReplicas }}{{ else }}{{ int .numReplicas }}{{ end }}
{{- end }}

{{/*
NOTES warnings, one line each, for pools whose models together can ask for more replicas than the pool's
maxWorkers hold (the rest would stay pending).
*/}}
{{- define "atelier.poolCapacityWarnings" -}}
{{- $models := include "atelier.models" . | fromYamlArray }}
{{- range include "atelier.pools" . | fromYamlArray }}
{{- $pool := . }}
{{- $asked := 0 }}
{{- $names := list }}
{{- range $models }}
{{- if eq .pool $pool.name }}
{{- $asked = add $asked (include "atelier.modelMaxReplicas" .) }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- $capacity := mul (int $pool.maxWorkers) (int (include "atelier.poolSlots" $pool)) }}
{{- if gt (int $asked) (int $capacity) }}
WARNING: the models on pool {{ $pool.name }} ({{ join ", " $names }}) can ask for {{ $asked }} replicas, but its {{ $pool.maxWorkers }} workers hold at most {{ $capacity }}: raise gpuPools[{{ $pool.name }}].maxWorkers or lower the models' maxReplicas (replicas beyond it stay pending).
{{- end }}
{{- end }}
{{- end }}
