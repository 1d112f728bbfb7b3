#!/usr/bin/env bash
# Register a model version, evaluate it on the server, gate it, and start a canary rollout:
# the steps of clients/ci/github-actions.yml as one script for any CI system. It drives the
# `modelplane` CLI (`pip install modelplane`), so it needs only bash and Python.
#
# Inputs (environment):
#   MODELPLANE_SERVER     control plane HOST:PORT (MODELPLANE_TOKEN, MODELPLANE_TLS_CA, ... too)
#   MODEL                 model id; created when missing
#   ONNX                  the ONNX file to register
#   LABEL                 label column of the datasets
#   HOLDOUT_DATA          labelled data the server evaluates the version on (Parquet/Arrow/CSV)
#   TRAIN_DATA            training data, for lineage and the drift baseline (optional)
#   DEPLOYMENT            deployment to roll out to (default: $MODEL); created with this
#                         version as champion when missing
#   GATE_TARGET           target whose policy gates the version (default: deployments/$DEPLOYMENT)
#   ROLLOUT_STEPS         canary traffic percents (default: 10,50,100)
#   ROLLOUT               "on" (the default) or "off", in any case: "off" stops after the
#                         gate (e.g. on pull requests); any other value is a bad input
#   MODELPLANE, PYTHON    the CLI and Python to run (default: modelplane, python3)
#
# Exit status: 0 done, 1 the gate failed (nothing rolled out), 2 bad inputs, 3 the server
# answered an error, 4 the server could not be reached or did not answer in time, 5 the
# evaluation was still running after the CLI's wait (`evaluate --wait`, 600 s), 70 an internal
# error of the CLI.
set -euo pipefail

for name in MODEL ONNX LABEL HOLDOUT_DATA; do
  if [[ -z "${!name:-}" ]]; then
    echo "modelplane-ci.sh: set $name (see the comment at the top of this script)" >&2
    exit 2
  fi
done
for name in ONNX HOLDOUT_DATA TRAIN_DATA; do
  if [[ -n "${!name:-}" && ! -f "${!name}" ]]; then
    echo "modelplane-ci.sh: $name=${!name} is not a file" >&2
    exit 2
  fi
done
DEPLOYMENT="${DEPLOYMENT:-$MODEL}"
GATE_TARGET="${GATE_TARGET:-deployments/$DEPLOYMENT}"
ROLLOUT_STEPS="${ROLLOUT_STEPS:-10,50,100}"
ROLLOUT="${ROLLOUT:-on}"
case "$ROLLOUT" in # patterns, not ${ROLLOUT,,}: macOS still ships bash 3.2
  [Oo][Nn]) ROLLOUT=on ;;
  [Oo][Ff][Ff]) ROLLOUT=off ;;
  *)
    # A value such as "false" or "no" must not start a canary.
    echo "modelplane-ci.sh: ROLLOUT=$ROLLOUT: set it to on or off" >&2
    exit 2
    ;;
esac
MODELPLANE="${MODELPLANE:-modelplane}"
PYTHON="${PYTHON:-python3}"

mp() { "$MODELPLANE" "$@"; }
field() { "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
step() { printf '\n==> %s\n' "$*" >&2; }

# exists KIND NAME: 0 when it exists, 1 when NOT_FOUND; any other failure ends the script.
exists() {
  local err rc=0
  err=$(mp --output json "$1" get "$2" 2>&1 >/dev/null) || rc=$?
  if ((rc == 0)); then
    return 0
  elif [[ "$err" == *NOT_FOUND* ]]; then
    return 1
  fi
  echo "$err" >&2
  exit "$rc"
}

step "model $MODEL"
if ! exists models "$MODEL"; then
  mp --output json models create "$MODEL" --description "registered by CI" >/dev/null
  echo "created models/$MODEL" >&2
fi

step "register $ONNX"
datasets=(--dataset "holdout=$HOLDOUT_DATA")
if [[ -n "${TRAIN_DATA:-}" ]]; then
  datasets+=(--dataset "train=$TRAIN_DATA")
fi
lineage=()
if [[ -n "${GITHUB_SHA:-}" ]]; then
  repo="${GITHUB_SERVER_URL:-https://github.com}/${GITHUB_REPOSITORY:-}"
  lineage+=(--code-commit "$GITHUB_SHA" --code-repo "$repo")
fi
if [[ -n "${GITHUB_RUN_ID:-}" ]]; then
  lineage+=(--training-run-id "github-${GITHUB_RUN_ID}")
fi
registered=$(mp --output json versions register "$MODEL" --onnx "$ONNX" "${datasets[@]}" \
  --label "$LABEL" ${lineage[@]+"${lineage[@]}"})
VERSION=$(field version <<<"$registered")
echo "registered models/$MODEL/versions/$VERSION" >&2

step "evaluate v$VERSION on $HOLDOUT_DATA"
mp evaluate "$MODEL" "$VERSION" --data "$HOLDOUT_DATA" --label "$LABEL" --wait >&2

step "gate v$VERSION for $GATE_TARGET"
rc=0
mp gate "$MODEL" "$VERSION" --target "$GATE_TARGET" >&2 || rc=$?
if ((rc == 1)); then
  echo "the gate for $GATE_TARGET failed: models/$MODEL/versions/$VERSION is not rolled out" >&2
  exit 1
elif ((rc != 0)); then
  exit "$rc"
fi

if [[ "$ROLLOUT" == "off" ]]; then
  echo "ROLLOUT=off: stopping after the gate" >&2
  echo "$VERSION"
  exit 0
fi

step "roll v$VERSION out to deployments/$DEPLOYMENT"
if ! exists deployments "$DEPLOYMENT"; then
  mp deployments create "$DEPLOYMENT" --model "$MODEL" --champion "$VERSION" >&2
  echo "created deployments/$DEPLOYMENT with v$VERSION as champion: nothing to roll out" >&2
else
  mp rollout start "$DEPLOYMENT" --candidate "$VERSION" --strategy canary \
    --steps "$ROLLOUT_STEPS" >&2
  echo "canary rollout of v$VERSION started (steps $ROLLOUT_STEPS)" >&2
fi
echo "$VERSION"
