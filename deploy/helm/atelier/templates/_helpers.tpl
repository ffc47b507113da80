{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "atelier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every resource name. RayService names are kept to 40 characters because
KubeRay derives longer names (`<name>-raycluster-xxxxx-<group>-worker-xxxxx`) from them.
*/}}
{{- define "atelier.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "atelier.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "atelier.labels" -}}
helm.sh/chart: {{ include "atelier.chart" . }}
{{ include "atelier.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: atelier
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: stable across upgrades.
*/}}
{{- define "atelier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atelier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one component: `include "atelier.componentLabels" (list $ "control-plane")`.
*/}}
{{- define "atelier.componentLabels" -}}
{{ include "atelier.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Selector labels of one component: `include "atelier.componentSelectorLabels" (list $ "control-plane")`.
*/}}
{{- define "atelier.componentSelectorLabels" -}}
{{ include "atelier.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
The image of the Ray pods: `repository@digest` when a digest is set (immutable; the tag is then ignored),
else `repository:tag`.
*/}}
{{- define "atelier.image" -}}
{{- include "atelier.imageReference" (list . .Values.image) }}
{{- end }}

{{/*
The image of the control plane, the migration Job and the CronJobs: `controlPlane.image` (e.g. the
Dockerfile's slim `cpu` target), each empty field taken from `image`.
*/}}
{{- define "atelier.controlPlaneImage" -}}
{{- $own := .Values.controlPlane.image }}
{{- $image := deepCopy .Values.image }}
{{- if or $own.repository $own.tag }}{{ $_ := set $image "digest" "" }}{{ end }}
{{- range $key, $value := $own }}{{ if $value }}{{ $_ := set $image $key $value }}{{ end }}{{ end }}
{{- include "atelier.imageReference" (list . $image) }}
{{- end }}

