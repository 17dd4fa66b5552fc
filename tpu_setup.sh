#!/usr/bin/env bash
# Create (or reuse) a Cloud TPU VM / pod slice, install jax[tpu] and wind_jax on every worker, and launch
# `python -m experiments.NAME` on all workers at once. Each worker runs the same command; the experiment
# calls wind_jax.sharding.initialize(), which starts jax.distributed when WIND_JAX_DISTRIBUTED=1.
#
#   ./tpu_setup.sh --project my-proj --zone us-central2-b --accelerator-type v4-32 \
#       --name wind-v4 --experiment llm_alignment -- --config.method=wind_sq
#   ./tpu_setup.sh --dry-run ...     # print every command instead of running it
set -euo pipefail

PROJECT=""
ZONE=""
ACCELERATOR="v4-8"
NAME="wind-jax"
RUNTIME="tpu-ubuntu2204-base"
EXPERIMENT="contextual_bandit"
SPOT=0
DRY_RUN=0
SKIP_CREATE=0
SKIP_INSTALL=0
JAX_SPEC="jax[tpu]"
REMOTE_DIR="wind_jax"
EXPERIMENT_ARGS=()

usage() {
  cat <<'EOF'
Usage: tpu_setup.sh --project P --zone Z [options] [-- experiment flags]
  --project P            Google Cloud project (required)
  --zone Z               zone, e.g. us-central2-b (required)
  --accelerator-type T   TPU type, e.g. v4-8, v5litepod-16 (default v4-8)
  --name N               TPU VM name (default wind-jax); reused if it exists
  --runtime V            TPU software version (default tpu-ubuntu2204-base)
  --experiment E         module under experiments/ to launch (default contextual_bandit)
  --spot                 request a spot TPU when creating
  --skip-create          do not create; the TPU VM must exist
  --skip-install         do not copy/install; only launch
  --jax-spec S           pip requirement for JAX (default 'jax[tpu]')
  --dry-run              print the commands, run nothing
  -h, --help             this text
Everything after `--` is passed to `python -m experiments.E`.
EOF
}

die() { echo "tpu_setup.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --accelerator-type) ACCELERATOR="${2:?--accelerator-type needs a value}"; shift 2 ;;
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --runtime) RUNTIME="${2:?--runtime needs a value}"; shift 2 ;;
    --experiment) EXPERIMENT="${2:?--experiment needs a value}"; shift 2 ;;
    --jax-spec) JAX_SPEC="${2:?--jax-spec needs a value}"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --skip-create) SKIP_CREATE=1; shift ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXPERIMENT_ARGS=("$@"); break ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -n "$PROJECT" ]] || die "--project is required"
[[ -n "$ZONE" ]] || die "--zone is required"
[[ "$EXPERIMENT" =~ ^[a-z_][a-z0-9_]*$ ]] || die "--experiment must be a module name under experiments/, got '$EXPERIMENT'"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ -f "$REPO_ROOT/experiments/$EXPERIMENT.py" ]] || die "no experiments/$EXPERIMENT.py in $REPO_ROOT"

# Print a command (shell-quoted) and run it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ "$DRY_RUN" -eq 0 ]]; then
    "$@"
  fi
}

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE" --project "$PROJECT")

if [[ "$DRY_RUN" -eq 0 ]] && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud not found: install the Google Cloud CLI, or use --dry-run to see the commands"
fi

# 1. Create the TPU VM unless it exists.
if [[ "$SKIP_CREATE" -eq 0 ]]; then
  if [[ "$DRY_RUN" -eq 0 ]] && "${GCLOUD[@]}" describe "$NAME" "${WHERE[@]}" >/dev/null 2>&1; then
    echo "TPU VM $NAME exists; reusing it"
  else
    create=("${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type "$ACCELERATOR" --version "$RUNTIME")
    if [[ "$SPOT" -eq 1 ]]; then create+=(--spot); fi
    run "${create[@]}"
  fi
fi

# 2. Copy this checkout (tracked files only) to every worker and install jax[tpu] + the package.
if [[ "$SKIP_INSTALL" -eq 0 ]]; then
  TARBALL="${TMPDIR:-/tmp}/wind_jax-$$.tar.gz"
  run git -C "$REPO_ROOT" archive --format=tar.gz --prefix="$REMOTE_DIR/" -o "$TARBALL" HEAD
  run "${GCLOUD[@]}" scp "$TARBALL" "$NAME:wind_jax.tar.gz" "${WHERE[@]}" --worker=all
  INSTALL="rm -rf $REMOTE_DIR && tar xzf wind_jax.tar.gz && python3 -m pip install -U pip"
  INSTALL+=" && python3 -m pip install '$JAX_SPEC' && python3 -m pip install -e ./$REMOTE_DIR"
  run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command "$INSTALL"
fi

# 3. Launch the experiment on all workers; jax.distributed discovers the slice's workers on TPU VMs.
QUOTED_ARGS=""
if [[ ${#EXPERIMENT_ARGS[@]} -gt 0 ]]; then
  QUOTED_ARGS="$(printf ' %q' "${EXPERIMENT_ARGS[@]}")"
fi
LAUNCH="cd $REMOTE_DIR && WIND_JAX_DISTRIBUTED=1 python3 -m experiments.$EXPERIMENT$QUOTED_ARGS"
run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command "$LAUNCH"
