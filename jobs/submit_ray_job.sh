#!/usr/bin/env bash
# Submit `synth generate` to a running Ray cluster as a Ray Job (needs `ray[default]`: pip install .[cluster]).
#
#   RAY_ADDRESS=http://head:8265 jobs/submit_ray_job.sh output.dir=s3://bucket/faces num_samples=100000
#
# The cluster's images must have synth installed (`pip install synth` or this repository). output.dir is
# a bucket URL every node can write (s3://, gs://; credentials and AWS_ENDPOINT_URL from each node's
# environment) or a path every node sees (NFS, Lustre). The face model is built or loaded by the driver
# and shipped to the workers. Extra arguments are Hydra overrides passed to `synth generate`.
# Ray >= 2.60 enables token authentication by default: set RAY_AUTH_MODE=disabled on every node and here
# for a cluster without tokens, or export the cluster's token (docs/operations.md).
set -euo pipefail

: "${RAY_ADDRESS:?set RAY_ADDRESS to the Ray dashboard address, e.g. http://head-node:8265}"
SUBMISSION_ID="${SUBMISSION_ID:-synth-generate-$(date -u +%Y%m%dT%H%M%S)}"

# runtime=cluster joins the cluster (address=auto inside the job) instead of starting a local Ray.
exec ray job submit \
  --address "$RAY_ADDRESS" \
  --submission-id "$SUBMISSION_ID" \
  --entrypoint-num-cpus 0 \
  -- synth generate runtime=cluster "$@"