{{- define "atelier.imageReference" -}}
{{- $root := index . 0 }}
{{- $image := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository ($image.tag | default $root.Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
`imagePullSecrets:` of a pod spec (nothing without any): entries are Secret names or `{name: …}`.
*/}}
{{- define "atelier.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ if kindIs "map" . }}{{ .name }}{{ else }}{{ . }}{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
ServiceAccount of the control plane and the jobs.
*/}}
{{- define "atelier.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "atelier.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Secret and key of the database URL; fails without one (no secret defaults).
*/}}
{{- define "atelier.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- $_ := required "database.url or database.existingSecret is required: the control plane needs PostgreSQL >= 14" .Values.database.url }}
{{- printf "%s-database" (include "atelier.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The Secret the migration hook reads: the operator's own, or the chart's hook-only copy (the release's
Secret does not exist yet when a pre-install hook runs).
*/}}
{{- define "atelier.migrationDatabaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- printf "%s-migrate" (include "atelier.databaseSecretName" .) }}
{{- end }}
{{- end }}

{{/*
Checksums of what the chart knows of the database URL and the master key, as pod template annotations:
a changed URL or key (or a different Secret) rolls the pods. A rotated value inside an existing Secret is
invisible to the chart: restart with `kubectl rollout restart`.
*/}}
{{- define "atelier.secretChecksums" -}}
checksum/database-url: {{ list .Values.database.url .Values.database.existingSecret .Values.database.existingSecretKey | toJson | sha256sum }}
checksum/master-key: {{ list .Values.masterKey.value .Values.masterKey.existingSecret .Values.masterKey.existingSecretKey | toJson | sha256sum }}
{{- end }}

{{- define "atelier.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}

{{/*
Secret and key of the master key; fails without one (no secret defaults).
*/}}
{{- define "atelier.masterKeySecretName" -}}
{{- if .Values.masterKey.existingSecret }}
{{- .Values.masterKey.existingSecret }}
{{- else }}
{{- $_ := required "masterKey.value or masterKey.existingSecret is required (openssl rand -base64 32)" .Values.masterKey.value }}
{{- printf "%s-master-key" (include "atelier.fullname" .) }}
{{- end }}
{{- end }}

{{- define "atelier.masterKeySecretKey" -}}
{{- if .Values.masterKey.existingSecret }}{{ .Values.masterKey.existingSecretKey }}{{ else }}master-key{{ end }}
{{- end }}

{{/*
Names of the Services and ConfigMaps other templates refer to.
*/}}
{{- define "atelier.controlPlaneName" -}}
{{- printf "%s-control-plane" (include "atelier.fullname" .) }}
{{- end }}

{{- define "atelier.controlPlaneAddress" -}}
{{- printf "%s.%s.svc:%d" (include "atelier.controlPlaneName" .) .Release.Namespace (int .Values.controlPlane.grpcPort) }}
{{- end }}

{{- define "atelier.serveConfigName" -}}
{{- printf "%s-serve-config" (include "atelier.fullname" .) }}
{{- end }}

{{- define "atelier.policyProfileName" -}}
{{- printf "%s-policy-profile" (include "atelier.fullname" .) }}
{{- end }}

{{/*
The Ray resource that pins a model's replicas to its pool.
*/}}
{{- define "atelier.poolResource" -}}
{{- printf "pool-%s" . }}
{{- end }}

{{/*
gpuPools with defaults filled in, as YAML: `include "atelier.pools" . | fromYamlArray`.
*/}}
{{- define "atelier.pools" -}}
{{- $pools := list }}
{{- range .Values.gpuPools }}
{{- $pool := deepCopy . }}
{{- range $key, $value := dict "gpusPerWorker" 1 "gpusPerReplica" 1 "minWorkers" 0 "resources" dict "nodeSelector" dict "tolerations" list "affinity" dict "gpuResourceName" "nvidia.com/gpu" "ephemeralStorage" "60Gi" "labels" dict "env" list "volumes" list "volumeMounts" list "runtimeClassName" "" "priorityClassName" "" }}
{{- if not (hasKey $pool $key) }}{{ $_ := set $pool $key $value }}{{ end }}
{{- end }}
{{- $_ := set $pool "zoneSpread" (merge (deepCopy ($pool.zoneSpread | default dict)) (dict "enabled" false "maxSkew" 1 "whenUnsatisfiable" "ScheduleAnyway")) }}
{{- $_ := set $pool "scratch" (merge (deepCopy ($pool.scratch | default dict)) (dict "tmpSizeLimit" "20Gi" "stateSizeLimit" "40Gi")) }}
{{- $cache := merge (deepCopy ($pool.modelCache | default dict)) (dict "existingClaim" "") }}
{{- /* hasKey, not merge: merge would replace an explicit `enabled: false` with the default. */}}
{{- $build := deepCopy ($cache.build | default dict) }}
{{- $resources := dict "requests" (dict "cpu" "4" "memory" "24Gi") "limits" (dict "memory" "24Gi") }}
{{- range $key, $value := dict "enabled" true "activeDeadlineSeconds" 3600 "resources" $resources }}
{{- if not (hasKey $build $key) }}{{ $_ := set $build $key $value }}{{ end }}
{{- end }}
{{- $_ := set $cache "build" $build }}
{{- $_ := set $pool "modelCache" $cache }}
{{- $pools = append $pools $pool }}
{{- end }}
{{- toYaml $pools }}
{{- end }}

{{/*
models with defaults filled in, as YAML: `include "atelier.models" . | fromYamlArray`. A model without
`autoscaling` (or with `autoscaling.enabled: false`) runs `numReplicas` replicas.
*/}}
{{- define "atelier.models" -}}
{{- $models := list }}
{{- range .Values.models }}
{{- $model := deepCopy . }}
{{- range $key, $value := dict "numCpus" 1 "maxOngoingRequests" 8 "numReplicas" 1 "latencyP95Seconds" 0 "settings" dict "autoscaling" (dict "enabled" false) }}
{{- if not (hasKey $model $key) }}{{ $_ := set $model $key $value }}{{ end }}
{{- end }}
{{- if not (hasKey $model.autoscaling "enabled") }}{{ $_ := set $model.autoscaling "enabled" true }}{{ end }}
{{- $models = append $models $model }}
{{- end }}
{{- toYaml $models }}
{{- end }}

{{/*
The pool a model runs on: `include "atelier.poolOf" (list $ $model) | fromYaml`. Fails on an unknown pool.
*/}}
{{- define "atelier.poolOf" -}}
{{- $root := index . 0 }}
{{- $model := index . 1 }}
{{- $pools := include "atelier.pools" $root | fromYamlArray }}
{{- $found := dict }}
{{- range $pools }}
{{- if eq .name $model.pool }}{{ $found = . }}{{ end }}
{{- end }}
{{- if not $found }}
{{- $names := list }}
{{- range $pools }}{{ $names = append $names .name }}{{ end }}
{{- fail (printf "models[%s].pool: %q is not a gpuPools[].name; valid: %s" $model.name $model.pool (join ", " $names)) }}
{{- end }}
{{- toYaml $found }}
{{- end }}

{{/*
Model replicas one worker of a pool holds: gpusPerWorker / gpusPerReplica, rounded down (at least 1).
*/}}
{{- define "atelier.poolSlots" -}}
{{- $slots := 1 }}
{{- if gt (float64 .gpusPerReplica) 0.0 }}
{{- $slots = max 1 (int (floor (divf .gpusPerWorker .gpusPerReplica))) }}
{{- end }}
{{- $slots }}
{{- end }}

{{/*
Serve deployment name of a model, as inference.app.model_deployment_name builds it.
*/}}
{{- define "atelier.deploymentName" -}}
{{- printf "DiffusionModel-%s" . }}
{{- end }}

{{/*
Where the serve config file is mounted in Ray pods.
*/}}
{{- define "atelier.serveConfigPath" -}}
/etc/atelier/serve/serve-config.json
{{- end }}

{{/*
inference.config.ServeConfig as JSON (the file ATELIER_SERVE_CONFIG names).
*/}}
{{- define "atelier.serveConfigJson" -}}
{{- $models := list }}
{{- range include "atelier.models" . | fromYamlArray }}
{{- $pool := include "atelier.poolOf" (list $ .) | fromYaml }}
{{- $entry := deepCopy (.settings | default dict) }}
{{- $replicas := .numReplicas }}
{{- if .autoscaling.enabled }}{{ $replicas = max 1 .autoscaling.minReplicas }}{{ end }}
{{- $_ := set $entry "name" .name }}
{{- $_ := set $entry "device" (ternary "cuda" "cpu" (gt (float64 $pool.gpusPerReplica) 0.0)) }}
{{- $_ := set $entry "num_gpus" $pool.gpusPerReplica }}
{{- $_ := set $entry "num_cpus" .numCpus }}
{{- $_ := set $entry "num_replicas" (int $replicas) }}
{{- $_ := set $entry "max_ongoing_requests" (int .maxOngoingRequests) }}
{{- $models = append $models $entry }}
{{- end }}
{{- $config := dict
  "control_plane_address" (include "atelier.controlPlaneAddress" .)
  "control_plane_timeout_s" .Values.ray.serve.controlPlaneTimeoutS
  "reservation_ttl_s" (int .Values.ray.serve.reservationTtlS)
  "grpc_port" (int .Values.ray.serve.grpcPort)
  "http_port" (int .Values.ray.serve.httpPort)
  "models" $models }}
{{- toPrettyJson $config }}
{{- end }}

{{/*
The serve config of one pool's models only (what that pool's `atelier models build` Job builds):
`include "atelier.poolServeConfigJson" (list $ $poolName)`.
*/}}
{{- define "atelier.poolServeConfigJson" -}}
{{- $root := index . 0 }}
{{- $poolName := index . 1 }}
{{- $names := list }}
{{- range include "atelier.models" $root | fromYamlArray }}
{{- if eq .pool $poolName }}{{ $names = append $names .name }}{{ end }}
{{- end }}
{{- $config := include "atelier.serveConfigJson" $root | fromJson }}
{{- $models := list }}
{{- range $config.models }}
{{- if has .name $names }}{{ $models = append $models . }}{{ end }}
{{- end }}
{{- $_ := set $config "models" $models }}
{{- toPrettyJson $config }}
{{- end }}

{{/*
Where a pool's shared model cache claim is mounted: ATELIER_HOME/models, the model cache of
inference.config.ServeConfig (checkpoints, ONNX exports, TensorRT engines, inductor caches).
*/}}
{{- define "atelier.modelCachePath" -}}
/var/lib/atelier/models
{{- end }}

{{/*
Serve's config (serveConfigV2): gRPC options, the atelier application and one deployment per model.
*/}}
{{- define "atelier.serveConfigV2" -}}
{{- $serve := .Values.ray.serve }}
{{- $deployments := list (dict "name" "Gateway" "num_replicas" (int $serve.gatewayReplicas)) }}
{{- range include "atelier.models" . | fromYamlArray }}
{{- $model := . }}
{{- $pool := include "atelier.poolOf" (list $ .) | fromYaml }}
{{- $deployment := dict "name" (include "atelier.deploymentName" .name) "max_ongoing_requests" (int .maxOngoingRequests) }}
{{- if .autoscaling.enabled }}
{{- $_ := set $deployment "num_replicas" "auto" }}
{{- $autoscaling := dict }}
{{- range $key, $name := dict "minReplicas" "min_replicas" "maxReplicas" "max_replicas" "targetOngoingRequests" "target_ongoing_requests" "upscaleDelayS" "upscale_delay_s" "downscaleDelayS" "downscale_delay_s" }}
{{- if hasKey $model.autoscaling $key }}{{ $_ := set $autoscaling $name (get $model.autoscaling $key) }}{{ end }}
{{- end }}
{{- $_ := set $deployment "autoscaling_config" $autoscaling }}
{{- else }}
{{- $_ := set $deployment "num_replicas" (int .numReplicas) }}
{{- end }}
{{- $_ := set $deployment "ray_actor_options" (dict
  "num_cpus" .numCpus
  "num_gpus" $pool.gpusPerReplica
  "resources" (dict (include "atelier.poolResource" $pool.name) 1)) }}
{{- $deployments = append $deployments $deployment }}
{{- end }}
{{- $app := dict
  "name" "atelier"
  "route_prefix" "/"
  "import_path" $serve.importPath
  "args" (dict "serve_config" (include "atelier.serveConfigJson" . | fromJson))
  "runtime_env" (dict "env_vars" (dict
    "ATELIER_SERVE_CONFIG" (include "atelier.serveConfigPath" .)
    "ATELIER_HOME" "/var/lib/atelier"))
  "deployments" $deployments }}
{{- $config := dict
  "proxy_location" $serve.proxyLocation
  "http_options" (dict "host" "0.0.0.0" "port" (int $serve.httpPort))
  "grpc_options" (dict "port" (int $serve.grpcPort) "grpc_servicer_functions" $serve.grpcServicerFunctions)
  "logging_config" (dict "encoding" "JSON" "log_level" $serve.logLevel)
  "applications" (list $app) }}
{{- toYaml $config }}
{{- end }}

{{/*
Labels of Ray pod templates: `include "atelier.rayPodLabels" (list $ "ray-worker")`. Without the chart
version or image tag, so that a chart upgrade that changes nothing in the pods does not roll out a new
RayCluster (any change to rayClusterConfig does).
*/}}
{{- define "atelier.rayPodLabels" -}}
{{ include "atelier.componentSelectorLabels" . }}
app.kubernetes.io/part-of: atelier
{{- end }}

{{/*
An emptyDir volume with a size limit (a pod that outgrows it is evicted, not the node's disk filled):
`include "atelier.emptyDirVolume" (list "tmp" "1Gi")`.
*/}}
{{- define "atelier.emptyDirVolume" -}}
- name: {{ index . 0 }}
  emptyDir:
    sizeLimit: {{ index . 1 | quote }}
{{- end }}

{{/*
Volumes and mounts giving a read-only-root container a writable /tmp.
*/}}
{{- define "atelier.tmpVolume" -}}
{{ include "atelier.emptyDirVolume" (list "tmp" .Values.scratch.tmpSizeLimit) }}
{{- end }}

{{- define "atelier.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
Environment shared by the control plane, the migration Job and the CronJobs.
*/}}
{{- define "atelier.controlPlaneEnv" -}}
- name: ATELIER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "atelier.databaseSecretName" . }}
      key: {{ include "atelier.databaseSecretKey" . }}
- name: ATELIER_HOME
  value: /var/lib/atelier
{{- if eq (include "atelier.storageKind" (list .Values.controlPlane.blobs "controlPlane.blobs")) "s3" }}
- name: ATELIER_BLOB_URL
  value: {{ include "atelier.s3Url" .Values.controlPlane.blobs.s3 | quote }}
{{- with include "atelier.s3Env" .Values.controlPlane.blobs.s3 }}
{{ . }}
{{- end }}
{{- else }}
- name: ATELIER_BLOB_DIR
  value: /var/lib/atelier-blobs
{{- end }}
- name: ATELIER_MASTER_KEY_FILE
  value: /etc/atelier/master-key/master.key
{{- if .Values.c2pa.existingSecret }}
- name: ATELIER_C2PA_CERT
  value: /etc/atelier/c2pa/chain.pem
- name: ATELIER_C2PA_KEY
  value: /etc/atelier/c2pa/signer.key
{{- if .Values.c2pa.trustAnchorsKey }}
- name: ATELIER_C2PA_TRUST_ANCHORS
  value: /etc/atelier/c2pa/trust-anchors.pem
{{- end }}
{{- end }}
- name: ATELIER_POLICY_PROFILE
  value: /etc/atelier/policy/profile.json
- name: ATELIER_DEFAULT_VISIBILITY
  value: {{ .Values.policyProfile.defaultVisibility | quote }}
- name: ATELIER_MINIMUM_AGE
  value: {{ .Values.policyProfile.minimumAge | int | quote }}
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{ include "atelier.tlsEnv" . }}
{{- end }}

{{/*
TLS (`tls.*` values): the Secret's files at /etc/atelier/tls, named by ATELIER_TLS_* (see transport/tls.py).
Servers use tls.crt/tls.key; clients trust ca.crt; mutual TLS makes servers require client certificates
signed by ca.crt and clients present tls.crt. Each helper renders nothing when TLS is off.
*/}}
{{- define "atelier.tlsSecretName" -}}
{{- required "tls.secretName is required when tls.enabled: a Secret with tls.crt, tls.key and ca.crt" .Values.tls.secretName }}
{{- end }}

{{- define "atelier.tlsEnv" -}}
{{- if .Values.tls.enabled -}}
- name: ATELIER_TLS_CERT_FILE
  value: /etc/atelier/tls/tls.crt
- name: ATELIER_TLS_KEY_FILE
  value: /etc/atelier/tls/tls.key
- name: ATELIER_TLS_CA_FILE
  value: /etc/atelier/tls/ca.crt
{{- if .Values.tls.mutual }}
- name: ATELIER_TLS_CLIENT_CA_FILE
  value: /etc/atelier/tls/ca.crt
- name: ATELIER_TLS_CLIENT_CERT_FILE
  value: /etc/atelier/tls/tls.crt
- name: ATELIER_TLS_CLIENT_KEY_FILE
  value: /etc/atelier/tls/tls.key
{{- end }}
{{- end }}
{{- end }}

{{- define "atelier.tlsVolume" -}}
{{- if .Values.tls.enabled -}}
- name: tls
  secret:
    secretName: {{ include "atelier.tlsSecretName" . }}
    defaultMode: 0400
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}

{{- define "atelier.tlsVolumeMount" -}}
{{- if .Values.tls.enabled -}}
- name: tls
  mountPath: /etc/atelier/tls
  readOnly: true
{{- end }}
{{- end }}

{{/*
Where blobs or exports are kept: `include "atelier.storageKind" (list $location "controlPlane.blobs")` is
`s3`, `claim` or `ephemeral`. Exactly one must be chosen: the chart never loses data by default.
*/}}
{{- define "atelier.storageKind" -}}
{{- $location := index . 0 }}
{{- $path := index . 1 }}
{{- $chosen := list }}
{{- if ($location.s3 | default dict).bucket }}{{ $chosen = append $chosen "s3" }}{{ end }}
{{- if $location.existingClaim }}{{ $chosen = append $chosen "claim" }}{{ end }}
{{- if $location.ephemeral }}{{ $chosen = append $chosen "ephemeral" }}{{ end }}
{{- if eq (len $chosen) 0 }}
{{- fail (printf "%s: choose where data is kept: %s.s3.bucket (an S3-compatible bucket, for production), %s.existingClaim (a ReadWriteMany PersistentVolumeClaim) or %s.ephemeral: true (an emptyDir per pod, lost when the pod restarts: trials only)" $path $path $path $path) }}
{{- end }}
{{- if gt (len $chosen) 1 }}
{{- fail (printf "%s: set only one of %s.s3.bucket, %s.existingClaim and %s.ephemeral" $path $path $path $path) }}
{{- end }}
{{- first $chosen }}
{{- end }}

{{/*
`s3://bucket/prefix` of an s3 location (`controlPlane.blobs.s3`, `jobs.trainingExport.s3`).
*/}}
{{- define "atelier.s3Url" -}}
{{- $prefix := trimAll "/" (.prefix | default "") }}
{{- if $prefix }}{{ printf "s3://%s/%s" .bucket $prefix }}{{ else }}{{ printf "s3://%s" .bucket }}{{ end }}
{{- end }}

{{/*
The standard AWS_* variables of an s3 location: endpoint, region and, from `existingSecret`, the keys
(without one, the pod's own identity: e.g. an IAM role on the ServiceAccount).
*/}}
{{- define "atelier.s3Env" -}}
{{- $env := list }}
{{- if .endpoint }}
{{- $env = append $env (dict "name" "AWS_ENDPOINT_URL" "value" .endpoint) }}
{{- end }}
{{- if .region }}
{{- $env = concat $env (list (dict "name" "AWS_REGION" "value" .region) (dict "name" "AWS_DEFAULT_REGION" "value" .region)) }}
{{- end }}
{{- if .existingSecret }}
{{- range list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" }}
{{- $env = append $env (dict "name" . "valueFrom" (dict "secretKeyRef" (dict "name" $.existingSecret "key" .))) }}
{{- end }}
{{- end }}
{{- with $env }}{{ toYaml . }}{{ end }}
{{- end }}

{{/*
AWS_* variables the training export needs beyond the control plane's: none when it writes to a claim or
to the blob store's S3 connection; its own when the blobs are not in S3. One process has one set of
AWS_* variables, so an export bucket next to S3 blobs must share their endpoint, region and keys.
*/}}
{{- define "atelier.exportS3Env" -}}
{{- $export := .Values.jobs.trainingExport }}
{{- if eq (include "atelier.storageKind" (list $export "jobs.trainingExport")) "s3" }}
{{- if eq (include "atelier.storageKind" (list .Values.controlPlane.blobs "controlPlane.blobs")) "s3" }}
{{- range list "endpoint" "region" "existingSecret" }}
{{- $own := get $export.s3 . | default "" }}
{{- if and $own (ne $own (get $.Values.controlPlane.blobs.s3 . | default "")) }}
{{- fail (printf "jobs.trainingExport.s3.%s differs from controlPlane.blobs.s3.%s: the export job reaches both buckets with one set of AWS_* variables; leave it empty to use the blob store's" . .) }}
{{- end }}
{{- end }}
{{- else }}
{{- include "atelier.s3Env" $export.s3 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The volume of a claim or ephemeral location (nothing for s3): `include "atelier.storageVolume"
(list "blobs" $location "controlPlane.blobs")`.
*/}}
{{- define "atelier.storageVolume" -}}
{{- $location := index . 1 }}
{{- $kind := include "atelier.storageKind" (list $location (index . 2)) }}
{{- if eq $kind "claim" }}
- name: {{ index . 0 }}
  persistentVolumeClaim:
    claimName: {{ $location.existingClaim }}
{{- else if eq $kind "ephemeral" }}
{{ include "atelier.emptyDirVolume" (list (index . 0) $location.sizeLimit) }}
{{- end }}
{{- end }}

{{/*
Volumes of the control plane and the jobs: state, blobs (unless in S3), master key, policy profile, /tmp.
*/}}
{{- define "atelier.controlPlaneVolumes" -}}
{{ include "atelier.tmpVolume" . }}
{{ include "atelier.emptyDirVolume" (list "state" .Values.scratch.stateSizeLimit) }}
{{- include "atelier.storageVolume" (list "blobs" .Values.controlPlane.blobs "controlPlane.blobs") }}
- name: master-key
  secret:
    secretName: {{ include "atelier.masterKeySecretName" . }}
    defaultMode: 0400
    items:
      - key: {{ include "atelier.masterKeySecretKey" . }}
        path: master.key
{{- with .Values.c2pa }}
{{- if .existingSecret }}
- name: c2pa-signing
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 0400
    items:
      - key: {{ .certificateKey }}
        path: chain.pem
      - key: {{ .privateKeyKey }}
        path: signer.key
      {{- if .trustAnchorsKey }}
      - key: {{ .trustAnchorsKey }}
        path: trust-anchors.pem
      {{- end }}
{{- end }}
{{- end }}
- name: policy-profile
  configMap:
    name: {{ include "atelier.policyProfileName" . }}
{{ include "atelier.tlsVolume" . }}
{{- end }}

{{- define "atelier.controlPlaneVolumeMounts" -}}
{{ include "atelier.tmpVolumeMount" . }}
- name: state
  mountPath: /var/lib/atelier
{{- if ne (include "atelier.storageKind" (list .Values.controlPlane.blobs "controlPlane.blobs")) "s3" }}
- name: blobs
  mountPath: /var/lib/atelier-blobs
{{- end }}
- name: master-key
  mountPath: /etc/atelier/master-key
  readOnly: true
{{- if .Values.c2pa.existingSecret }}
- name: c2pa-signing
  mountPath: /etc/atelier/c2pa
  readOnly: true
{{- end }}
- name: policy-profile
  mountPath: /etc/atelier/policy
  readOnly: true
{{ include "atelier.tlsVolumeMount" . }}
{{- end }}

{{/*
Environment of Ray containers.
*/}}
{{- define "atelier.rayEnv" -}}
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: ATELIER_SERVE_CONFIG
  value: {{ include "atelier.serveConfigPath" . }}
- name: ATELIER_HOME
  value: /var/lib/atelier
# Serve's settings for the request path, as inference/serve_environment.py gives them (read there why).
# Largest request Serve's gRPC proxy accepts (Ray's default is 2 GiB); matches the control plane's limit.
- name: RAY_SERVE_GRPC_MAX_MESSAGE_SIZE
  value: {{ .Values.ray.serve.maxMessageBytes | int | quote }}
- name: RAY_SERVE_PROXY_USE_GRPC
  value: "1"
- name: RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH
  value: {{ .Values.ray.serve.maxMessageBytes | int | quote }}
- name: RAY_SERVE_LOG_TO_STDERR
  value: "0"
- name: RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE
  value: "1000"
{{- if .Values.tls.enabled }}
# Serve's proxies call this at start-up; it binds the gRPC proxy's port with TLS (inference/grpc_proxy.py).
- name: RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH
  value: inference.grpc_proxy.install_proxy_tls
{{ include "atelier.tlsEnv" . }}
{{- end }}
{{- end }}

{{/*
Volumes of Ray pods: `include "atelier.rayVolumes" (list $ $pool)`, `$pool` an entry of "atelier.pools" for
a worker group, `dict` for the head. /tmp holds Ray's session state (logs, spilled objects),
/var/lib/atelier the model and compile caches, /etc/atelier/serve the ServeConfig file; workers mount the
models, their pool's shared model cache claim over /var/lib/atelier/models, and their pool's own volumes.
*/}}
{{- define "atelier.rayVolumes" -}}
{{- $root := index . 0 }}
{{- $pool := index . 1 }}
{{- $worker := not (empty $pool) }}
{{- $scratch := $root.Values.ray.head.scratch }}
{{- if $worker }}{{ $scratch = $pool.scratch }}{{ end -}}
{{ include "atelier.emptyDirVolume" (list "tmp" $scratch.tmpSizeLimit) }}
{{ include "atelier.emptyDirVolume" (list "state" $scratch.stateSizeLimit) }}
- name: serve-config
  configMap:
    name: {{ include "atelier.serveConfigName" $root }}
{{- if and $worker $root.Values.ray.modelVolume.existingClaim }}
- name: models
  persistentVolumeClaim:
    claimName: {{ $root.Values.ray.modelVolume.existingClaim }}
    readOnly: true
{{- end }}
{{- if and $worker $pool.modelCache.existingClaim }}
- name: model-cache
  persistentVolumeClaim:
    claimName: {{ $pool.modelCache.existingClaim }}
{{- end }}
{{- if $worker }}
{{- with $pool.volumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{ include "atelier.tlsVolume" $root }}
{{- end }}

{{- define "atelier.rayVolumeMounts" -}}
{{- $root := index . 0 }}
{{- $pool := index . 1 }}
{{- $worker := not (empty $pool) -}}
- name: tmp
  mountPath: /tmp
- name: state
  mountPath: /var/lib/atelier
- name: serve-config
  mountPath: /etc/atelier/serve
  readOnly: true
{{- if and $worker $root.Values.ray.modelVolume.existingClaim }}
- name: models
  mountPath: {{ $root.Values.ray.modelVolume.mountPath }}
  readOnly: true
{{- end }}
{{- if and $worker $pool.modelCache.existingClaim }}
- name: model-cache
  mountPath: {{ include "atelier.modelCachePath" $root }}
{{- end }}
{{- if $worker }}
{{- with $pool.volumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{ include "atelier.tlsVolumeMount" $root }}
{{- end }}
