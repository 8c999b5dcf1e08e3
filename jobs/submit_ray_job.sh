#!/usr/bin/env bash
# Submit `synth generate` to a running Ray cluster as a Ray Job.
#
#   RAY_ADDRESS=http://head:8265 jobs/submit_ray_job.sh output.dir=/mnt/shared/faces num_samples=100000
#
# The cluster's images must have synth installed (`pip install synth` or this repository), and
# output.dir must be a path every node sees (NFS, Lustre, a FUSE-mounted bucket): workers write shards
# there directly. Extra arguments are Hydra overrides passed to `synth generate`.
set -euo pipefail

: "${RAY_ADDRESS:?set RAY_ADDRESS to the Ray dashboard address, e.g. http://head-node:8265}"
SUBMISSION_ID="${SUBMISSION_ID:-synth-generate-$(date -u +%Y%m%dT%H%M%S)}"

# runtime=cluster joins the cluster (address=auto inside the job) instead of starting a local Ray.
exec ray job submit \
  --address "$RAY_ADDRESS" \
  --submission-id "$SUBMISSION_ID" \
  --entrypoint-num-cpus 1 \
  -- synth generate runtime=cluster "$@"
