#!/usr/bin/env bash
# Generates the Python code of every proto under proto/ebb into ebb_client/_generated (ignored
# by git: run this after a checkout and whenever the protos change).
#
# protoc names modules after the proto paths (`ebb.lifecycle.v1`); the imports between the
# generated modules are rewritten to live under `ebb_client._generated`, so the package never
# claims a top-level `ebb` module.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
protos="$(cd "$here/../../proto" && pwd)"
out="$here/ebb_client/_generated"
python3="${PYTHON:-python3}"

if ! "$python3" -c 'import grpc_tools.protoc' 2>/dev/null; then
  echo "generate.sh: grpc_tools is missing; pip install -r $here/requirements.txt" >&2
  exit 1
fi

rm -rf "$out"
mkdir -p "$out"
mapfile -t files < <(cd "$protos" && find ebb -name '*.proto' | LC_ALL=C sort)
"$python3" -m grpc_tools.protoc \
  --proto_path="$protos" \
  --python_out="$out" \
  --pyi_out="$out" \
  --grpc_python_out="$out" \
  "${files[@]}"

# Every directory a package; imports of `ebb.` point into this package.
find "$out" -type d -exec touch {}/__init__.py \;
find "$out" -name '*.py' -o -name '*.pyi' | while read -r f; do
  sed -i -E 's/^from ebb\./from ebb_client._generated.ebb./; s/^import ebb\./import ebb_client._generated.ebb./' "$f"
done
echo "generated ${#files[@]} protos into ${out#"$here/"}"
